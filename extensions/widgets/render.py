"""What the training job and deployment widgets show, as plain functions of plain values: no
widgets here.

Everything a job's owner or its script wrote (job names, reasons, event messages, log lines,
metric names, a model's answers) is user data and goes into the HTML escaped: ipywidgets' HTML
widget sets its value as the page's markup, unsanitised.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from html import escape

FINISHED = ("completed", "failed", "stopped")
RESUMABLE = ("stopped", "failed")
STATUS_COLORS = {
    "pending": "#8a6d00",
    "running": "#1565c0",
    "completed": "#2e7d32",
    "failed": "#c62828",
    "stopped": "#616161",
}
DEPLOYMENT_COLORS = {
    "deploying": "#8a6d00",
    "upgrading": "#8a6d00",
    "running": "#2e7d32",
    "failed": "#c62828",
    "stopped": "#616161",
}
ERROR_COLOR = "#c62828"
# A field's value reaches the kernel whole as the field loses focus, not a message a keystroke:
# a busy kernel buffers the later keystrokes' and took a click on Deploy before them (a name
# typed as "line" deployed as "l")
TYPED = {"continuous_update": False}
SERIES_COLORS = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f")
HYPERPARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")  # as the hub accepts them
INTEGER = re.compile(r"[+-]?[0-9]+")
NUMBERS_BETWEEN = re.compile(r"[\s,;]+")  # what may part the numbers of a test request
DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
# the announcements atelier.training prints for the hub (metrics, checkpoints): not for people
ANNOUNCEMENT = "\x1eatelier-"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
MOST_POINTS = 1000  # per series drawn: enough for 360 pixels


def parse_hyperparameters(text: str) -> dict[str, int | float | str]:
    """`key=value` lines as a dict: integers and decimals become numbers, anything else (or a
    value in quotes) stays text. Blank lines and `#` comments are skipped. Raises ValueError
    naming the line that is wrong."""
    parsed: dict[str, int | float | str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            raise ValueError(f"line {number}: write key=value, got {line!r}")
        if not HYPERPARAMETER_NAME.fullmatch(key):
            raise ValueError(
                f"line {number}: {key!r} is not a name "
                "(letters, digits, _, . and -, first a letter or _)"
            )
        if key in parsed:
            raise ValueError(f"line {number}: {key} is given twice")
        if not value:
            raise ValueError(f"line {number}: {key} has no value; write {key}=<value>")
        parsed[key] = hyperparameter_value(value)
    return parsed


def hyperparameter_value(value: str) -> int | float | str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    if INTEGER.fullmatch(value):
        return int(value)
    if DECIMAL.fullmatch(value) and math.isfinite(float(value)):
        return float(value)
    return value


def error_html(message: str) -> str:
    return f'<span style="color: {ERROR_COLOR}">{escape(message)}</span>'


def field_error(field: str | None, message: str) -> str:
    """An error line naming the field at fault, as the form labels it."""
    return error_html(f"{field}: {message}" if field else message)


def short_time(moment: str | None) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS` (the hub's times are UTC); other text as it is."""
    if not moment:
        return ""
    try:
        return datetime.fromisoformat(moment).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return moment


def status_html(job: dict) -> str:
    """The job's name, status (and why), attempt, restarts, checkpoint and processes."""
    status = str(job.get("status", "unknown"))
    color = STATUS_COLORS.get(status, "#000000")
    parts = [f"<b>{escape(str(job.get('name', '')))}</b>"]
    parts.append(f'<span style="color: {color}; font-weight: bold">{escape(status)}</span>')
    if job.get("reason"):
        parts.append(f"({escape(str(job['reason']))})")
    details = []
    for key, label in (("attempt", "attempt"), ("restarts", "restarts")):
        if job.get(key) is not None:
            details.append(f"{label} {escape(str(job[key]))}")
    if job.get("checkpoint_step") is not None:
        details.append(f"checkpoint at step {escape(str(job['checkpoint_step']))}")
    if job.get("world_size"):
        processes = f"{escape(str(job['world_size']))} processes"
        if job.get("nodes") and job.get("processes_per_node"):
            processes += (
                f" ({escape(str(job['nodes']))} × {escape(str(job['processes_per_node']))})"
            )
        details.append(processes)
    line = " ".join(parts)
    return line + (" · " + " · ".join(details) if details else "")


