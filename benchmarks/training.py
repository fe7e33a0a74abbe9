"""Training jobs: the example DDP script (examples/train_ddp.py, 2 processes) as an Atelier
training job on a real hub against bare `torchrun` of the same script on the same machine,
in one run.

Atelier's side is a job on the local backend (image
`pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64`, spec cpu.2u8g, the script in an instance's
work volume): its ranks run as the owner's account in their cgroups, their output goes
through torchrun's tee to the job's monitor (`<data dir>/jobs/<id>/metrics.jsonl`). The bare
side is `torchrun --standalone --nproc-per-node=2 train.py` with the same environment's
torchrun, run by this script in a scratch directory, its metrics lines read from its stdout.
A third side is bare torchrun again, started in a cpu cgroup with the spec's quota as each
job node is: what that alone costs. All run `--steps` steps with no sleep and a checkpoint
every `--checkpoint-every`, one side after the other, alternating the order; a short round
of Atelier and bare first warms the caches and is dropped. All must log the same losses at
every step: the same work. Each step's time is the one rank 0 stamped when it logged the
step (`atelier.training.log_metrics`), on every side alike.

Time per step is the median, over windows of 100 steps from step 10 on (start-up left out),
of each window's time per step: checkpoints count (one every 20 steps), while the seconds
when a shared machine's host takes the CPUs away (a whole run here varies 2x) are outvoted;
goal: Atelier's <= 1.05x the bare one's. Submit-to-first-step is, for Atelier, from the POST
/jobs until step 1 (with the part until the job read `running`, its nodes launched); bare,
from starting torchrun until step 1.

    .venv/bin/python benchmarks/training.py [--steps 2000] [--checkpoint-every 20]
                                            [--repeat 5]

Writes benchmarks/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import EXAMPLE, TORCH, WORK, Hub, image_envs  # noqa: E402 - the e2e harness
from spawn import machine  # noqa: E402 - beside this script

from atelier.spawner.core import Spec  # noqa: E402
from atelier.spawner.local import cgroups  # noqa: E402
from atelier.training import METRICS_MARK  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "training.json"
PROCESSES = 2
SPEC = "cpu.2u8g"
STEADY_FROM = 10  # the step time is measured from here to the last step
WINDOW = 100  # steps
WARMUP_STEPS = 20
JOB_TIMEOUT_S = 900


def metric_point(line: str) -> tuple[int, float, float] | None:
    """(step, loss, time logged) of an `atelier.training` metrics line (split at "\\n" only:
    the mark starts with \\x1e, a line break to str.splitlines), None for any other line."""
    if not line.startswith(METRICS_MARK):
        return None
    record = json.loads(line[len(METRICS_MARK) :])
    values = record.get("values") or {}
    return (record["step"], values["loss"], record["time"]) if "loss" in values else None


def seconds_per_step(stamps: dict[int, float], first: int = STEADY_FROM) -> float:
    """The median over windows of WINDOW steps from step `first` of each one's time per step
    (stamps: step -> seconds); a run shorter than one window is one window."""
    last = max(stamps)
    if last <= first or first not in stamps:
        raise ValueError(f"need steps {first} to past it, got {sorted(stamps)[:3]}...{last}")
    width = min(WINDOW, last - first)
    starts = range(first, last - width + 1, width)
    return statistics.median((stamps[a + width] - stamps[a]) / width for a in starts)


def check_same_work(atelier: dict[int, float], bare: dict[int, float], steps: int) -> None:
    """Both sides logged every step 1..steps with the same loss: the same work each step."""
    expected = list(range(1, steps + 1))
    for side, losses in (("atelier", atelier), ("bare", bare)):
        if sorted(losses) != expected:
            raise RuntimeError(f"{side} logged steps {sorted(losses)[:5]}..., not 1..{steps}")
    differing = [s for s in expected if abs(atelier[s] - bare[s]) > 1e-6 * max(1, abs(bare[s]))]
    if differing:
        step = differing[0]
        raise RuntimeError(
            f"{len(differing)} steps differ, first {step}: {atelier[step]} != {bare[step]}"
        )


def script_args(steps: int, checkpoint_every: int) -> list[str]:
    return [f"--steps={steps}", f"--checkpoint-every={checkpoint_every}"]


# Atelier ----------------------------------------------------------------------------------


def with_example(hub: Hub, token: str) -> None:
    """The instance whose work volume holds the script as train.py, owned by its account."""
    hub.start("bench", "lab", token, {"image": TORCH, "spec": SPEC})
    hub.upload("bench", "lab", EXAMPLE, "train.py")


def atelier_run(hub: Hub, token: str, name: str, argv: list[str]) -> dict:
    """One job: submit, wait for its end, read rank 0's metrics as the monitor kept them."""
    body = {
        "name": name,
        "image": TORCH,
        "spec": SPEC,
        "volume": "lab",
        "script": "train.py",
        "processes_per_node": PROCESSES,
        "args": argv,
    }
    submitted = time.time()  # the ranks stamp with time.time() on this machine
    response = hub.atelier("POST", "/jobs", token, json=body)
    if response.status_code != 201:
        raise RuntimeError(f"job {name} refused: {response.status_code} {response.text[:500]}")
    job_id = response.json()["id"]

    def ended():
        job = hub.atelier("GET", f"/jobs/bench/{name}", token).json()
        return job if job["status"] in ("completed", "failed", "stopped") else None

    done = hub.wait_for(ended, JOB_TIMEOUT_S, f"job {name} to end")
    if done["status"] != "completed":
        log = hub.atelier("GET", f"/jobs/bench/{name}/logs", token, params={"tail": 30}).text
        raise RuntimeError(f"job {name} {done['status']}: {done.get('reason')}\n{log}")
    stamps, losses = {}, {}
    metrics = hub.dir / "data" / "jobs" / job_id / "metrics.jsonl"
    for line in metrics.read_text().split("\n"):
        record = json.loads(line) if line else {}
        if record.get("rank") == 0 and "loss" in record.get("values", {}):
            stamps[record["step"]] = record["time"]
            losses[record["step"]] = record["values"]["loss"]
    series = hub.atelier("GET", f"/jobs/bench/{name}/metrics", token).json()["series"]["loss"]
    if series[0] != [1, losses[1]]:  # the API shows what the file holds
        raise RuntimeError(f"job {name}'s metrics start {series[:2]}, its file {losses[1]}")
    return {
        "first_step_s": stamps[min(stamps)] - submitted,
        "started_s": datetime.fromisoformat(done["started"]).timestamp() - submitted,
        "step_s": seconds_per_step(stamps),
        "losses": losses,
    }


