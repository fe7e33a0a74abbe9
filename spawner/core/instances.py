"""An instance's options, their validation, the lifecycle rules and the instance plan."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from atelier.spawner.core.catalog import Catalog, Image, Spec, spec_fits_image
from atelier.spawner.core.errors import OptionsError
from atelier.spawner.core.limits import Limits
from atelier.spawner.core.volumes import check_volume_size

INSTANCE_NAME = re.compile(r"^[a-z0-9-]+$")
OPTION_FIELDS = ("image", "spec", "tags", "autostop_hours", "volume_gb")
MAX_AUTOSTOP_HOURS = 24 * 7
STATUSES = ("creating", "running", "stopping", "stopped", "failed")  # see instance_status
DELETE_VOLUME = "delete-volume"  # the confirmation a delete with its volume needs
TRANSIENT = ("creating", "stopping")  # what a start or stop passes through


@dataclass(frozen=True)
class InstanceOptions:
    """What the user chose for an instance (stored as JupyterHub's `user_options`)."""

    image: str
    spec: str
    tags: dict[str, str] = field(default_factory=dict)
    autostop_hours: float | None = None
    volume_gb: int | None = None  # the work volume's size at creation

    def to_json(self) -> dict:
        return {
            "image": self.image,
            "spec": self.spec,
            "tags": dict(self.tags),
            "autostop_hours": self.autostop_hours,
            "volume_gb": self.volume_gb,
        }


@dataclass(frozen=True)
class InstancePlan:
    """Everything a backend needs to run one instance, decided before any I/O."""

    owner: str
    name: str
    image: Image
    spec: Spec
    options: InstanceOptions
    environment: dict[str, str]
    volume_gb: int  # the work volume's size when it is created

    @property
    def accelerator_type(self) -> str | None:
        return self.spec.accelerator_type

    @property
    def accelerator_count(self) -> int:
        return self.spec.accelerator_count


def validate_instance_name(name: str, limits: Limits) -> str:
    if not 1 <= len(name) <= limits.instance_name_length:
        raise OptionsError(
            "name", f"must be 1 to {limits.instance_name_length} characters, got {len(name)}"
        )
    if not INSTANCE_NAME.match(name):
        raise OptionsError("name", f"{name!r} may contain only a-z, 0-9 and '-'")
    return name


def check_instance_count(instances: int, limits: Limits) -> None:
    """A user who already has `instances` instances may create one more."""
    if instances >= limits.instances_per_user:
        raise OptionsError(
            "name",
            f"at most {limits.instances_per_user} instances per user "
            "(limits.instances_per_user); delete one first",
        )


def parse_tags(raw: object, limits: Limits) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise OptionsError("tags", "must be an object of key: value strings")
    if len(raw) > limits.tags_per_instance:
        raise OptionsError(
            "tags", f"at most {limits.tags_per_instance} tags per instance, got {len(raw)}"
        )
    for key, value in raw.items():
        if not isinstance(value, str):
            raise OptionsError(f"tags.{key}", "value must be a string")
        if not 1 <= len(key) <= limits.tag_key_length or not key.isprintable():
            raise OptionsError(
                "tags", f"key {key!r} must be 1 to {limits.tag_key_length} printable characters"
            )
        if len(value) > limits.tag_value_length or not value.isprintable():
            raise OptionsError(
                f"tags.{key}",
                f"value must be at most {limits.tag_value_length} printable characters",
            )
    return dict(raw)


def parse_autostop(raw: object) -> float | None:
    if raw in (None, "", 0):
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise OptionsError("autostop_hours", "must be a number of hours")
    if not 0 < raw <= MAX_AUTOSTOP_HOURS:
        raise OptionsError(
            "autostop_hours", f"must be more than 0 and at most {MAX_AUTOSTOP_HOURS} hours"
        )
    return float(raw)


def parse_options(raw: object, limits: Limits) -> InstanceOptions:
    """Turn a JSON body (or form) into checked options; unknown fields are refused."""
    if not isinstance(raw, dict):
        raise OptionsError("user_options", "must be an object with image and spec")
    unknown = sorted(set(raw) - set(OPTION_FIELDS))
    if unknown:
        raise OptionsError(unknown[0], f"unknown field; allowed: {', '.join(OPTION_FIELDS)}")
    for required in ("image", "spec"):
        if not isinstance(raw.get(required), str) or not raw[required]:
            raise OptionsError(required, "is required (a name from the catalog)")
    return InstanceOptions(
        image=raw["image"],
        spec=raw["spec"],
        tags=parse_tags(raw.get("tags"), limits),
        autostop_hours=parse_autostop(raw.get("autostop_hours")),
        volume_gb=None
        if raw.get("volume_gb") is None
        else check_volume_size(raw["volume_gb"], limits),
    )


def whole_number(text: str, high: int) -> int | None:
    """`text` as a whole number from 0 to `high`, or None: ASCII digits only (str.isdigit()
    also accepts '²', which int() refuses) and no longer than `high` (int() refuses
    thousands of digits)."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(high)):
        return None
    number = int(text)
    return number if number <= high else None


def choose(
    options: InstanceOptions, catalog: Catalog, current_image: str | None = None
) -> tuple[Image, Spec]:
    """Look up image and spec and apply the lifecycle and flavor rules: a deprecated image
    runs only the instances already on it (`current_image`), never a new one."""
    image = catalog.images.get(options.image)
    if image is None:
        raise OptionsError("image", f"no image named {options.image!r} in the catalog")
    if image.status == "disabled":
        raise OptionsError("image", f"image {image.name} is disabled; choose another image")
    if image.status == "deprecated" and image.name != current_image:
        instead = f"use {image.successor}" if image.successor else "choose another image"
        raise OptionsError("image", f"image {image.name} is deprecated; {instead}")
    spec = catalog.specs.get(options.spec)
    if spec is None or spec.disabled:
        raise OptionsError("spec", f"no spec named {options.spec!r} in the catalog")
    if not spec_fits_image(image, spec):
        raise OptionsError(
            "spec",
            f"{image.flavor} image {image.name} cannot run on {spec.flavor} spec {spec.name}",
        )
    if not catalog.can_satisfy(spec):
        raise OptionsError(
            "spec",
            f"spec {spec.name} needs {spec.accelerator_count} {spec.accelerator_type} devices; "
            f"this deployment has {catalog.accelerators.get(spec.accelerator_type or '', 0)}",
        )
    if catalog.arch is not None and image.arch != catalog.arch:
        raise OptionsError("image", f"image {image.name} is built for {image.arch}, not here")
    if not catalog.is_realised(image):
        raise OptionsError(
            "image",
            f"image {image.name} is not available on this hub yet; ask the admin to build it",
        )
    return image, spec


def instance_status(pending: str | None, ready: bool, failure: str | None) -> str:
    """What an instance is doing: creating or stopping while the hub works on it, running
    once it answers, failed when its last start failed or its process died, else stopped."""
    if pending:
        return {"spawn": "creating", "stop": "stopping"}.get(pending, pending)
    if ready:
        return "running"
    return "failed" if failure else "stopped"


def check_change(old: InstanceOptions, new: InstanceOptions, status: str) -> bool:
    """Apply the change rules (ModelArts': the image only while stopped, the spec while
    stopped, running or failed); return True when the change needs a restart."""
    if new.volume_gb not in (None, old.volume_gb):
        raise OptionsError("volume_gb", "is set at creation; grow the volume with volume/expand")
    if new.image != old.image and status != "stopped":
        raise OptionsError(
            "image", f"can change only while the instance is stopped, it is {status}"
        )
    if new.spec != old.spec and status not in ("stopped", "running", "failed"):
        raise OptionsError(
            "spec", f"can change while the instance is stopped, running or failed, it is {status}"
        )
    return status == "running" and new.spec != old.spec


def plan_instance(
    owner: str,
    name: str,
    options: InstanceOptions,
    catalog: Catalog,
    limits: Limits,
    current_image: str | None = None,
) -> InstancePlan:
    """The plan for one instance (already on `current_image`, if it exists); raises
    `OptionsError` naming the first bad field."""
    validate_instance_name(name, limits)
    image, spec = choose(options, catalog, current_image)
    environment = {
        "MEM_LIMIT": str(spec.memory_gb * 1024**3),
        "CPU_LIMIT": str(spec.cpu),
        "ATELIER_INSTANCE": name,
        "ATELIER_IMAGE": image.name,
        "ATELIER_SPEC": spec.name,
    }
    volume_gb = options.volume_gb or limits.volume_default_gb
    return InstancePlan(owner, name, image, spec, options, environment, volume_gb)


def autostop_at(started: datetime | None, hours: float | None) -> datetime | None:
    """When an instance started at `started` stops by itself, if it does."""
    if started is None or not hours:
        return None
    return started + timedelta(hours=hours)