def events_html(events: list[dict], most: int = 12) -> str:
    """The newest `most` events, oldest first, as a list."""
    if not events:
        return "<i>no events yet</i>"
    items = "".join(
        f"<li><code>{escape(short_time(event.get('time')))}</code> "
        f"{escape(str(event.get('message', '')))}</li>"
        for event in events[-most:]
    )
    return f'<ul style="margin: 0; padding-left: 1.2em">{items}</ul>'


def readable_log(text: str) -> str:
    """A log as a person reads it: no terminal colours, a progress bar's last state only,
    without the lines atelier.training writes for the hub."""
    lines = []
    text = ANSI_ESCAPE.sub("", text).removesuffix("\n")
    for line in text.split("\n"):  # not splitlines(): the announcements start with \x1e
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
        if ANNOUNCEMENT not in line:
            lines.append(line)
    return "\n".join(lines)


def log_html(text: str) -> str:
    body = escape(readable_log(text)) or "<i>no output yet</i>"
    style = (
        "max-height: 18em; overflow: auto; margin: 0; padding: 4px; "
        "background: #f5f5f5; font-size: 12px; white-space: pre-wrap"
    )
    return f'<pre style="{style}">{body}</pre>'


def usage_text(usage: dict) -> str:
    """The job's CPU and memory use, as `metrics` reports it."""
    parts = []
    for key, value in usage.items():
        if not is_number(value):
            continue
        if key == "cpu_seconds":
            parts.append(f"CPU {value:.1f} s")
        elif key == "memory_bytes":
            parts.append(f"memory {value / 2**30:.2f} GiB")
        else:
            parts.append(f"{key} {value:g}")
    return " · ".join(parts)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def clean_points(points: list) -> list[tuple[float, float]]:
    """[step, value] pairs that are both finite numbers, by step; at most MOST_POINTS of them,
    evenly spread, the last one kept."""
    kept = sorted(
        (point[0], point[1])
        for point in points
        if isinstance(point, (list, tuple))
        and len(point) == 2
        and is_number(point[0])
        and is_number(point[1])
    )
    if len(kept) > MOST_POINTS:
        stride = math.ceil(len(kept) / MOST_POINTS)
        kept = kept[::stride] + ([kept[-1]] if (len(kept) - 1) % stride else [])
    return kept


def scale(value: float, low: float, high: float, start: float, length: float) -> float:
    """`value` in [low, high] mapped onto [start, start + length]; the middle when low == high."""
    if high == low:
        return start + length / 2
    return start + (value - low) / (high - low) * length


def polyline_points(
    points: list[tuple[float, float]],
    steps: tuple[float, float],
    values: tuple[float, float],
    box: tuple[float, float, float, float],
) -> str:
    """SVG `points` for (step, value) pairs drawn in `box` (left, top, width, height): the
    first step at the left edge, the largest value at the top."""
    left, top, width, height = box
    coordinates = []
    for step, value in points:
        x = scale(step, steps[0], steps[1], left, width)
        y = top + height - (scale(value, values[0], values[1], 0, height))
        coordinates.append(f"{x:.1f},{y:.1f}")
    return " ".join(coordinates)


