"""Training jobs from the command line, through the Atelier API (the SDK), as every other door:
`atelier jobs submit|list|show|logs|events|metrics|stop|resume|delete`."""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex

from atelier.hub.cli.catalog import UsageError, api_options, call_api, print_rows

NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")  # as JSON writes one
JOB_COLUMNS = ("name", "status", "ranks", "attempt", "restarts", "checkpoint", "created")


# what is sent -------------------------------------------------------------------------------
def pairs(values: list[str] | None, option: str) -> dict[str, str] | None:
    """`--option KEY=VALUE` given again and again, as a dict (a later KEY wins)."""
    if not values:
        return None
    malformed = [value for value in values if not value.partition("=")[0] or "=" not in value]
    if malformed:
        raise UsageError(f"{option}: {malformed[0]!r} is not key=value")
    return dict(value.split("=", 1) for value in values)


def number_or_text(text: str) -> int | float | str:
    """A hyperparameter's value: a number where it reads as one (`0.1`, `20`, `1e-3`), else
    the text as given (`true`, `adamw`, `007`)."""
    match = NUMBER.fullmatch(text)
    if match is None:
        return text
    value = float(text) if match[1] or match[2] else int(text)
    return value if math.isfinite(value) else text


def submit_options(args) -> dict:
    """The body of `create_job` but its name, image and spec: only what was given."""
    if not (args.image and args.spec):
        raise UsageError("`atelier jobs submit` needs --image and --spec")
    if (args.script is None) == (args.command is None):
        raise UsageError(
            "`atelier jobs submit` needs either --script PATH (a .py file on the volume) or "
            "--command PROGRAM [ARG ...] (last: everything after it is the command)"
        )
    if args.command == []:
        raise UsageError("--command: name the program to run, then its arguments")
    hyperparameters = pairs(args.hyperparameter, "--hyperparameter")
    options = {
        "volume": args.volume,
        "script": args.script,
        "command": args.command,
        "args": args.arg,
        "hyperparameters": hyperparameters
        and {key: number_or_text(value) for key, value in hyperparameters.items()},
        "nodes": args.nodes,
        "processes_per_node": args.processes_per_node,
        "environment": pairs(args.env, "--env"),
        "inputs": args.input,
        "output": args.output,
        "retries": args.retries,
        "time_limit_minutes": args.time_limit_minutes,
        "owner": args.owner,
    }
    return {key: value for key, value in options.items() if value is not None}


# what is shown ------------------------------------------------------------------------------
def status_line(job: dict) -> str:
    """`job alice/ddp is running (attempt 2, 1 restart(s), checkpoint step 40)`, and a reason
    where the API gives one (why it waits, why it failed)."""
    said = [f"attempt {job['attempt']}"] if job.get("attempt") else []
    if job.get("restarts"):
        said.append(f"{job['restarts']} restart(s)")
    if job.get("checkpoint_step") is not None:
        said.append(f"checkpoint step {job['checkpoint_step']}")
    line = f"job {job['owner']}/{job['name']} is {job['status']}"
    line += f" ({', '.join(said)})" if said else ""
    return line + (f": {job['reason']}" if job.get("reason") else "")


def job_row(job: dict) -> dict:
    row = {column: job.get(column) for column in JOB_COLUMNS}
    row["ranks"] = f"{job['nodes']}x{job['processes_per_node']}"
    row["checkpoint"] = job.get("checkpoint_step")
    return row


def job_rows(jobs: list[dict]) -> list[dict]:
    """A table row each; with jobs of several owners (an admin's listing) OWNER comes first."""
    several = len({job["owner"] for job in jobs}) > 1
    return [({"owner": job["owner"]} if several else {}) | job_row(job) for job in jobs]


