"""Batch inference: a deployment's model over a directory of inputs, run as a training job
is (torchrun ranks sharing the files), so it has the jobs' events, logs, metrics and stop.

    torchrun ... -m atelier.serving.batch <model directory>

Every file of the job's input directories (ATELIER_INPUT_DIRS) is one request: `<name>.json`
an Open Inference Protocol v2 request body ({"inputs": [...]}), `<name>.npy` one array (the
input "input-0"). Each gives `<name>.json` in the output directory (ATELIER_OUTPUT_DIR), the
v2 response body, or `<name>.error.txt` saying why it failed. Rank r takes every
world_size-th file from the r-th; rank 0 logs the progress as metrics (done, failed, total)
and writes the counts to `summary.json` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from pathlib import Path

import numpy
from kserve.utils.numpy_codec import from_np_dtype, to_np_dtype

from atelier import training
from atelier.serving import Served

SUFFIXES = (".json", ".npy")
SUMMARY = "summary.json"
REPORT_EVERY = 10  # files between rank 0's progress reports


def requests_in(directories: list[str]) -> list[Path]:
    """Every request file, in one order all ranks agree on."""
    found = []
    for directory in directories:
        found += [p for p in Path(directory).rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    return sorted(found)


def read_inputs(path: Path) -> dict[str, numpy.ndarray]:
    if path.suffix == ".npy":
        return {"input-0": numpy.load(path, allow_pickle=False)}
    body = json.loads(path.read_text())
    return {
        tensor["name"]: numpy.asarray(
            tensor["data"], dtype=to_np_dtype(tensor["datatype"])
        ).reshape(tensor["shape"])
        for tensor in body["inputs"]
    }


def response(name: str, outputs: dict[str, numpy.ndarray]) -> dict:
    return {
        "model_name": name,
        "outputs": [
            {
                "name": key,
                "shape": list(array.shape),
                "datatype": from_np_dtype(array.dtype),
                "data": array.ravel().tolist(),
            }
            for key, value in outputs.items()
            for array in [numpy.asarray(value)]
        ],
    }


def counts(output: Path, total: int) -> dict[str, int]:
    failed = sum(1 for _ in output.glob("*.error.txt"))
    done = sum(1 for p in output.glob("*.json") if p.name != SUMMARY)
    return {"done": done, "failed": failed, "total": total}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m atelier.serving.batch", description=__doc__)
    parser.add_argument("model", type=Path, help="the model directory: model.pt or predictor.py")
    args = parser.parse_args(argv)
    training.init_process_group()
    rank, size = training.rank(), training.world_size()
    output = Path(training.output_dir())
    output.mkdir(parents=True, exist_ok=True)
    files = requests_in(training.input_dirs())
    model = Served(os.environ.get("ATELIER_JOB", "batch"), args.model.absolute())
    model.load()
    mine = files[rank::size]
    if rank == 0:
        print(f"{len(files)} request(s) for {size} rank(s)", flush=True)
    for index, path in enumerate(mine, 1):
        try:
            answer = response(model.name, model.outputs(read_inputs(path)))
            (output / f"{path.stem}.json").write_text(json.dumps(answer))
        except Exception:  # noqa: BLE001 - one bad file fails alone, and says why
            (output / f"{path.stem}.error.txt").write_text(traceback.format_exc())
            print(f"{path.name} failed", flush=True)
        if rank == 0 and index % REPORT_EVERY == 0:
            training.log_metrics(index, **counts(output, len(files)))
    import torch.distributed as dist

    dist.barrier()  # every rank has written its answers
    if rank == 0:
        summary = counts(output, len(files))
        training.log_metrics(max(len(mine), 1), **summary)
        (output / SUMMARY).write_text(json.dumps(summary))
        print(f"batch done: {summary['done']} answered, {summary['failed']} failed", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
