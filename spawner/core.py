"""The backend-neutral core: catalog words, option validation and the instance plan.

Everything here is pure: values in, values (or an `OptionsError`) out, no I/O. Backends
realise an `InstancePlan`; the hub's API and form call the same validation.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

IMAGE_NAME = re.compile(
    r"^(?P<engine>[a-z][a-z0-9]*)_(?P<engine_version>\d+(?:\.\d+)*)"
    r"-(?P<stack>cpu|cuda_\d+(?:\.\d+)*|cann_\d+(?:\.\d+)*(?:\.[a-z0-9]+)?)"
    r"-py_(?P<python>\d+\.\d+(?:\.\d+)?)"
    r"-(?P<os>[a-z]+)_(?P<os_version>\d+(?:\.\d+)*)"
    r"-(?P<arch>x86_64|aarch64)$"
)
IMAGE_NAME_FORMAT = "<engine>_<ver>-<cpu|cuda_X|cann_X>-py_<ver>-<os>_<ver>-<x86_64|aarch64>"
SPEC_NAME = re.compile(
    r"^(?:cpu|(?P<flavor>gpu|ascend)\.(?P<count>[1-9]\d*)x(?P<type>[a-z0-9]+))"
    r"\.(?P<cpu>[1-9]\d*)u(?P<memory>[1-9]\d*)g$"
)
SPEC_NAME_FORMAT = "cpu.<C>u<M>g, gpu.<N>x<type>.<C>u<M>g or ascend.<N>x<type>.<C>u<M>g"
INSTANCE_NAME = re.compile(r"^[a-z0-9-]+$")
FLAVORS = ("cpu", "gpu", "ascend")
IMAGE_STATUSES = ("active", "deprecated", "disabled")
IMAGE_VISIBILITIES = ("public", "shared", "private")
WORKSPACE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
OPTION_FIELDS = ("image", "spec", "tags", "autostop_hours", "volume_gb")
MAX_AUTOSTOP_HOURS = 24 * 7


class OptionsError(ValueError):
    """A refused input: names the field, says what was wrong and what is allowed.

    Every door passes the structure on (`to_json`) instead of the text, so no client parses
    "field: message" back. `code` is the kind of refusal a program can act on: invalid,
    not_found, exists, conflict, quota_exceeded, unavailable, confirmation_required.
    """

    def __init__(self, field: str, message: str, code: str = "invalid"):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.code = field, message, code

    def to_json(self) -> dict:
        """The refusal as the Atelier API answers it, in {"error": ...}."""
        return {"code": self.code, "message": self.message, "field": self.field}


@dataclass(frozen=True)
class Limits:
    instances_per_user: int = 10
    tags_per_instance: int = 20
    tag_key_length: int = 36
    tag_value_length: int = 43
    instance_name_length: int = 64
    volume_default_gb: int = 5
    volume_min_gb: int = 1
    volume_max_gb: int = 4096
    volume_step_max_gb: int = 100
    volume_quota_gb: int = 200  # all of one user's volumes together
    ephemeral_storage_gb: int = 10  # each instance's disk outside work/, reset at every start
    keypairs_per_user: int = 20


@dataclass(frozen=True)
class Image:
    """A catalog image; engine, flavor, python, OS and architecture come from its name."""

    name: str
    display_name: str = ""
    description: str = ""
    status: str = "active"
    successor: str | None = None
    accelerator_types: tuple[str, ...] = ()
    visibility: str = "public"  # public | shared (with one workspace) | private (one user's)
    workspace: str | None = None
    owner: str | None = None  # of a private image

    @functools.cached_property
    def parts(self) -> dict[str, str]:
        match = IMAGE_NAME.match(self.name)
        if match is None:
            raise OptionsError("name", f"{self.name!r} does not follow {IMAGE_NAME_FORMAT}")
        return match.groupdict()

    @property
    def flavor(self) -> str:
        stack = self.parts["stack"]
        return "cpu" if stack == "cpu" else "gpu" if stack.startswith("cuda") else "ascend"

    @property
    def engine(self) -> str:
        return f"{self.parts['engine']} {self.parts['engine_version']}"

    @property
    def arch(self) -> str:
        return self.parts["arch"]

    @property
    def title(self) -> str:
        return self.display_name or self.name

    def visible_to(self, user: str, workspaces: frozenset[str]) -> bool:
        """Public images; shared images to members of their workspace; private ones to
        their owner."""
        if self.visibility == "private":
            return self.owner == user
        return self.visibility == "public" or self.workspace in workspaces


@dataclass(frozen=True)
class Spec:
    """A compute spec; cores, memory and accelerators come from its name."""

    name: str
    display_name: str = ""
    disabled: bool = False

    @property
    def parts(self) -> dict[str, str | None]:
        match = SPEC_NAME.match(self.name)
        if match is None:
            raise OptionsError("name", f"{self.name!r} does not follow {SPEC_NAME_FORMAT}")
        return match.groupdict()

    @property
    def flavor(self) -> str:
        return self.parts["flavor"] or "cpu"

    @property
    def accelerator_type(self) -> str | None:
        return self.parts["type"]

    @property
    def accelerator_count(self) -> int:
        return int(self.parts["count"] or 0)

    @property
    def cpu(self) -> int:
        return int(self.parts["cpu"])

    @property
    def memory_gb(self) -> int:
        return int(self.parts["memory"])

    @property
    def title(self) -> str:
        return self.display_name or self.name


def image_json(image: Image) -> dict:
    return {
        "name": image.name,
        "display_name": image.display_name,
        "description": image.description,
        "flavor": image.flavor,
        "engine": image.parts["engine"],
        "engine_version": image.parts["engine_version"],
        "accelerator_stack": image.parts["stack"],
        "python": image.parts["python"],
        "os": f"{image.parts['os']} {image.parts['os_version']}",
        "arch": image.arch,
        "status": image.status,
        "successor": image.successor,
        "accelerator_types": list(image.accelerator_types),
        "visibility": image.visibility,
        "workspace": image.workspace,
        "owner": image.owner,
    }


def spec_json(spec: Spec) -> dict:
    return {
        "name": spec.name,
        "display_name": spec.display_name,
        "flavor": spec.flavor,
        "cpu": spec.cpu,
        "memory_gb": spec.memory_gb,
        "accelerator_type": spec.accelerator_type,
        "accelerator_count": spec.accelerator_count,
        "disabled": spec.disabled,
    }


def validate_image_name(name: str) -> str:
    Image(name).parts  # noqa: B018 - raises OptionsError when malformed
    return name


def validate_spec_name(name: str) -> str:
    Spec(name).parts  # noqa: B018 - raises OptionsError when malformed
    return name


def spec_fits_image(image: Image, spec: Spec) -> bool:
    """The flavor rule: CPU images on CPU specs, GPU and Ascend images on their own kind,
    restricted to the image's accelerator types when it names any."""
    if image.flavor != spec.flavor:
        return False
    return not image.accelerator_types or spec.accelerator_type in image.accelerator_types


