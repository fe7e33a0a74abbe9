"""Save as image from the command line, through the Atelier API (the SDK), as every other door:
`atelier images save [OWNER/]INSTANCE NAME [--wait]` and `atelier operations list|show`."""

from __future__ import annotations

import json

from atelier.hub.cli.catalog import UsageError, api_options, call_api, print_rows
from atelier.sdk import AtelierError

OPERATION_COLUMNS = (
    "id",
    "kind",
    "resource",
    "target",
    "status",
    "phase",
    "percent",
    "created",
    "reason",
)


def operation_row(operation: dict) -> dict:
    return {column: operation.get(column) for column in OPERATION_COLUMNS}


def follow(client, operation: dict, quiet: bool) -> dict:
    """Wait for the operation to end, printing each new phase and percent (unless `quiet`);
    a failed save is a one-line refusal naming its reason."""
    shown = [None]

    def progress(now: dict) -> None:
        step = (now["phase"], now["percent"])
        if not quiet and step != shown[0] and now["status"] == "running":
            shown[0] = step
            print(f"{now['resource']} -> {now['target']}: {now['phase']} {now['percent']}%")

    try:
        return client.wait_for_operation(operation["id"], progress=progress)
    except AtelierError as error:
        if error.operation is None:
            raise
        raise UsageError(
            f"saving {error.operation['resource']} as {error.operation['target']} failed: "
            f"{error.message}"
        ) from None


def show(operation: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(operation, indent=2))
    elif operation["status"] == "succeeded":
        print(f"saved {operation['resource']} as image {operation['target']}")
    else:
        print_rows([operation_row(operation)], False)


def cmd_save(args) -> None:
    owner, _, instance = args.instance.rpartition("/")
    if not (instance and args.image_name):
        raise UsageError("`atelier images save` needs [OWNER/]INSTANCE and the image's NAME")

    def work(client) -> dict:
        operation = client.save_image(
            instance,
            args.image_name,
            owner=owner or None,
            display_name=args.display_name,
            description=args.description,
        )
        if not args.wait:
            return operation
        return follow(client, operation, args.json)

    operation = call_api(args, work)
    show(operation, args.json)
    if operation["status"] == "running" and not args.json:
        print(f"follow it with: atelier operations show {operation['id']} --wait")


def cmd_operations(args) -> None:
    if args.action == "show" and not args.id:
        raise UsageError("`atelier operations show` needs the operation's ID")

    def work(client):
        if args.action == "list":
            return client.operations()
        operation = client.operation(args.id)
        return follow(client, operation, args.json) if args.wait else operation

    result = call_api(args, work)
    if args.action == "list":
        print_rows(result if args.json else [operation_row(o) for o in result], args.json)
    else:
        show(result, args.json)


def add_save_parser(images_actions) -> None:
    save = images_actions.add_parser(
        "save", help="save a running instance as your private image OWNER/NAME (the API's)"
    )
    save.add_argument("instance", metavar="[OWNER/]INSTANCE", help="default owner: the token's")
    save.add_argument("image_name", metavar="NAME", help="the image is named OWNER/NAME")
    save.add_argument("--display-name")
    save.add_argument("--description")
    save.add_argument("--wait", action="store_true", help="follow the save until it ends")
    api_options(save)


def add_operations_parser(commands) -> None:
    operations = commands.add_parser(
        "operations", help="your long actions (saves), through the Atelier API"
    )
    operations.add_argument("action", choices=("list", "show"))
    operations.add_argument("id", nargs="?")
    operations.add_argument("--wait", action="store_true", help="with show: until it ends")
    api_options(operations)
    operations.set_defaults(func=cmd_operations)
