"""The admin's catalog commands (`atelier images|specs`), and what every command shares: the
configuration as `atelier run` reads it, the Atelier API (the SDK), one-line refusals and
tables."""

from __future__ import annotations

import argparse
import json
import os
import pwd
from pathlib import Path

from atelier.hub.context import Context, store_url
from atelier.hub.settings import PROJECT_ROOT, Settings, load_settings
from atelier.hub.store.store import CatalogError, Store
from atelier.sdk import AtelierError, Client
from atelier.spawner import core
from atelier.spawner.backend import Backend, load_backend
from atelier.spawner.core.audit import Action


class UsageError(Exception):
    """A refusal the CLI prints as one line."""


def settings_for(args) -> Settings:
    """The configuration as `atelier run` reads it. A relative data_dir is the project's
    (`make run` runs in the project folder), so every command finds the same hub state
    wherever it runs; a relative --data-dir is where the caller is."""
    data_dir = getattr(args, "data_dir", None)
    settings = load_settings(
        args.config,
        data_dir=Path(data_dir).absolute() if data_dir else None,
        port=getattr(args, "port", None),
    )
    return settings.model_copy(update={"data_dir": PROJECT_ROOT / settings.data_dir})


def open_store(args) -> Store:
    settings = settings_for(args)
    previous = os.umask(0o077)  # the store is the hub's private state, as `atelier run` keeps it
    try:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = Store(store_url(settings))
    finally:
        os.umask(previous)
    store.seed(*settings.initial_catalog())
    return store


# the Atelier API ----------------------------------------------------------------------------
def local_api_url(settings: Settings) -> str:
    """The Atelier API of the hub this machine's atelier.yaml describes."""
    return f"{settings.local_url}/services/atelier/api/v1"


def call_api(args, work):
    """Run `work(client)` against the Atelier API: --url, else $ATELIER_API_URL, else the hub
    of this machine's atelier.yaml; the token from --token, else $JUPYTERHUB_API_TOKEN.
    Refusals and an unreachable hub become one-line errors."""
    url = args.url or os.environ.get("ATELIER_API_URL") or local_api_url(settings_for(args))
    token = args.token or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        raise UsageError(
            "no API token: pass --token or set JUPYTERHUB_API_TOKEN (a token from the hub's "
            "/hub/token page, or on the hub's machine `atelier token USER`)"
        )
    try:
        return work(Client(url, token))
    except AtelierError as error:
        raise UsageError(str(error)) from None
    except OSError as error:
        reason = getattr(error, "reason", None) or error
        raise UsageError(
            f"cannot reach the Atelier API at {url} ({reason}): is the hub running?"
        ) from None


def api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="the Atelier API (default: $ATELIER_API_URL, else this machine's hub)"
    )
    parser.add_argument("--token", help="an API token (default: $JUPYTERHUB_API_TOKEN)")
    parser.add_argument("--json", action="store_true")


