"""Save as image: what a snapshot of a running instance is, and the limits it must keep.

A snapshot is a private catalog image named `<owner>/<name>`, owned by the instance's owner.
It keeps its base's flavor, engine, python and architecture (`Image.base`: the catalog image
at the root of what it was saved from), so the same spec rules apply. The limits are checked
on what the backend measured before anything is copied. Pure, like the rest of the core.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from atelier.spawner.core.catalog import Image
from atelier.spawner.core.errors import OptionsError
from atelier.spawner.core.limits import Limits

SNAPSHOT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SNAPSHOT_FIELDS = ("name", "display_name", "description")
TEXT_FIELDS = {"display_name": 255, "description": 2000}  # the most characters of each
PHASES = ("measuring", "saving", "verifying", "done")  # an operation's phase, in order
OPERATION_STATUSES = ("running", "succeeded", "failed")
GB = 1024**3


@dataclass(frozen=True)
class SnapshotPlan:
    """Everything a backend needs to save one running instance as `image`."""

    owner: str
    instance: str
    source: Image  # the image the instance runs
    image: Image  # the snapshot to make (its digest comes from the save)

    @property
    def base(self) -> str:
        return self.image.base or self.image.name


def snapshot_name(owner: str, name: str) -> str:
    return f"{owner}/{name}"


def plan_snapshot(
    owner: str, instance: str, status: str, source: Image, fields: dict, taken: set[str]
) -> SnapshotPlan:
    """The snapshot `fields` (name, display_name, description) ask for, of an instance in
    `status` running `source`; `taken` holds the catalog's image names."""
    name = fields.get("name")
    if not isinstance(name, str) or not SNAPSHOT_NAME.fullmatch(name):
        raise OptionsError(
            "name", "must be 1 to 63 of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
        )
    check_text_fields(fields)
    if status != "running":
        raise OptionsError(
            "instance", f"{owner}/{instance} is {status}; only a running one is saved", "conflict"
        )
    full_name = snapshot_name(owner, name)
    if full_name in taken:
        raise OptionsError("name", f"you already have an image named {name}", "exists")
    image = Image(
        full_name,
        display_name=fields.get("display_name") or f"{name} (saved from {owner}/{instance})",
        description=fields.get("description") or f"Saved from {owner}/{instance} on {source.name}",
        accelerator_types=source.accelerator_types,
        visibility="private",
        owner=owner,
        base=source.base or source.name,
    )
    return SnapshotPlan(owner, instance, source, image)


def check_text_fields(fields: dict) -> None:
    """An image's display name and description, as the catalog keeps them."""
    for field, most in TEXT_FIELDS.items():
        value = fields.get(field, "")
        if not isinstance(value, str) or len(value) > most:
            raise OptionsError(field, f"must be a string of at most {most} characters")


def check_snapshot_size(size_bytes: int, layers: int, limits: Limits) -> None:
    """Refuse, before any work, an image past the size or layer limit, naming both figures."""
    if size_bytes > limits.snapshot_size_gb * GB:
        raise OptionsError(
            "instance",
            f"the image would be {size_bytes / GB:.2f} GB, over the limit of "
            f"{limits.snapshot_size_gb:g} GB (limits.snapshot_size_gb); remove what you do not "
            "need outside work/ first",
            "too_large",
        )
    if layers > limits.snapshot_layers:
        raise OptionsError(
            "instance",
            f"the image would have {layers} layers, over the limit of {limits.snapshot_layers} "
            "(limits.snapshot_layers); save from an instance on a catalog image instead",
            "too_large",
        )


def saved(plan: SnapshotPlan, digest: str) -> Image:
    """The snapshot as the catalog records it once its content is in place."""
    return replace(plan.image, digest=digest)


def percent(done: int, total: int, status: str) -> int:
    if status == "succeeded":
        return 100
    return min(99, done * 100 // total) if total else 0