def metric_chart(
    name: str, points: list, color: str = SERIES_COLORS[0], width: int = 360, height: int = 160
) -> str:
    """One series as a small SVG line chart: its name and newest value above, the value range
    at the left, the step range below."""
    kept = clean_points(points)
    title = escape(name)
    if not kept:
        return f"<div><b>{title}</b> <i>no values yet</i></div>"
    left, top, right, bottom = 56, 20, 8, 18
    box = (left, top, width - left - right, height - top - bottom)
    steps = (kept[0][0], kept[-1][0])
    values = (min(value for _, value in kept), max(value for _, value in kept))
    last_step, last_value = kept[-1]
    line = polyline_points(kept, steps, values, box)
    first_x, first_y = line.split(" ", 1)[0].split(",")
    mark = (
        f'<circle cx="{first_x}" cy="{first_y}" r="2.5" fill="{color}"/>' if len(kept) == 1 else ""
    )
    text = 'font-family="sans-serif" font-size="11" fill="#424242"'
    plot_bottom = top + box[3]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(name)}">'
        f'<text x="{left}" y="13" {text} font-weight="bold">{title} '
        f"{last_value:.4g} (step {last_step:g})</text>"
        f'<rect x="{left}" y="{top}" width="{box[2]}" height="{box[3]}" fill="none" '
        f'stroke="#bdbdbd"/>'
        f'<text x="{left - 4}" y="{top + 9}" text-anchor="end" {text}>{values[1]:.4g}</text>'
        f'<text x="{left - 4}" y="{plot_bottom}" text-anchor="end" {text}>{values[0]:.4g}</text>'
        f'<text x="{left}" y="{height - 4}" {text}>{steps[0]:g}</text>'
        f'<text x="{width - right}" y="{height - 4}" text-anchor="end" {text}>{steps[1]:g}</text>'
        f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{line}"/>{mark}'
        "</svg>"
    )


def metrics_html(series: dict, most: int = 6) -> str:
    """One chart per series, `loss` first, then by name; at most `most` of them."""
    if not series:
        return "<i>no metrics yet</i>"
    names = sorted(series, key=lambda name: (name != "loss", name))[:most]
    charts = (
        metric_chart(str(name), series[name], SERIES_COLORS[index % len(SERIES_COLORS)])
        for index, name in enumerate(names)
    )
    return '<div style="display: flex; flex-wrap: wrap; gap: 8px">' + "".join(charts) + "</div>"


def jobs_table_html(jobs: list[dict]) -> str:
    """The jobs as a table: name, status (and why), image, spec, processes, created."""
    if not jobs:
        return "<i>no training jobs yet</i>"
    header = "".join(
        f'<th style="text-align: left; padding: 2px 8px">{label}</th>'
        for label in ("Name", "Status", "Image", "Spec", "Processes", "Created")
    )
    rows = []
    for job in jobs:
        status = str(job.get("status", ""))
        color = STATUS_COLORS.get(status, "#000000")
        reason = f" ({escape(str(job['reason']))})" if job.get("reason") else ""
        cells = (
            f"<b>{escape(str(job.get('name', '')))}</b>",
            f'<span style="color: {color}">{escape(status)}</span>{reason}',
            escape(str(job.get("image", ""))),
            escape(str(job.get("spec", ""))),
            escape(str(job.get("world_size", ""))),
            escape(short_time(job.get("created"))),
        )
        rows.append("<tr>" + "".join(f'<td style="padding: 2px 8px">{c}</td>' for c in cells))
    body = "</tr>".join(rows) + "</tr>"
    return f'<table style="border-collapse: collapse"><tr>{header}</tr>{body}</table>'


def fits(image: dict, spec: dict) -> bool:
    """The catalog's flavor rule (spawner.core.catalog.spec_fits_image) on the API's image and
    spec records; a record without a flavor fits everything."""
    if spec.get("disabled"):
        return False
    flavor, spec_flavor = image.get("flavor"), spec.get("flavor")
    if flavor and spec_flavor and flavor != spec_flavor:
        return False
    types = image.get("accelerator_types") or ()
    return not types or spec.get("accelerator_type") in types


def default_image(images: list[dict], specs: list[dict]) -> str | None:
    """A PyTorch image that some spec can run (training means PyTorch here), else any
    PyTorch image, else the first."""
    pytorch = [image for image in images if image["name"].startswith("pytorch")]
    runnable = [image for image in pytorch if any(fits(image, spec) for spec in specs)]
    chosen = runnable or pytorch or images
    return chosen[0]["name"] if chosen else None