@dataclass(frozen=True)
class Catalog:
    """What can be chosen: images and specs by name, and the accelerators a backend has."""

    images: dict[str, Image]
    specs: dict[str, Spec]
    accelerators: dict[str, int] = field(default_factory=dict)  # type -> how many exist
    arch: str | None = None  # the only architecture a backend runs, when it has one
    realised: frozenset[str] | None = None  # images the backend has ready; None: all

    def available_specs(self, image: Image) -> list[Spec]:
        """Specs this image may run on and this backend can ever satisfy."""
        return [
            spec
            for spec in self.specs.values()
            if not spec.disabled and spec_fits_image(image, spec) and self.can_satisfy(spec)
        ]

    def for_user(self, user: str, workspaces: frozenset[str]) -> Catalog:
        """The catalog as a user in these workspaces sees it: public images, their workspaces'
        shared images and their own private ones."""
        images = {
            name: image for name, image in self.images.items() if image.visible_to(user, workspaces)
        }
        return replace(self, images=images)

    def can_satisfy(self, spec: Spec) -> bool:
        """Whether this backend has enough accelerators for the spec at all."""
        if spec.accelerator_type is None:
            return True
        return spec.accelerator_count <= self.accelerators.get(spec.accelerator_type, 0)

    def runnable_images(self) -> list[Image]:
        """Images this backend can start, realised or not: not disabled, of its architecture,
        with at least one spec it can satisfy (what `atelier run` builds)."""
        return [
            image
            for image in self.images.values()
            if image.status != "disabled"
            and (self.arch is None or image.arch == self.arch)
            and self.available_specs(image)
        ]

    def offered_images(self) -> list[Image]:
        """Images the create form offers: active and runnable here, realised already."""
        return [
            image
            for image in self.runnable_images()
            if image.status == "active" and (self.realised is None or image.name in self.realised)
        ]


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


def check_volume_size(size_gb: object, limits: Limits) -> int:
    if isinstance(size_gb, bool) or not isinstance(size_gb, int):
        raise OptionsError("volume_gb", "must be a whole number of GB")
    if not limits.volume_min_gb <= size_gb <= limits.volume_max_gb:
        raise OptionsError(
            "volume_gb",
            f"must be from {limits.volume_min_gb} to {limits.volume_max_gb} GB, got {size_gb}",
        )
    return size_gb


def check_volume_quota(total_gb: int, limits: Limits, field: str) -> None:
    if total_gb > limits.volume_quota_gb:
        raise OptionsError(
            field,
            f"your volumes would hold {total_gb} GB; the quota is {limits.volume_quota_gb} GB",
        )


def check_expand(current_gb: int, add_gb: object, owner_total_gb: int, limits: Limits) -> int:
    """The new size after adding `add_gb`: volumes grow in steps and never shrink."""
    if isinstance(add_gb, bool) or not isinstance(add_gb, int):
        raise OptionsError("add_gb", "must be a whole number of GB")
    if add_gb < 1:
        raise OptionsError("add_gb", f"volumes never shrink; add at least 1 GB, got {add_gb}")
    if add_gb > limits.volume_step_max_gb:
        raise OptionsError(
            "add_gb", f"at most {limits.volume_step_max_gb} GB per expansion, got {add_gb}"
        )
    if current_gb + add_gb > limits.volume_max_gb:
        raise OptionsError(
            "add_gb",
            f"a volume holds at most {limits.volume_max_gb} GB; it has {current_gb}, "
            f"so at most {limits.volume_max_gb - current_gb} more",
        )
    check_volume_quota(owner_total_gb + add_gb, limits, "add_gb")
    return current_gb + add_gb


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
    if catalog.realised is not None and image.name not in catalog.realised:
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
