"""The `atelier` command: run the hub, mint API tokens, and curate images and specs."""

from __future__ import annotations

import argparse
import json
import os
import sys

from atelier.hub.settings import PROJECT_ROOT, ConfigError, Settings, load_settings
from atelier.hub.store import CatalogError, Store
from atelier.spawner import core

CONFIG_FILE = PROJECT_ROOT / "config" / "jupyterhub_config.py"


class UsageError(Exception):
    pass


def settings_for(args) -> Settings:
    return load_settings(args.config, data_dir=getattr(args, "data_dir", None))


def open_store(args) -> Store:
    from atelier.hub.context import store_url

    settings = settings_for(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(store_url(settings))
    store.seed(*settings.initial_catalog())
    return store


# run ----------------------------------------------------------------------------------------
def buildable_images(settings: Settings) -> list[str]:
    """Catalog images with a local definition that this machine can run, built or not."""
    from atelier.hub.context import Context
    from atelier.spawner.envs import has_definition

    context = Context.from_settings(settings)
    context.store.seed(*settings.initial_catalog())
    return [i.name for i in context.catalog().runnable_images() if has_definition(i.name)]


def build_images(settings: Settings, names: list[str]) -> None:
    """Build image environments one after another, printing which (i/n) and each step."""
    from atelier.spawner.envs import build_env

    def progress(prefix: str):
        return lambda step: print(f"{prefix}: {step}", flush=True)

    for number, name in enumerate(names, 1):
        build_env(settings.resolved_envs_dir, name, progress(f"[{number}/{len(names)}] {name}"))


def cmd_run(args) -> None:
    from atelier.hub.hubconfig import prepare_data_dir

    settings = load_settings(args.config, data_dir=args.data_dir, port=args.port)
    for key, value in (
        ("ATELIER_CONFIG", args.config),
        ("ATELIER_DATA_DIR", args.data_dir),
        ("ATELIER_PORT", args.port),
        ("ATELIER_STOP_INSTANCES_ON_EXIT", "1" if args.stop_instances_on_exit else None),
    ):
        if value is not None:
            os.environ[key] = str(value)
    prepare_data_dir(settings)
    if not args.no_build:
        build_images(settings, buildable_images(settings))
    from atelier.hub.app import AtelierHub

    AtelierHub.launch_instance(["-f", str(CONFIG_FILE)])


# token --------------------------------------------------------------------------------------
def cmd_token(args) -> None:
    from jupyterhub import orm

    settings = settings_for(args)
    database = settings.data_dir.absolute() / "jupyterhub.sqlite"
    if not database.exists():
        raise UsageError(f"no hub database at {database}: start the hub once with `atelier run`")
    db = orm.new_session_factory(f"sqlite:///{database}")()
    user = orm.User.find(db, args.user)
    if user is None:
        raise UsageError(f"no hub user named {args.user!r}; sign them up or add them first")
    print(user.new_api_token(note=args.note))


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


def image_changes(args) -> dict:
    changes = {
        "display_name": args.display_name,
        "description": args.description,
        "status": getattr(args, "status", None),
        "successor": getattr(args, "successor", None),
    }
    if args.accelerator_types is not None:
        changes["accelerator_types"] = tuple(filter(None, args.accelerator_types.split(",")))
    return {key: value for key, value in changes.items() if value is not None}


def cmd_images(args) -> None:
    store = open_store(args)
    if args.action == "list":
        print_rows([image_row(i) for i in store.images()], args.json)
    elif args.action == "add":
        image = store.add_image(core.Image(args.name, **image_changes(args)))
        print(f"added image {image.name} ({image.flavor})")
    elif args.action == "update":
        image = store.update_image(args.name, **image_changes(args))
        print(f"updated image {image.name}: status {image.status}")
    elif args.action == "disable":
        store.update_image(args.name, status="disabled")
        print(f"disabled image {args.name}: it can no longer start instances")
    elif args.action == "delete":
        store.delete_image(args.name)
        print(f"deleted image {args.name}")
    elif args.action == "build":
        settings = settings_for(args)
        build_images(settings, args.names or buildable_images(settings))


def cmd_specs(args) -> None:
    store = open_store(args)
    if args.action == "list":
        print_rows([spec_row(s) for s in store.specs()], args.json)
    elif args.action == "add":
        spec = store.add_spec(core.Spec(args.name, args.display_name or ""))
        print(f"added spec {spec.name}")
    elif args.action == "update":
        store.update_spec(
            args.name, **({"display_name": args.display_name} if args.display_name else {})
        )
        print(f"updated spec {args.name}")
    elif args.action in ("disable", "enable"):
        store.update_spec(args.name, disabled=args.action == "disable")
        print(f"{args.action}d spec {args.name}")
    elif args.action == "delete":
        store.delete_spec(args.name)
        print(f"deleted spec {args.name}")


# instances and audit, through the Atelier API (the SDK) ---------------------------------------
# reason: why a failed instance failed
INSTANCE_COLUMNS = (
    "owner",
    "name",
    "status",
    "image",
    "spec",
    "volume_gb",
    "tags",
    "created",
    "reason",
)


def cmd_instances(args) -> None:
    from atelier.sdk import AtelierError, Client

    if args.action != "list" and not args.name:
        raise UsageError(f"`atelier instances {args.action}` needs an instance name")
    client = Client(args.url, args.token)
    options = {
        key: value
        for key, value in (
            ("image", args.image),
            ("spec", args.spec),
            ("autostop_hours", args.autostop_hours),
            ("volume_gb", args.volume_gb),
            ("tags", dict(tag.split("=", 1) for tag in args.tag) if args.tag else None),
        )
        if value is not None
    }
    try:
        if args.action == "list":
            rows = client.instances(args.owner)
        elif args.action == "create":
            rows = [client.create_instance(args.name, owner=args.owner, **options)]
        elif args.action == "delete":
            client.delete_instance(args.name, args.owner, delete_volume=args.delete_volume)
            print(f"deleted instance {args.name} and its work volume")
            return
        elif args.action == "expand":
            rows = [client.expand_volume(args.name, args.add_gb, args.owner)]
        else:
            call = {
                "show": client.instance,
                "start": client.start_instance,
                "stop": client.stop_instance,
            }.get(args.action)
            rows = [
                call(args.name, args.owner)
                if call
                else client.update_instance(args.name, args.owner, **options)
            ]
    except AtelierError as error:
        raise UsageError(str(error)) from None
    print_rows(
        [{c: row[c] for c in INSTANCE_COLUMNS} for row in rows] if not args.json else rows,
        args.json,
    )


def cmd_audit(args) -> None:
    from atelier.sdk import AtelierError, Client

    filters = {
        k: getattr(args, k)
        for k in (
            "user",
            "resource_type",
            "resource",
            "action",
            "since",
            "until",
            "limit",
            "offset",
        )
    }
    try:
        page = Client(args.url, args.token).audit(**filters)
    except AtelierError as error:
        raise UsageError(str(error)) from None
    print_rows(page["events"], args.json)


def api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the Atelier API (default: $ATELIER_API_URL)")
    parser.add_argument("--token", help="an API token (default: $JUPYTERHUB_API_TOKEN)")
    parser.add_argument("--json", action="store_true")


# the parser ---------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="atelier", description=__doc__)
    top.add_argument("--config", help="atelier.yaml to use (default: $ATELIER_CONFIG or config/)")
    commands = top.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="start the hub (proxy, instances, services)")
    run.add_argument("--port", type=int, help="public port (default from atelier.yaml: 8000)")
    run.add_argument("--data-dir", help="state directory (default .atelier)")
    run.add_argument("--no-build", action="store_true", help="do not build image environments")
    run.add_argument(
        "--stop-instances-on-exit",
        action="store_true",
        help="stop every instance when the hub stops (by default they keep running)",
    )
    run.set_defaults(func=cmd_run)

    token = commands.add_parser("token", help="print a new API token for a hub user")
    token.add_argument("user")
    token.add_argument("--note", default="atelier token")
    token.add_argument("--data-dir")
    token.set_defaults(func=cmd_token)

    instances = commands.add_parser("instances", help="your instances, through the Atelier API")
    instances.add_argument(
        "action",
        choices=("list", "show", "create", "update", "start", "stop", "expand", "delete"),
    )
    instances.add_argument("name", nargs="?")
    instances.add_argument("--owner", help="whose instances (admins)")
    instances.add_argument("--image")
    instances.add_argument("--spec")
    instances.add_argument("--tag", action="append", help="key=value (repeat)")
    instances.add_argument("--autostop-hours", type=float)
    instances.add_argument("--volume-gb", type=int, help="work volume size at creation")
    instances.add_argument("--add-gb", type=int, help="with expand: GB to add to the volume")
    instances.add_argument(
        "--delete-volume", action="store_true", help="with delete: confirm the volume goes too"
    )
    api_options(instances)
    instances.set_defaults(func=cmd_instances)

    audit = commands.add_parser("audit", help="audit events, through the Atelier API")
    for name in ("user", "resource-type", "resource", "action", "since", "until"):
        audit.add_argument(f"--{name}")
    audit.add_argument("--limit", type=int)
    audit.add_argument("--offset", type=int)
    api_options(audit)
    audit.set_defaults(func=cmd_audit)

    for noun, func in (("images", cmd_images), ("specs", cmd_specs)):
        group = commands.add_parser(noun, help=f"list and curate {noun}")
        group.add_argument("--data-dir")
        actions = group.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list")
        listing.add_argument("--json", action="store_true")
        names = ["add", "update", "disable", "delete"] + (["enable"] if noun == "specs" else [])
        for action in names:
            sub = actions.add_parser(action)
            sub.add_argument("name")
            if action in ("add", "update"):
                sub.add_argument("--display-name")
                if noun == "images":
                    sub.add_argument("--description")
                    sub.add_argument("--accelerator-types", help="comma-separated, e.g. a100,h100")
                if noun == "images" and action == "update":
                    sub.add_argument("--status", choices=core.IMAGE_STATUSES)
                    sub.add_argument("--successor", help="image that replaces a deprecated one")
        if noun == "images":
            build = actions.add_parser("build", help="build local environments of images")
            build.add_argument("names", nargs="*")
        group.set_defaults(func=func)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, CatalogError, UsageError) as error:
        print(f"atelier: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