# bare torchrun ----------------------------------------------------------------------------


def bare_run(torchrun: Path, argv: list[str], cpu_group: Path | None = None) -> dict:
    """`torchrun --standalone --nproc-per-node=2 train.py` in a fresh directory (its own
    ./checkpoints and ./output), rank 0's metrics lines read from its stdout; with
    `cpu_group`, started in that cgroup."""
    directory = Path(tempfile.mkdtemp(prefix="bare-training-", dir=WORK))
    try:
        shutil.copy(EXAMPLE, directory / "train.py")
        command = [
            str(torchrun),
            "--standalone",
            f"--nproc-per-node={PROCESSES}",
            "train.py",
            *argv,
        ]
        stamps, losses = {}, {}
        with open(directory / "stderr.log", "wb") as errors:
            started = time.time()
            process = subprocess.Popen(
                command,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},  # as Atelier's ranks have
                preexec_fn=cpu_group and (lambda: joined(cpu_group)),
            )
            for raw in iter(process.stdout.readline, b""):  # lines end at b"\n" alone
                point = metric_point(raw.decode(errors="replace").rstrip("\n"))
                if point is not None:
                    step, loss, stamp = point
                    losses[step], stamps[step] = loss, stamp
            code = process.wait()
        if code != 0:
            tail = (directory / "stderr.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"bare torchrun exited {code}:\n{tail}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "first_step_s": stamps[min(stamps)] - started,
        "step_s": seconds_per_step(stamps),
        "losses": losses,
    }


# the run ----------------------------------------------------------------------------------


def joined(group: Path) -> None:
    (group / "cgroup.procs").write_text(str(os.getpid()))


def bare_cpu_group() -> Path:
    """A cpu cgroup with the spec's quota, as each job node has: what that alone costs."""
    found = cgroups.Hierarchy.detect()
    if "cpu" not in found.controllers:
        raise SystemExit("no cpu cgroup controller to use here (run as root)")
    cpu = cgroups.Hierarchy(found.version, frozenset({"cpu"}))
    limits = cgroups.Limits(memory_bytes=0, cpu=Spec(SPEC).cpu)
    [group] = cpu.create("benchmark.bare", limits, [])
    return group


