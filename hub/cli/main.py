"""The `atelier` command: run the hub, mint API tokens, curate images and specs, and reach
instances, saves (save as image, operations), training jobs, deployments and the audit log
through the Atelier API."""

from __future__ import annotations

import argparse
import json
import os
import sys

from atelier.hub.cli import deployments, jobs, snapshots
from atelier.hub.cli.catalog import (
    UsageError,
    api_options,
    build_images,
    buildable_images,
    call_api,
    cmd_images,
    cmd_specs,
    print_rows,
    settings_for,
)
from atelier.hub.settings import PROJECT_ROOT, ConfigError
from atelier.hub.store.store import CatalogError
from atelier.spawner import core

CONFIG_FILE = PROJECT_ROOT / "config" / "jupyterhub_config.py"
DAY = 86400


# run ----------------------------------------------------------------------------------------
def cmd_run(args) -> None:
    # JupyterHub is imported here, not at the top: it takes about a second to load, which
    # every other command does without (no cycle: the hub's modules never import the CLI)
    from atelier.hub.app.config import prepare_data_dir

    settings = settings_for(args)
    for key, value in (
        ("ATELIER_CONFIG", args.config),
        ("ATELIER_DATA_DIR", settings.data_dir),
        ("ATELIER_PORT", args.port),
        ("ATELIER_STOP_INSTANCES_ON_EXIT", "1" if args.stop_instances_on_exit else None),
    ):
        if value is not None:
            os.environ[key] = str(value)
    prepare_data_dir(settings)
    if not args.no_build:
        build_images(settings, buildable_images(settings))
    from atelier.hub.app.hub import AtelierHub

    AtelierHub.launch_instance(["-f", str(CONFIG_FILE)])


# token --------------------------------------------------------------------------------------
def cmd_token(args) -> None:
    """A token of a hub user, from the hub's own database wherever this runs."""
    from jupyterhub import orm

    if not 0 <= args.expires_in_days <= 3650:
        raise UsageError(
            f"--expires-in-days: must be from 0 (never) to 3650, got {args.expires_in_days}"
        )
    database = settings_for(args).data_dir / "jupyterhub.sqlite"
    if not database.exists():
        raise UsageError(
            f"no hub state at {database}: start the hub once with `atelier run`, "
            "or name its configuration with --config or ATELIER_CONFIG"
        )
    db = orm.new_session_factory(f"sqlite:///{database}")()
    user = orm.User.find(db, args.user)
    if user is None:
        raise UsageError(f"no hub user named {args.user!r}; sign them up or add them first")
    print(user.new_api_token(note=args.note, expires_in=args.expires_in_days * DAY or None))


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


def instance_row(instance: dict) -> dict:
    """A table row; VOLUME_GB is the volume's real size once it exists (its requested size
    before its first start)."""
    row = {column: instance.get(column) for column in INSTANCE_COLUMNS}
    row["volume_gb"] = (instance.get("volume") or {}).get("size_gb", instance["volume_gb"])
    return row


def instance_options(args) -> dict:
    tags = None
    if args.tag:
        malformed = [tag for tag in args.tag if "=" not in tag]
        if malformed:
            raise UsageError(f"--tag: {malformed[0]!r} is not key=value")
        tags = dict(tag.split("=", 1) for tag in args.tag)
    options = {
        "image": args.image,
        "spec": args.spec,
        "autostop_hours": args.autostop_hours,
        "volume_gb": args.volume_gb,
        "tags": tags,
    }
    return {key: value for key, value in options.items() if value is not None}


def cmd_instances(args) -> None:
    name, owner = args.name, args.owner
    if args.action != "list" and not name:
        raise UsageError(f"`atelier instances {args.action}` needs an instance name")
    if args.action == "delete" and not args.delete_volume:
        raise UsageError(
            f"deleting {name} deletes its work volume and every file on it: "
            "add --delete-volume to go ahead"
        )
    if args.action == "expand" and args.add_gb is None:
        raise UsageError("`atelier instances expand` needs --add-gb N")
    if args.action == "create" and not (args.image and args.spec):
        raise UsageError("`atelier instances create` needs --image and --spec")
    options = instance_options(args)

    def work(client) -> dict | list[dict] | None:
        match args.action:
            case "list":
                listed = client.instances(owner)
                return (
                    listed
                    if args.json
                    else [client.instance(i["name"], i["owner"]) for i in listed]
                )
            case "create":
                return client.create_instance(name, owner=owner, **options)
            case "update":
                return client.update_instance(name, owner, **options)
            case "expand":
                return client.expand_volume(name, args.add_gb, owner)
            case "delete":
                return client.delete_instance(name, owner, delete_volume=True)
        call = {
            "show": client.instance,
            "start": client.start_instance,
            "stop": client.stop_instance,
        }
        return call[args.action](name, owner)

    result = call_api(args, work)
    if args.action == "delete":
        print(f"deleted instance {name} and its work volume")
    elif args.json:
        print(json.dumps(result, indent=2))
    else:
        print_rows(
            [instance_row(i) for i in (result if args.action == "list" else [result])], False
        )


def cmd_audit(args) -> None:
    filters = {
        key: getattr(args, key)
        for key in (
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
    page = call_api(args, lambda client: client.audit(**filters))
    print_rows(page["events"], args.json)


def images_or_save(args) -> None:
    """`atelier images save` goes through the API as the user; the rest are the admin's."""
    (snapshots.cmd_save if args.action == "save" else cmd_images)(args)


# the parser ---------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="atelier", description=__doc__)
    top.add_argument("--config", help="atelier.yaml to use (default: $ATELIER_CONFIG or config/)")
    commands = top.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="start the hub (proxy, instances, services)")
    run.add_argument("--port", type=int, help="public port (default from atelier.yaml: 8000)")
    run.add_argument("--data-dir", help="state directory (default: data_dir of atelier.yaml)")
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
    token.add_argument("--expires-in-days", type=int, default=30, help="0: never (default 30)")
    token.add_argument("--data-dir", help="the hub's state (default: as `atelier run`)")
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

    snapshots.add_operations_parser(commands)
    jobs.add_jobs_parser(commands)
    deployments.add_deployments_parser(commands)

    for noun, func in (("images", images_or_save), ("specs", cmd_specs)):
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
                    sub.add_argument(
                        "--successor", help='image that replaces a deprecated one ("": none)'
                    )
        if noun == "images":
            build = actions.add_parser("build", help="build local environments of images")
            build.add_argument("names", nargs="*")
            snapshots.add_save_parser(actions)
        group.set_defaults(func=func)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, CatalogError, UsageError, OSError) as error:
        print(f"atelier: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atelier: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