def print_rows(rows: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("(none)")
        return
    columns = list(rows[0])
    cells = [[("" if row[c] is None else str(row[c])) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def one_line(error: Exception) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


# building local environments ------------------------------------------------------------------
def require_definition(backend: Backend, name: str) -> None:
    """An image without a definition (a folder under images/) can never be built, so never
    offered."""
    try:
        core.validate_image_name(name)  # a name, never a path
    except core.OptionsError as error:
        raise CatalogError("name", error.message) from None
    if not backend.has_definition(name):
        raise CatalogError(
            "name", f"image {name} has no definition: {backend.definition_hint(name)}"
        )


def buildable_images(settings: Settings) -> list[str]:
    """Catalog images with a definition that this machine can run, built or not."""
    context = Context.from_settings(settings)
    context.store.seed(*settings.initial_catalog())
    runnable = context.catalog().runnable_images()
    return [i.name for i in runnable if context.backend.has_definition(i.name)]


def build_images(settings: Settings, names: list[str]) -> None:
    """Build images one after another, printing which (i/n) and each step; every definition
    is checked before any work."""
    backend = load_backend(settings, None)
    for name in names:
        require_definition(backend, name)

    def progress(prefix: str):
        return lambda step: print(f"{prefix}: {step}", flush=True)

    store = Store(store_url(settings))
    for number, name in enumerate(names, 1):
        try:
            digest = backend.build_image(name, progress(f"[{number}/{len(names)}] {name}"))
        except RuntimeError as error:
            raise UsageError(f"{name}: build failed, nothing kept: {one_line(error)}") from None
        if digest is not None:
            store.record_digest(name, digest)


# images and specs ----------------------------------------------------------------------------
IMAGE_COLUMNS = (
    "name",
    "flavor",
    "engine",
    "engine_version",
    "status",
    "successor",
    "visibility",
    "display_name",
    "digest",
)
SPEC_COLUMNS = (
    "name",
    "flavor",
    "cpu",
    "memory_gb",
    "accelerator_type",
    "accelerator_count",
    "disabled",
)


def image_row(image: core.Image) -> dict:
    return {column: core.image_json(image)[column] for column in IMAGE_COLUMNS}


def spec_row(spec: core.Spec) -> dict:
    return {column: core.spec_json(spec)[column] for column in SPEC_COLUMNS}


def image_changes(args) -> dict:
    changes = {
        "display_name": args.display_name,
        "description": args.description,
        "status": getattr(args, "status", None),
        "successor": getattr(args, "successor", None),
    }
    if args.accelerator_types is not None:
        changes["accelerator_types"] = tuple(filter(None, args.accelerator_types.split(",")))
    changes = {key: value for key, value in changes.items() if value is not None}
    if changes.get("successor") == "":
        changes["successor"] = None  # --successor "" clears it, as the API's null does
    return changes


def audited(store: Store, action: Action, name: str, change):
    """A catalog change audited as the API audits it, by the account running the CLI."""
    return store.audited_catalog_change(
        change,
        actor=f"cli:{pwd.getpwuid(os.geteuid()).pw_name}",
        source_ip="127.0.0.1",
        action=action,
        name=name,
    )


def cmd_images(args) -> None:
    store = open_store(args)
    name = getattr(args, "name", None)
    if args.action == "list":
        print_rows([image_row(i) for i in store.images()], args.json)
    elif args.action == "build":
        settings = settings_for(args)
        build_images(settings, args.names or buildable_images(settings))
    elif args.action == "add":

        def add() -> core.Image:
            require_definition(load_backend(settings_for(args), store), name)
            return store.add_image(core.Image(name, **image_changes(args)))

        image = audited(store, Action.CREATE_IMAGE, name, add)
        print(f"added image {image.name} ({image.flavor}); build it with `atelier images build`")
    elif args.action == "update":
        changes = image_changes(args)
        image = audited(
            store, Action.UPDATE_IMAGE, name, lambda: store.update_image(name, **changes)
        )
        print(f"updated image {image.name}: status {image.status}")
    elif args.action == "disable":
        audited(
            store, Action.UPDATE_IMAGE, name, lambda: store.update_image(name, status="disabled")
        )
        print(f"disabled image {name}: it can no longer start instances")
    elif args.action == "delete":
        image = audited(store, Action.DELETE_IMAGE, name, lambda: store.delete_image(name))
        if image.base is not None:  # a snapshot: its content goes too, as through the API
            load_backend(settings_for(args), store).delete_saved_image(image)
        print(f"deleted image {name}")


def cmd_specs(args) -> None:
    store = open_store(args)
    name = getattr(args, "name", None)
    if args.action == "list":
        print_rows([spec_row(s) for s in store.specs()], args.json)
    elif args.action == "add":
        spec = core.Spec(name, args.display_name or "")
        audited(store, Action.CREATE_SPEC, name, lambda: store.add_spec(spec))
        print(f"added spec {name}")
    elif args.action == "update":
        changes = {"display_name": args.display_name} if args.display_name else {}
        audited(store, Action.UPDATE_SPEC, name, lambda: store.update_spec(name, **changes))
        print(f"updated spec {name}")
    elif args.action in ("disable", "enable"):
        disabled = args.action == "disable"
        audited(store, Action.UPDATE_SPEC, name, lambda: store.update_spec(name, disabled=disabled))
        print(f"{args.action}d spec {name}")
    elif args.action == "delete":
        audited(store, Action.DELETE_SPEC, name, lambda: store.delete_spec(name))
        print(f"deleted spec {name}")
