"""How a deployment's replicas move toward what was asked: start, wait until ready, move the
traffic, drain, stop. Pure: the service calls `roll` every tick with what runs and acts on the
answer; the router sends requests only to ready replicas of the `serving` version.

A new version (its target) starts all its replicas beside the serving ones. Traffic moves once
every one of them is ready: `serving` becomes the target at once for all requests, and the old
replicas drain (no new requests; after `drain_seconds`, long enough for every router to have
seen it, they are stopped, finishing what they hold). A target replica that fails or is not
ready in `ready_seconds` fails the version: its replicas stop and the serving version goes on
(nothing serving: everything stops). A serving version's replica that ends, or is not ready in
time, is replaced. Scaling is the same rule with the version unchanged.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

PHASES = ("starting", "ready", "draining")
BUCKET = 1.05  # latency histogram buckets: each 5 % wider than the one before


@dataclass(frozen=True)
class Replica:
    number: int  # unique in its deployment, never reused: its log's name
    version: int
    phase: str  # one of PHASES
    since: float  # when it entered the phase (seconds, any clock the caller keeps)


@dataclass(frozen=True)
class Step:
    """What to do now: start `start` replicas of the target, mark `drain` draining, stop
    `stop`; the deployment's serving version and status after it, and why a target failed."""

    serving: int | None
    status: str
    start: int = 0
    drain: tuple[int, ...] = ()
    stop: tuple[int, ...] = ()
    failed: str | None = None


def roll(
    target: int,
    serving: int | None,
    wanted: int,
    replicas: list[Replica],
    failures: list[tuple[int, str]],
    now: float,
    ready_seconds: float,
    drain_seconds: float,
) -> Step:
    """The next step toward `wanted` ready replicas of version `target` (0 wanted: stopped).
    `failures` are (version, why) of replicas that ended unasked since the last step."""
    drained = tuple(
        r.number for r in replicas if r.phase == "draining" and now - r.since >= drain_seconds
    )
    new = [r for r in replicas if r.version == target and r.phase != "draining"]
    old = [r for r in replicas if r.version != target and r.phase != "draining"]
    if wanted == 0:  # stopped: what is starting stops now, what serves drains
        starting = tuple(r.number for r in new + old if r.phase == "starting")
        ready = tuple(r.number for r in new + old if r.phase == "ready")
        return Step(None, "stopped", drain=ready, stop=starting + drained)
    late = [r for r in new if r.phase == "starting" and now - r.since > ready_seconds]
    why = [reason for version, reason in failures if version == target]
    why += [f"replica {r.number} was not ready within {ready_seconds:g} s" for r in late]
    if why and serving != target:  # the target never served: give it up
        if serving is None:  # and nothing serves: whatever runs stops
            gone = tuple(r.number for r in new + old)
            return Step(None, "failed", stop=gone + drained, failed=why[0])
        return Step(serving, "running", stop=tuple(r.number for r in new) + drained, failed=why[0])
    new = [r for r in new if r not in late]  # a serving version's late replica is replaced
    drained += tuple(r.number for r in late)
    ready = sorted((r for r in new if r.phase == "ready"), key=lambda r: r.number)
    live = len(new)
    surplus = sorted(new, key=lambda r: (r.phase == "ready", -r.number))[: max(0, live - wanted)]
    start = max(0, wanted - live)
    if len(ready) >= wanted:
        serving = target  # every target replica asked for is ready: the traffic moves
    drain = tuple(r.number for r in surplus if r.phase == "ready")
    stop = tuple(r.number for r in surplus if r.phase == "starting") + drained
    if serving == target:
        drain += tuple(r.number for r in old if r.phase == "ready")
        stop += tuple(r.number for r in old if r.phase == "starting")
    if serving is None:
        status = "deploying"
    elif serving != target or start or surplus or len(ready) < wanted:
        status = "upgrading"
    else:
        status = "running"
    return Step(serving, status, start=start, drain=drain, stop=stop)


# request latency --------------------------------------------------------------------------
def latency_bucket(seconds: float) -> int:
    """The histogram bucket of a latency: bucket k holds [1.05^k, 1.05^(k+1)) microseconds."""
    return max(0, int(math.log(max(seconds * 1e6, 1.0), BUCKET)))


def latency_quantile(histogram: dict[int, int], q: float) -> float | None:
    """The q-quantile (0 < q < 1) of the latencies counted in `histogram`, in milliseconds
    (the bucket's middle: within 2.5 %); None when nothing was counted."""
    buckets = sorted(histogram)
    counts, total = [], 0
    for bucket in buckets:
        total += histogram[bucket]
        counts.append(total)
    if total == 0:
        return None
    bucket = buckets[bisect.bisect_left(counts, q * total)]
    return BUCKET ** (bucket + 0.5) / 1000