def side_figures(samples: list[dict]) -> dict:
    step_ms = [s["step_s"] * 1000 for s in samples]
    first = [s["first_step_s"] for s in samples]
    figures = {
        "step_ms_median": round(statistics.median(step_ms), 3),
        "step_ms_samples": [round(x, 3) for x in step_ms],
        "first_step_s_median": round(statistics.median(first), 2),
        "first_step_s_samples": [round(x, 2) for x in first],
    }
    if "started_s" in samples[0]:  # Atelier's: until the job read `running`, its nodes launched
        started = [s["started_s"] for s in samples]
        figures["submit_to_started_s_median"] = round(statistics.median(started), 2)
        figures["submit_to_started_s_samples"] = [round(x, 2) for x in started]
    return figures


def run(args) -> dict:
    envs = image_envs()
    torchrun = envs / TORCH / "bin" / "torchrun"
    argv = script_args(args.steps, args.checkpoint_every)
    hub, group = Hub(envs), bare_cpu_group()
    try:
        token = hub.add_user("bench")
        with_example(hub, token)
        warmup = script_args(WARMUP_STEPS, args.checkpoint_every)
        atelier_run(hub, token, "warmup", warmup)  # caches warm for all; dropped
        bare_run(torchrun, warmup)
        atelier, bare, grouped = [], [], []
        for turn in range(args.repeat):
            sides = [
                (atelier, lambda turn=turn: atelier_run(hub, token, f"round-{turn}", argv)),
                (bare, lambda: bare_run(torchrun, argv)),
                (grouped, lambda: bare_run(torchrun, argv, group)),
            ]
            for samples, measure in sides if turn % 2 == 0 else sides[::-1]:
                samples.append(measure())
            check_same_work(atelier[-1]["losses"], bare[-1]["losses"], args.steps)
            check_same_work(grouped[-1]["losses"], bare[-1]["losses"], args.steps)
    finally:
        hub.stop()
        cgroups.remove([group])
    result = {
        "atelier": side_figures(atelier),
        "bare": side_figures(bare),
        "bare_in_cpu_group": side_figures(grouped),
    }

    def to_bare(side: str, key: str) -> float:
        return round(result[side][key] / result["bare"][key], 3)

    result["ratio"] = {
        "step": to_bare("atelier", "step_ms_median"),
        "bare_in_cpu_group_step": to_bare("bare_in_cpu_group", "step_ms_median"),
        "first_step": to_bare("atelier", "first_step_s_median"),
    }
    result.update(
        goal="time per step: atelier / bare <= 1.05",
        same_losses_every_step=True,
        steps=args.steps,
        checkpoint_every=args.checkpoint_every,
        repeat=args.repeat,
        processes=PROCESSES,
        image=TORCH,
        spec=SPEC,
        bare_command=f"torchrun --standalone --nproc-per-node={PROCESSES} train.py "
        + " ".join(argv),
        step_time=f"median of {WINDOW}-step windows' time per step from step {STEADY_FROM}, "
        "as rank 0 stamped its metrics",
        machine=machine(),
    )
    return result


def table(result: dict) -> str:
    rows = [f"{'':<30}{'atelier':>10}{'bare':>10}{'ratio':>8}"]
    for label, key, ratio in (
        ("time per step (ms)", "step_ms_median", "step"),
        ("submit -> first step (s)", "first_step_s_median", "first_step"),
    ):
        atelier, bare = result["atelier"][key], result["bare"][key]
        rows.append(f"  {label:<28}{atelier:>10}{bare:>10}{result['ratio'][ratio]:>8}")
    started = result["atelier"]["submit_to_started_s_median"]
    rows.append(f"  {'  of which submit -> running':<28}{started:>10}")
    grouped, ratio = result["bare_in_cpu_group"]["step_ms_median"], result["ratio"]
    rows.append(
        f"  {'bare in a cpu cgroup (ms)':<28}{'':>10}{grouped:>10}"
        f"{ratio['bare_in_cpu_group_step']:>8}"
    )
    for key, unit in (("step_ms_samples", "ms/step"), ("first_step_s_samples", "s")):
        a, b = result["atelier"][key], result["bare"][key]
        rows.append(f"  samples ({unit}): atelier {a}, bare {b}")
    rows.append(
        f"  samples in a cpu cgroup (ms/step): {result['bare_in_cpu_group']['step_ms_samples']}"
    )
    rows.append(f"  {result['steps']} steps, {result['processes']} processes, same losses")
    rows.append(f"  goal: {result['goal']}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.steps <= STEADY_FROM or args.repeat < 1:
        parser.error(f"--steps must be over {STEADY_FROM} and --repeat at least 1")

    WORK.mkdir(parents=True, exist_ok=True)
    result = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
