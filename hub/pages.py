"""What the hub's pages show: the create form and the instance list (views, no I/O of their own)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from atelier.spawner import core
from atelier.spawner.volumes import LocalVolume

TEMPLATES = Path(__file__).parent / "templates"
_jinja = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
FLAVOR_TITLES = {"cpu": "CPU", "gpu": "GPU (CUDA)", "ascend": "Ascend (CANN)"}


def render(template: str, **values) -> str:
    return _jinja.get_template(template).render(**values)


def options_from_form(formdata: dict[str, list[str]]) -> dict:
    """Form fields (lists of strings) -> the JSON options the API takes."""

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
    if volume and not volume.isdigit():
        raise core.OptionsError("volume_gb", f"must be a whole number of GB, got {volume!r}")
    try:
        autostop = float(hours) if hours else None
    except ValueError:
        raise core.OptionsError(
            "autostop_hours", f"must be a number of hours, got {hours!r}"
        ) from None
    return {
        "image": first("image"),
        "spec": first("spec"),
        "tags": tags,
        "autostop_hours": autostop,
        "volume_gb": int(volume) if volume else None,
    }


def form_context(catalog: core.Catalog, limits: core.Limits) -> dict:
    """Offered images grouped by flavor, each with the specs it may run on."""
    groups: dict[str, list[dict]] = {}
    for image in catalog.offered_images():
        groups.setdefault(image.flavor, []).append(
            {"image": image, "specs": [s.name for s in catalog.available_specs(image)]}
        )
    specs = [s for s in catalog.specs.values() if not s.disabled and catalog.can_satisfy(s)]
    return {
        "groups": [(FLAVOR_TITLES[f], groups[f]) for f in core.FLAVORS if f in groups],
        "specs": specs,
        "volume_default_gb": limits.volume_default_gb,
    }


def render_options_form(spawner) -> str:
    """JupyterHub's `options_form` for the spawn page (/hub/spawn/<user>/<name>)."""
    return _jinja.get_template("options_form.html").render(
        **form_context(spawner.catalog(), spawner.core_limits), chosen=spawner.user_options or {}
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
    volume_gb: int | None
    volume_used_bytes: int | None


def status_of(spawner) -> str:
    if spawner.pending:
        return {"spawn": "creating", "stop": "stopping"}.get(spawner.pending, spawner.pending)
    if spawner.ready:
        return "running"
    # a stopped instance comes as JupyterHub's orm row, without a start future
    spawned = getattr(spawner, "_spawn_future", None)
    if spawned is not None and spawned.done() and spawned.exception() is not None:
        return "failed"  # its last start failed (a stop after a good start keeps that future)
    return "stopped"


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
    created = store.created_times(user.name)
    rows = []
    for spawner in user.all_spawners(include_default=False):
        options = spawner.orm_spawner.user_options or {}
        started = spawner.orm_spawner.started
        running = spawner.ready
        rows.append(
            InstanceRow(
                name=spawner.name,
                status=status_of(spawner),
                url=user.server_url(spawner.name),
                options=options,
                created=created.get(spawner.name),
                autostop_at=core.autostop_at(
                    started.replace(tzinfo=UTC) if running and started else None,
                    options.get("autostop_hours"),
                ),
                notice=image_notice(images, options.get("image")),
                volume_gb=store.volume_size(user.name, spawner.name),
                volume_used_bytes=context.volume(user.name, spawner.name).used_bytes(),
            )
        )
    return sorted(rows, key=lambda row: row.name)


def home_view(context, user) -> dict:
    """The `atelier` template variable: everything home.html shows for one user."""
    if user is None:
        return {}
    catalog = context.catalog_for(user)
    return {
        "instances": instance_rows(user, catalog.images, context),
        "form": _jinja.get_template("options_form.html").render(
            **form_context(catalog, context.limits), chosen={}
        ),
        "isolated": context.isolated,
        "volumes_enforced": LocalVolume.enforced(),
        "idle_minutes": context.settings.culling.idle_minutes,
        "now": datetime.now(UTC),
        "limit": context.settings.limits.instances_per_user,
        "ssh_page": "/services/atelier/ssh" if context.settings.ssh.enabled else None,
    }