def details(job: dict) -> list[tuple[str, object]]:
    time_limit = job.get("time_limit_minutes")
    devices = job.get("devices") or []
    return [
        ("image", job["image"]),
        ("spec", job["spec"]),
        ("volume", job["volume"]),
        ("runs", shlex.join(job["argv"])),
        (
            "ranks",
            f"{job['nodes']} node(s) x {job['processes_per_node']} process(es), "
            f"world size {job['world_size']}",
        ),
        ("environment", " ".join(f"{k}={v}" for k, v in job["environment"].items())),
        ("inputs", ", ".join(job["inputs"])),
        ("output", job["output"]),
        ("retries", job["retries"]),
        ("time limit", "none" if time_limit is None else f"{time_limit} minutes"),
        ("devices", ", ".join(f"{d['type']}:{d['index']}" for d in devices)),
        ("created", job.get("created")),
        ("started", job.get("started")),
        ("ended", job.get("ended")),
    ]


def show_job(job: dict, events: list[dict]) -> None:
    print(status_line(job))
    fields = details(job)
    width = max(len(label) for label, _ in fields) + 1
    for label, value in fields:
        print(f"  {label + ':':<{width}} {'' if value is None else value}".rstrip())
    print("events:")
    print_rows(events, False)


def latest(series: dict[str, list[list[float]]]) -> list[dict]:
    """Each series' newest point."""
    return [
        {"series": name, "step": points[-1][0], "value": points[-1][1]}
        for name, points in series.items()
        if points
    ]


def usage_text(key: str, value: object) -> str:
    if key.endswith("_bytes") and isinstance(value, int | float):
        return f"{key.removesuffix('_bytes')}: {value / 2**30:.2f} GiB"
    if isinstance(value, float):
        return f"{key}: {value:.1f}"
    return f"{key}: {value}"


def show_metrics(metrics: dict) -> None:
    rows = latest(metrics.get("series") or {})
    if rows:
        print_rows(rows, False)
    else:
        print("no metrics logged yet (a rank logs them with atelier.training.log_metrics)")
    if metrics.get("checkpoint_step") is not None:
        print(f"checkpoint step: {metrics['checkpoint_step']}")
    for key, value in (metrics.get("usage") or {}).items():
        print(usage_text(key, value))


# talking to the API -------------------------------------------------------------------------
def stream(client, name: str, rank: int, owner: str | None) -> None:
    """Print one rank's log as it is written, until the job ends. The API writes nothing
    while a job waits for devices, so a read may time out: it follows again then, past the
    lines already shown."""
    shown = 0
    while True:
        try:
            for number, line in enumerate(client.follow_job_logs(name, rank, owner)):
                if number >= shown:
                    print(line, end="", flush=True)
                    shown += 1
            return
        except TimeoutError:
            continue


def ended(job: dict) -> None:
    """A finished job's outcome: the status line if it completed, else a one-line refusal."""
    if job["status"] != "completed":
        raise UsageError(
            f"job {job['owner']}/{job['name']} {job['status']}: "
            f"{job.get('reason') or 'no reason given'}"
        )


def cmd_submit(args) -> None:
    options = submit_options(args)

    def work(client) -> dict:
        job = client.create_job(args.name, image=args.image, spec=args.spec, **options)
        if not args.json:
            print(status_line(job), flush=True)
        if args.follow:
            stream(client, job["name"], 0, job["owner"])
        if args.follow or args.wait:
            job = client.wait_for_job(job["name"], job["owner"], timeout=math.inf)
        return job

    job = call_api(args, work)
    if args.json:
        print(json.dumps(job, indent=2))
    if args.follow or args.wait:
        ended(job)
        if not args.json:
            print(status_line(job))


def cmd_list(args) -> None:
    listed = call_api(args, lambda client: client.jobs(args.owner))
    print_rows(listed if args.json else job_rows(listed), args.json)


def cmd_show(args) -> None:
    job, events = call_api(
        args,
        lambda client: (
            client.job(args.name, args.owner),
            client.job_events(args.name, args.owner),
        ),
    )
    if args.json:
        print(json.dumps({**job, "events": events}, indent=2))
    else:
        show_job(job, events)


def cmd_logs(args) -> None:
    if args.follow and args.tail is not None:
        raise UsageError("--tail and --follow do not go together: follow shows the whole log")

    def work(client) -> str | None:
        if args.follow:
            return stream(client, args.name, args.rank, args.owner)
        return client.job_logs(args.name, args.rank, args.owner, args.tail)

    text = call_api(args, work)
    if text is not None:
        print(text, end="")


