"""Deployments from the command line, through the Atelier API (the SDK), as jobs are:
`atelier deployments list|show|create|update|rollback|stop|start|delete|events|logs|keys|
create-key|revoke-key|predict`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from atelier.hub.cli.catalog import UsageError, api_options, call_api, print_rows
from atelier.hub.cli.jobs import pairs
from atelier.sdk import AtelierError

COLUMNS = ("name", "status", "version", "serving", "replicas", "url", "created")


# what is shown ------------------------------------------------------------------------------
def status_line(deployment: dict) -> str:
    """`deployment alice/line is upgrading (version 3, version 2 serving)`, and the reason
    where the API gives one (why a version failed)."""
    version, serving = deployment["version"], deployment.get("serving_version")
    said = [f"version {version}"]
    if serving is None:
        said.append("none serving")
    elif serving != version:
        said.append(f"version {serving} serving")
    line = f"deployment {deployment['owner']}/{deployment['name']} is {deployment['status']}"
    line += f" ({', '.join(said)})"
    return line + (f": {deployment['reason']}" if deployment.get("reason") else "")


def rows(deployments: list[dict]) -> list[dict]:
    """A table row each; with several owners (an admin's listing) OWNER comes first."""
    several = len({d["owner"] for d in deployments}) > 1
    return [
        ({"owner": d["owner"]} if several else {})
        | {c: d.get(c) for c in COLUMNS}
        | {"serving": d.get("serving_version")}
        for d in deployments
    ]


def details(deployment: dict, hub: str) -> list[tuple[str, object]]:
    metrics = deployment.get("metrics") or {}
    latency = metrics.get("latency_ms") or {}
    live = deployment.get("replicas_now") or []
    return [
        ("image", deployment["image"]),
        ("spec", deployment["spec"]),
        ("model", f"{deployment['model']} on the work volume of {deployment['volume']}"),
        ("replicas", f"{deployment['replicas']} asked, {len(live)} live"),
        ("timeout", f"{deployment['timeout_seconds']} s"),
        ("environment", " ".join(f"{k}={v}" for k, v in deployment["environment"].items())),
        ("url", hub + deployment["url"]),
        ("requests", f"{metrics.get('requests', 0)} ({metrics.get('errors', 0)} errors)"),
        ("latency", ", ".join(f"{q} {ms:.1f} ms" for q, ms in latency.items() if ms is not None)),
        ("created", deployment.get("created")),
    ]


def show(deployment: dict, events: list[dict], hub: str) -> None:
    print(status_line(deployment))
    fields = details(deployment, hub)
    width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        print(f"  {label + ':':<{width}} {'' if value is None else value}".rstrip())
    print("replicas:")
    print_rows(deployment.get("replicas_now") or [], False)
    print("events:")
    print_rows(events, False)


def hub_or_nothing(client, hub_url: str | None) -> str:
    """The hub's address to show before a url, or nothing where it is not known."""
    try:
        return client.hub_address(hub_url)
    except AtelierError:
        return ""


# what is sent -------------------------------------------------------------------------------
def plan_options(args) -> dict:
    """The fields of a new deployment or a change that were given."""
    options = {
        "image": args.image,
        "spec": args.spec,
        "model": args.model,
        "volume": args.volume,
        "job": args.job,
        "replicas": args.replicas,
        "timeout_seconds": args.timeout_seconds,
        "environment": pairs(args.env, "--env"),
    }
    if args.model is not None and args.job is not None:
        raise UsageError("--model and --job do not go together: a job's output is the model")
    return {key: value for key, value in options.items() if value is not None}


def inputs_of(args):
    """--input NAME=JSON given again and again, or --body FILE's request ('-': stdin)."""
    if (args.input is None) == (args.body is None):
        raise UsageError("`atelier deployments predict` needs --input NAME=JSON (repeat) or --body")
    if args.body is not None:
        text = sys.stdin.read() if args.body == "-" else Path(args.body).read_text()
        what = f"--body {args.body}"
    else:
        text, what = None, "--input"
    try:
        if text is not None:
            return json.loads(text)
        return {name: json.loads(value) for name, value in pairs(args.input, "--input").items()}
    except json.JSONDecodeError as error:
        raise UsageError(f"{what}: not JSON ({error})") from None


# talking to the API -------------------------------------------------------------------------
def settle(client, deployment: dict, args) -> dict:
    """With --wait: the deployment once its version serves; its failure as one line."""
    if not args.wait:
        return deployment
    if not args.json:
        print(status_line(deployment), flush=True)
    name, owner = deployment["name"], deployment["owner"]
    try:
        return client.wait_for_deployment(name, owner, deployment["version"], timeout=math.inf)
    except AtelierError as error:
        if error.status:  # a refusal of the API, not how the deployment ended
            raise
        raise UsageError(f"deployment {owner}/{name} {error.code}: {error.message}") from None


def answer(args, deployment: dict) -> None:
    print(json.dumps(deployment, indent=2) if args.json else status_line(deployment))


def cmd_create(args) -> None:
    if not (args.image and args.spec):
        raise UsageError("`atelier deployments create` needs --image and --spec")
    options = plan_options(args)
    if "model" not in options and "job" not in options:
        raise UsageError("`atelier deployments create` needs --model PATH (and --volume) or --job")

    def work(client) -> dict:
        made = client.create_deployment(args.name, owner=args.owner, **options)
        return settle(client, made, args)

    answer(args, call_api(args, work))


def cmd_update(args) -> None:
    options = plan_options(args)
    if not options:
        raise UsageError("`atelier deployments update` needs something to change")

    def work(client) -> dict:
        return settle(client, client.update_deployment(args.name, args.owner, **options), args)

    answer(args, call_api(args, work))


def cmd_call(args) -> None:
    """rollback, stop, start: one call, answered with the deployment."""
    call = f"{args.action}_deployment"

    def work(client) -> dict:
        deployment = getattr(client, call)(args.name, args.owner)
        return settle(client, deployment, args) if args.action == "rollback" else deployment

    answer(args, call_api(args, work))


def cmd_list(args) -> None:
    listed = call_api(args, lambda client: client.deployments(args.owner))
    print_rows(listed if args.json else rows(listed), args.json)


def cmd_show(args) -> None:
    def work(client):
        deployment = client.deployment(args.name, args.owner)
        events = client.deployment_events(args.name, args.owner)
        return deployment, events, hub_or_nothing(client, args.hub_url)

    deployment, events, hub = call_api(args, work)
    if args.json:
        print(json.dumps({**deployment, "events": events}, indent=2))
    else:
        show(deployment, events, hub)


def cmd_delete(args) -> None:
    call_api(args, lambda client: client.delete_deployment(args.name, args.owner))
    print(f"deleted deployment {args.name} with its app keys, events and logs (the model stays)")


def cmd_events(args) -> None:
    events = call_api(args, lambda client: client.deployment_events(args.name, args.owner))
    print_rows(events, args.json)


def cmd_logs(args) -> None:
    text = call_api(
        args, lambda client: client.deployment_logs(args.name, args.replica, args.tail, args.owner)
    )
    print(text, end="")


def cmd_keys(args) -> None:
    print_rows(call_api(args, lambda client: client.app_keys(args.name, args.owner)), args.json)


def cmd_create_key(args) -> None:
    """The key alone on stdout (KEY=$(atelier deployments create-key NAME)): it is shown once."""
    made = call_api(args, lambda client: client.create_app_key(args.name, args.owner))
    if args.json:
        print(json.dumps(made, indent=2))
        return
    print(made["key"])
    print(f"app key {made['prefix']}: shown this once, keep it", file=sys.stderr)


def cmd_revoke_key(args) -> None:
    call_api(args, lambda client: client.revoke_app_key(args.name, args.prefix, args.owner))
    print(f"revoked app key {args.prefix} of deployment {args.name}")


def cmd_predict(args) -> None:
    inputs = inputs_of(args)
    if args.owner and not (args.token or os.environ.get("JUPYTERHUB_API_TOKEN")):
        args.token = "-"  # the app key is all a deployment asks for: no API call is made

    def work(client) -> dict:
        hub = client.hub_address(args.hub_url)
        ask = client.infer if args.body is not None else client.predict
        try:
            return ask(args.name, inputs, key=args.key, owner=args.owner, hub_url=hub)
        except OSError as error:
            reason = getattr(error, "reason", None) or error
            raise UsageError(f"cannot reach the hub at {hub} ({reason})") from None

    print(json.dumps(call_api(args, work), indent=2))


# the parser ---------------------------------------------------------------------------------
def add_deployments_parser(commands) -> None:
    group = commands.add_parser("deployments", help="your deployed models, through the API")
    actions = group.add_subparsers(dest="action", required=True)
    subs = []

    def action(name: str, func, summary: str, named: bool = True) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=summary)
        if named:
            sub.add_argument("name", metavar="NAME")
        sub.set_defaults(func=func)
        subs.append(sub)
        return sub

    action("list", cmd_list, "your deployments, newest first", named=False)
    shown = action("show", cmd_show, "a deployment, its replicas and its events")
    create = action("create", cmd_create, "deploy a model: a directory on a volume, or a job's")
    update = action("update", cmd_update, "change it: a new version, or replicas/timeout")
    for sub in (create, update):
        sub.add_argument("--image", help="what each replica runs on (a catalog image)")
        sub.add_argument("--spec", help="what each replica gets (a CPU spec)")
        sub.add_argument("--model", metavar="PATH", help="the model directory on the volume")
        sub.add_argument("--volume", metavar="INSTANCE", help="whose work volume holds it")
        sub.add_argument("--job", help="instead of --model: a completed training job's output")
        sub.add_argument("--replicas", type=int, metavar="N")
        sub.add_argument("--timeout-seconds", type=int, metavar="S", help="per request")
        sub.add_argument("--env", action="append", metavar="NAME=VALUE", help="(repeat)")
    rollback = action("rollback", cmd_call, "back to the newest earlier version that served")
    for sub in (create, update, rollback):
        sub.add_argument("--wait", action="store_true", help="until it serves; exit 2 if it failed")
    action("stop", cmd_call, "drain and stop its replicas (it keeps its keys and url)")
    action("start", cmd_call, "start a stopped or failed deployment again")
    action("delete", cmd_delete, "stop it and forget it with its app keys")
    action("events", cmd_events, "what happened to a deployment")
    logs = action("logs", cmd_logs, "one replica's log")
    logs.add_argument("--replica", type=int, metavar="N", help="default: the newest")
    logs.add_argument("--tail", type=int, metavar="N", help="its last N lines")
    action("keys", cmd_keys, "its app keys, by prefix")
    action("create-key", cmd_create_key, "make an app key (printed this once)")
    action("revoke-key", cmd_revoke_key, "revoke an app key").add_argument("prefix")
    predict = action("predict", cmd_predict, "ask the model (Open Inference Protocol v2)")
    predict.add_argument("--key", required=True, help="one of its app keys")
    predict.add_argument("--input", action="append", metavar="NAME=JSON", help="(repeat)")
    predict.add_argument("--body", metavar="FILE", help="a whole OIP v2 request ('-': stdin)")
    for sub in (shown, predict):
        sub.add_argument(
            "--hub-url", help="the hub's address (default: from --url, else $ATELIER_HUB_URL)"
        )
    for sub in subs:
        sub.add_argument("--owner", help="whose deployment (admins; predict: its owner's)")
        api_options(sub)
