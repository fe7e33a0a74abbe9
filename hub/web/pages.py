"""What the hub's pages show: the create form and the instance list (views, no I/O of their own)."""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from atelier.hub.service.base import ACCESS_SCOPE, API_PREFIX
from atelier.hub.service.snapshots import SAVE_SCOPE
from atelier.spawner import core

TEMPLATES = Path(__file__).parent / "templates"
_jinja = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
FLAVOR_TITLES = {"cpu": "CPU", "gpu": "GPU (CUDA)", "ascend": "Ascend (CANN)"}
SAVED_TITLE = "Saved images"  # snapshots (save as image), whatever their flavor
# what the home page's "Save as image" asks the hub for: a token that only saves, for minutes
SAVE_TOKEN = {
    "note": "home page: save as image",
    "expires_in": 300,
    "scopes": [ACCESS_SCOPE, SAVE_SCOPE],
}


def render(template: str, **values) -> str:
    return _jinja.get_template(template).render(**values)


def options_from_form(formdata: dict[str, list[str]], limits: core.Limits) -> dict:
    """Form fields (lists of strings) -> the JSON options the API takes. Numbers are plain
    ASCII: str.isdigit() passes '²' (int() refuses it), int() refuses 5000 digits, and
    float() takes 'nan', 'inf' and '١٢'."""

    def first(key: str) -> str:
        return (formdata.get(key) or [""])[0].strip()

    tags = {}
    for number, line in enumerate(first("tags").splitlines(), 1):
        if line.strip():
            key, sep, value = line.partition("=")
            if not sep:
                raise core.OptionsError("tags", f"line {number} must be key=value, got {line!r}")
            tags[key.strip()] = value.strip()
    hours, volume = first("autostop_hours"), first("volume_gb")
    volume_gb = core.whole_number(volume, limits.volume_max_gb) if volume else None
    if volume and volume_gb is None:
        raise core.OptionsError(
            "volume_gb",
            f"must be a whole number of GB, at most {limits.volume_max_gb}, "
            f"got {reprlib.repr(volume)}",
        )
    try:
        autostop = float(hours) if hours else None
    except ValueError:
        autostop = math.nan
    if autostop is not None and not (hours.isascii() and math.isfinite(autostop)):
        raise core.OptionsError(
            "autostop_hours", f"must be a number of hours, got {reprlib.repr(hours)}"
        )
    return {
        "image": first("image"),
        "spec": first("spec"),
        "tags": tags,
        "autostop_hours": autostop,
        "volume_gb": volume_gb,
    }


def form_context(catalog: core.Catalog, limits: core.Limits) -> dict:
    """Offered images grouped by flavor, each with the specs it may run on, and the limits
    the inputs' bounds come from (the hub's, so the browser refuses what the hub would)."""
    groups: dict[str, list[dict]] = {}
    for image in catalog.offered_images():
        groups.setdefault(SAVED_TITLE if image.base else image.flavor, []).append(
            {"image": image, "specs": [s.name for s in catalog.available_specs(image)]}
        )
    specs = [s for s in catalog.specs.values() if not s.disabled and catalog.can_satisfy(s)]
    titles = [(FLAVOR_TITLES[f], f) for f in core.FLAVORS] + [(SAVED_TITLE, SAVED_TITLE)]
    return {
        "groups": [(title, groups[key]) for title, key in titles if key in groups],
        "specs": specs,
        "limits": limits,
        "max_autostop_hours": core.MAX_AUTOSTOP_HOURS,
    }


def render_options_form(spawner) -> str:
    """JupyterHub's `options_form` for the spawn page of an instance (/hub/spawn/<user>/<name>)."""
    return create_form(spawner.context, spawner.user, spawner.user_options)


def create_form(context, user, chosen: dict | None = None, invalid: str | None = None) -> str:
    """The create form as `user` may fill it in: only the images they may see; `invalid`
    is the field of a refusal (`tags.team` marks the tags box)."""
    return options_form(context.catalog_for(user), context.limits, chosen, invalid)


def options_form(
    catalog: core.Catalog, limits: core.Limits, chosen: dict | None, invalid: str | None = None
) -> str:
    return _jinja.get_template("options_form.html").render(
        **form_context(catalog, limits),
        chosen=chosen or {},
        invalid=(invalid or "").partition(".")[0],
    )


@dataclass(frozen=True)
class InstanceRow:
    name: str
    status: str
    url: str
    options: dict
    created: datetime | None
    autostop_at: datetime | None
    notice: str
    reason: str | None  # why it failed
    volume_gb: int | None
    volume_used_bytes: int | None
    saving: dict | None = None  # the operation of its save in progress (save as image)
    last_save: dict | None = None  # its newest save that ended: succeeded, or failed and why


def image_notice(images: dict[str, core.Image], name: str | None) -> str:
    image = images.get(name or "")
    if image is None:
        return f"image {name} is no longer in the catalog" if name else ""
    if image.status == "deprecated":
        return f"image {image.name} is deprecated" + (
            f"; its successor is {image.successor}" if image.successor else ""
        )
    if image.status == "disabled":
        return f"image {image.name} is disabled; choose another image to start this instance"
    return ""


def instance_rows(user, images: dict[str, core.Image], context):
    store = context.store
    records = store.instance_records(user.name)
    saving = store.running_operations()  # by resource: "<owner>/<instance>"
    ended: dict[str, dict] = {}
    for operation in store.operations(user.name):  # newest first
        if operation["status"] != "running":
            ended.setdefault(operation["resource"], operation)
    rows = []
    for spawner in user.all_spawners(include_default=False):
        created, _, failure = records.get(spawner.name, (None, None, None))
        status = core.instance_status(spawner.pending, spawner.ready, failure)
        options = spawner.orm_spawner.user_options or {}
        started = spawner.orm_spawner.started
        running = spawner.ready
        rows.append(
            InstanceRow(
                name=spawner.name,
                status=status,
                url=user.server_url(spawner.name),
                options=options,
                created=created,
                autostop_at=core.autostop_at(
                    started.replace(tzinfo=UTC) if running and started else None,
                    options.get("autostop_hours"),
                ),
                notice=image_notice(images, options.get("image")),
                reason=failure if status == "failed" else None,
                volume_gb=store.volume_size(user.name, spawner.name),
                volume_used_bytes=context.backend.volume_used_bytes(user.name, spawner.name),
                saving=saving.get(f"{user.name}/{spawner.name}"),
                last_save=ended.get(f"{user.name}/{spawner.name}"),
            )
        )
    return sorted(rows, key=lambda row: row.name)


def home_view(context, user) -> dict:
    """The `atelier` template variable: everything home.html shows for one user."""
    if user is None:
        return {}
    catalog = context.catalog_for(user)
    can = context.capabilities()
    offered = {image.name for image in catalog.offered_images()}
    return {
        "instances": instance_rows(user, catalog.images, context),
        "snapshots": [
            {"image": image, "offered": image.name in offered}
            for image in sorted(catalog.images.values(), key=lambda i: i.name)
            if image.base is not None and image.owner == user.name
        ],
        "api": API_PREFIX,
        "save_token": SAVE_TOKEN,
        "form": options_form(catalog, context.limits, None),
        "isolated": can.users_isolated,
        "volumes_enforced": can.volumes_enforced,
        "limits_unenforced": list(can.limits_unenforced),
        "idle_minutes": context.settings.culling.idle_minutes,
        "now": datetime.now(UTC),
        "limits": context.limits,
        "ssh_page": "/services/atelier/ssh" if context.settings.ssh.enabled else None,
    }