# deployments --------------------------------------------------------------------------------
def parse_inputs(text: str, name: str = "x") -> dict | list:
    """What Send asks the model, for `Client.predict`: numbers (commas, spaces or lines
    between) as {name: [[1.0], [2.0]]}, an [n, 1] FP32 tensor; JSON as given: a list of OIP v2
    input dicts (or a whole body {"inputs": [...]}), {input name: nested list}, or a nested
    list as the input `name`. ValueError says what is wrong."""
    text = text.strip()
    if not text:
        raise ValueError("give input values, e.g. 1.0, 2.0")
    if text[0] in "[{":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON: {error}") from None
        if isinstance(value, dict) and "inputs" in value:
            value = value["inputs"]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return value
        return value if isinstance(value, dict) else {name: value}
    try:
        numbers = [float(word) for word in NUMBERS_BETWEEN.split(text) if word]
    except ValueError:
        raise ValueError(f"write numbers such as 1.0, 2.0, or JSON; got {text!r}") from None
    if not all(math.isfinite(number) for number in numbers):
        raise ValueError("the values must be finite numbers")
    return {name: [[number] for number in numbers]}


def deployment_status_html(deployment: dict) -> str:
    """Its name, status (and why), the version asked for and the one serving."""
    status = str(deployment.get("status", "unknown"))
    color = DEPLOYMENT_COLORS.get(status, "#000000")
    line = (
        f"<b>{escape(str(deployment.get('name', '')))}</b> "
        f'<span style="color: {color}; font-weight: bold">{escape(status)}</span>'
    )
    if deployment.get("reason"):
        line += f" ({escape(str(deployment['reason']))})"
    version, serving = deployment.get("version"), deployment.get("serving_version")
    if serving is None:
        said = f"version {version}, none serving"
    elif serving == version:
        said = f"version {serving} serving"
    else:
        said = f"version {version}, version {serving} serving"
    return f"{line} · {escape(said)}"


def deployment_details_html(deployment: dict, endpoint: str) -> str:
    """The endpoint (the hub's address and the deployment's url), the replicas (how many
    asked, each live one's phase) and the request metrics the router counted."""
    live = deployment.get("replicas_now") or []
    phases = ", ".join(
        f"#{escape(str(r.get('number')))} {escape(str(r.get('phase')))} "
        f"(version {escape(str(r.get('version')))})"
        for r in live
    )
    replicas = f"{escape(str(deployment.get('replicas', '?')))} asked, {len(live)} live"
    metrics = deployment.get("metrics") or {}
    latency = metrics.get("latency_ms") or {}
    timing = ", ".join(
        f"{escape(str(q))} {ms:.1f} ms" for q, ms in latency.items() if is_number(ms)
    )
    requests = (
        f"{escape(str(metrics.get('requests', 0)))} "
        f"({escape(str(metrics.get('errors', 0)))} errors)"
    )
    name = escape(str(deployment.get("name", "")))
    rows = (
        ("Endpoint", f"<code>{escape(endpoint)}</code>"),
        ("Ask it", f"POST <code>…/v2/models/{name}/infer</code>, "
                   "<code>Authorization: Bearer &lt;app key&gt;</code> (OIP v2)"),
        ("Replicas", replicas + (f": {phases}" if phases else "")),
        ("Requests", requests + (f" · latency {timing}" if timing else "")),
    )  # fmt: skip
    cells = "".join(
        f'<tr><td style="padding: 0 8px 0 0"><b>{label}</b></td><td>{value}</td></tr>'
        for label, value in rows
    )
    return f'<table style="border-collapse: collapse">{cells}</table>'


def flat_values(data) -> list:
    return [x for item in data for x in flat_values(item)] if isinstance(data, list) else [data]


def answer_html(answer, most: int = 20) -> str:
    """A model's OIP v2 answer: each output's name, datatype, shape and its first `most`
    values; anything else as JSON."""
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        return f"<pre>{escape(json.dumps(answer, indent=1))}</pre>"
    if not outputs:
        return "<i>no outputs</i>"
    items = []
    for output in outputs:
        data = flat_values(output.get("data", []))
        values = ", ".join(f"{v:.6g}" if is_number(v) else escape(str(v)) for v in data[:most])
        more = f", … ({len(data)} values)" if len(data) > most else ""
        items.append(
            f"<li><b>{escape(str(output.get('name', '')))}</b> "
            f"{escape(str(output.get('datatype', '')))} "
            f"{escape(str(output.get('shape', '')))}: <code>{values}{more}</code></li>"
        )
    return f'<ul style="margin: 0; padding-left: 1.2em">{"".join(items)}</ul>'
