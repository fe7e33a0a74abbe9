"""Inside a training job: what every rank needs from Atelier.

    from atelier import training

    training.init_process_group()
    restored = training.load_checkpoint()          # (state, step) or None: resume or start
    for step in range(first, steps + 1):
        ...
        if training.rank() == 0:
            training.log_metrics(step, loss=loss.item())
        if step % 20 == 0:
            training.save_checkpoint({"model": ..., "optimizer": ...}, step)

Atelier runs every rank under torchrun (RANK, LOCAL_RANK, WORLD_SIZE) and says where things
go through the environment: ATELIER_CHECKPOINT_DIR, ATELIER_OUTPUT_DIR, ATELIER_INPUT_DIRS
(':'-joined) and ATELIER_DIST_BACKEND (gloo, nccl or hccl). Without them (plain torchrun on
a laptop) checkpoints go to ./checkpoints, outputs to ./output and the backend is gloo, so one
script runs in both places. Metrics and checkpoints are announced on stdout, in lines that
start with METRICS_MARK, which the hub reads from the job's log.

Only the standard library is imported here, torch only when a function needs it: the module
loads in every image, Python 3.9 included.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path

__all__ = [
    "METRICS_MARK",
    "checkpoint_dir",
    "init_process_group",
    "input_dirs",
    "load_checkpoint",
    "local_rank",
    "log_metrics",
    "output_dir",
    "rank",
    "save_checkpoint",
    "world_size",
]

METRICS_MARK = "\x1eatelier-metrics "
_CHECKPOINT = re.compile(r"step-(\d+)\.pt")


def rank() -> int:
    """This process's rank in the job (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its node: the index of the device it should use."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """How many ranks the job has, over all its nodes (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def checkpoint_dir() -> str:
    """Where checkpoints live: kept across the job's attempts, so a restarted job resumes."""
    return os.environ.get("ATELIER_CHECKPOINT_DIR") or "checkpoints"


def output_dir() -> str:
    """Where the job's results go (the trained model): what stays once the job is over."""
    return os.environ.get("ATELIER_OUTPUT_DIR") or "output"


def input_dirs() -> list[str]:
    """The job's input paths (data sets), in the order they were given."""
    return [path for path in os.environ.get("ATELIER_INPUT_DIRS", "").split(":") if path]


def init_process_group() -> None:
    """Join the job's process group with the backend Atelier chose for its devices; a second
    call does nothing. With nccl or hccl each rank first takes the device LOCAL_RANK, else all
    the ranks of a node would share its first device."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = os.environ.get("ATELIER_DIST_BACKEND") or "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    elif backend == "hccl":
        import torch_npu  # noqa: F401 - registers torch.npu and the hccl backend

        torch.npu.set_device(local_rank())
    dist.init_process_group(backend=backend)


def log_metrics(step: int, **values: float) -> None:
    """Record metrics for one step, e.g. `log_metrics(step, loss=0.31, accuracy=0.9)`, with
    the time it was logged (a step's wall time, as TensorBoard's scalars have: not when the
    hub read the line, which torchrun's tee delivers up to 0.1 s late).

    Any rank may log (the hub knows each line's rank from torchrun's prefix), but usually
    rank 0 alone does, with values averaged over the ranks, so the chart has one line."""
    _check_step(step)
    if not values:
        raise ValueError("log_metrics needs at least one value, e.g. log_metrics(step, loss=0.5)")
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):  # noqa: UP038 - 3.9
            raise TypeError(
                f"metric {name!r} is a {type(value).__name__}; log a number, "
                f"e.g. {name}=float(value) or {name}=tensor.item()"
            )
        if not math.isfinite(value):
            raise ValueError(f"metric {name!r} is {value}; only finite numbers can be logged")
    _announce({"step": step, "values": values, "time": time.time()})


def save_checkpoint(state: dict, step: int, keep: int = 3) -> None:
    """Save `state` (state dicts of model, optimizer, ...) as the checkpoint of `step`, keeping
    the newest `keep`. Every rank may call it; rank 0 alone writes, since DDP keeps the ranks'
    models equal. A checkpoint appears whole or not at all: a rank killed while writing leaves
    the previous one as the newest."""
    _check_step(step)
    if keep < 1:
        raise ValueError(f"keep is {keep}; keep at least 1 checkpoint")
    if rank() != 0:
        return
    import torch

    folder = Path(checkpoint_dir())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:09d}.pt"
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        torch.save(state, file)
        file.flush()
        os.fsync(file.fileno())  # whole on disk before its name says it is complete
    os.replace(partial, path)
    for stale in folder.glob("step-*.pt.partial"):  # left by an attempt killed while writing
        stale.unlink(missing_ok=True)
    for _, old in _checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    _announce({"step": step, "checkpoint": True})


def load_checkpoint(map_location="cpu") -> tuple[dict, int] | None:
    """The newest complete checkpoint as (state, step), or None when there is none yet (a
    first attempt). Every rank may call it: each loads its own copy."""
    found = _checkpoints(Path(checkpoint_dir()))
    if not found:
        return None
    import torch

    step, path = found[-1]
    return torch.load(path, map_location=map_location), step


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = (
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := _CHECKPOINT.fullmatch(path.name))
    )
    return sorted(found)


def _check_step(step: int) -> None:
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step is a {type(step).__name__}; pass the step number as an int")
    if step < 0:
        raise ValueError(f"step is {step}; steps count from 0")


def _announce(record: dict) -> None:
    """One line for the hub, written at once so it is seen even if the rank dies next, and in
    one write: torchrun's tee reads the rank's output file a line at a time and prefixes what
    it finds, so a line that arrives in pieces would be cut by a prefix in its middle."""
    line = METRICS_MARK + json.dumps(record) + "\n"
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file: a notebook, a test's capture
        print(line, end="", flush=True)
        return
    sys.stdout.flush()
    data = line.encode()
    while data:
        data = data[os.write(fd, data) :]