def cmd_events(args) -> None:
    events = call_api(args, lambda client: client.job_events(args.name, args.owner))
    print_rows(events, args.json)


def cmd_metrics(args) -> None:
    metrics = call_api(args, lambda client: client.job_metrics(args.name, args.owner))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        show_metrics(metrics)


def cmd_stop_or_resume(args) -> None:
    call = {"stop": "stop_job", "resume": "resume_job"}[args.action]
    job = call_api(args, lambda client: getattr(client, call)(args.name, args.owner))
    print(json.dumps(job, indent=2) if args.json else status_line(job))


def cmd_delete(args) -> None:
    call_api(args, lambda client: client.delete_job(args.name, args.owner))
    print(f"deleted job {args.name} with its logs and metrics")


# the parser ---------------------------------------------------------------------------------
def add_jobs_parser(commands) -> None:
    jobs = commands.add_parser("jobs", help="your training jobs, through the Atelier API")
    actions = jobs.add_subparsers(dest="action", required=True)

    subs = []

    def action(name: str, func, summary: str, named: bool = True) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=summary)
        if named:
            sub.add_argument("name", metavar="NAME")
        sub.set_defaults(func=func)
        subs.append(sub)
        return sub

    submit = action("submit", cmd_submit, "submit a job: a script or command on ranks")
    submit.add_argument("--image", help="what each rank runs on (a catalog image)")
    submit.add_argument("--spec", help="what each node gets (a catalog spec)")
    submit.add_argument(
        "--volume",
        metavar="INSTANCE",
        help="the instance whose work volume it runs in (inside an instance: this one)",
    )
    submit.add_argument("--script", metavar="PATH", help="a .py file on the volume")
    submit.add_argument(
        "--command",
        nargs=argparse.REMAINDER,
        metavar="PROGRAM [ARG ...]",
        help="instead of --script: the program and its arguments; last, as everything after "
        "it is the command's",
    )
    submit.add_argument("--nodes", type=int, metavar="N")
    submit.add_argument("--processes-per-node", type=int, metavar="N")
    submit.add_argument(
        "--arg", action="append", help="an argument of the script (repeat; --arg=--steps=20)"
    )
    submit.add_argument(
        "--hyperparameter",
        action="append",
        metavar="KEY=VALUE",
        help="passed as --KEY=VALUE; numbers are sent as numbers (repeat)",
    )
    submit.add_argument("--env", action="append", metavar="KEY=VALUE", help="(repeat)")
    submit.add_argument("--input", action="append", metavar="PATH", help="on the volume (repeat)")
    submit.add_argument("--output", metavar="PATH", help="on the volume (default jobs/NAME)")
    submit.add_argument("--retries", type=int, metavar="N", help="restarts from its checkpoint")
    submit.add_argument("--time-limit-minutes", type=int, metavar="N")
    submit.add_argument(
        "--wait", action="store_true", help="until it ends; exit 2 unless it completed"
    )
    submit.add_argument(
        "--follow", action="store_true", help="print rank 0's log until it ends (as --wait)"
    )

    action("list", cmd_list, "your jobs, newest first", named=False)
    action("show", cmd_show, "a job and its events")
    logs = action("logs", cmd_logs, "one rank's log")
    logs.add_argument("--rank", type=int, default=0, metavar="R", help="default 0")
    logs.add_argument("--tail", type=int, metavar="N", help="its last N lines")
    logs.add_argument("--follow", action="store_true", help="as it is written, until it ends")
    action("events", cmd_events, "what happened to a job")
    action("metrics", cmd_metrics, "each metric's newest value, and the job's usage")
    action("stop", cmd_stop_or_resume, "stop a pending or running job")
    action("resume", cmd_stop_or_resume, "run a stopped or failed job again from its checkpoint")
    action("delete", cmd_delete, "stop a job and forget it with its logs and metrics")
    for sub in subs:
        sub.add_argument("--owner", help="whose jobs (admins)")
        api_options(sub)
