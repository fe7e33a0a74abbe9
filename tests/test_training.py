"""atelier.training, the module a training job's ranks import, and the DDP example run for real.

The hub's environment has no torch: the unit tests give the module a stand-in that pickles;
the example runs under the torch image environment's torchrun.
"""

import json
import os
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from conftest import ROOT, TORCH

from atelier import training


@pytest.fixture
def job(tmp_path, monkeypatch):
    """Rank 0 of a job whose checkpoints go to tmp_path/checkpoints, with a pickling torch."""
    torch = types.SimpleNamespace(
        save=lambda state, file: pickle.dump(state, file),
        load=lambda path, map_location: pickle.loads(Path(path).read_bytes()),
    )
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("ATELIER_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    return tmp_path / "checkpoints"


def metrics_lines(text: str) -> list[dict]:
    """The marked lines' records (split at "\n" only: str.splitlines also splits at \x1e)."""
    return [
        json.loads(line.removeprefix(training.METRICS_MARK))
        for line in text.split("\n")
        if line.startswith(training.METRICS_MARK)
    ]


def test_log_metrics_prints_one_marked_json_line_with_when_it_was_logged(capsys):
    before = time.time()
    training.log_metrics(7, loss=0.25, tokens=4096)
    out = capsys.readouterr().out
    assert out.startswith('\x1eatelier-metrics {"step": 7, "values": {"loss": 0.25, "tokens"')
    assert out.endswith("}\n") and out.count("\n") == 1
    (record,) = metrics_lines(out)
    assert record.pop("time") == pytest.approx(before, abs=5)
    assert record == {"step": 7, "values": {"loss": 0.25, "tokens": 4096}}


def test_a_long_metrics_line_reaches_the_rank_log_in_one_write(tmp_path, monkeypatch):
    """torchrun's tee prefixes whatever part of a line it finds in the rank's output file: a
    line written in two pieces (print writes its end apart once past 8 KiB) would be cut."""
    writes = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(data) or real_write(fd, data))
    with open(tmp_path / "rank-0.out", "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        training.log_metrics(3, **{f"value_{n}": 0.5 for n in range(1000)})
    assert len(writes) == 1 and writes[0].endswith(b"}\n") and len(writes[0]) > 16384
    assert metrics_lines((tmp_path / "rank-0.out").read_text())[0]["values"]["value_999"] == 0.5


@pytest.mark.parametrize(
    ("step", "values", "error", "says"),
    [
        (1, {"loss": True}, TypeError, "'loss' is a bool"),
        (1, {"loss": "0.5"}, TypeError, "'loss' is a str"),
        (1, {"loss": float("nan")}, ValueError, "finite"),
        (1, {}, ValueError, "at least one value"),
        (-1, {"loss": 0.5}, ValueError, "step is -1"),
        (1.0, {"loss": 0.5}, TypeError, "step is a float"),
    ],
)
def test_log_metrics_refuses_what_is_not_a_number(capsys, step, values, error, says):
    with pytest.raises(error, match=says):
        training.log_metrics(step, **values)
    assert capsys.readouterr().out == ""


def test_paths_and_ranks_come_from_the_environment(monkeypatch):
    for name in ("CHECKPOINT_DIR", "OUTPUT_DIR", "INPUT_DIRS"):
        monkeypatch.delenv(f"ATELIER_{name}", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (training.checkpoint_dir(), training.output_dir(), training.input_dirs()) == (
        "checkpoints",
        "output",
        [],
    )
    assert (training.rank(), training.world_size()) == (0, 1)
    monkeypatch.setenv("ATELIER_INPUT_DIRS", "/data/a:/data/b")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert training.input_dirs() == ["/data/a", "/data/b"]
    assert (training.rank(), training.world_size()) == (3, 4)


def test_save_and_load_round_trip(job, capsys):
    assert training.load_checkpoint() is None  # no folder yet
    training.save_checkpoint({"model": [1, 2]}, 20)
    assert [p.name for p in job.iterdir()] == ["step-000000020.pt"]
    assert metrics_lines(capsys.readouterr().out) == [{"step": 20, "checkpoint": True}]
    assert training.load_checkpoint() == ({"model": [1, 2]}, 20)


def test_save_keeps_the_newest_three(job):
    for step in (10, 20, 30, 40, 50):
        training.save_checkpoint({"step": step}, step)
    assert sorted(p.name for p in job.iterdir()) == [
        "step-000000030.pt",
        "step-000000040.pt",
        "step-000000050.pt",
    ]
    training.save_checkpoint({"step": 60}, 60, keep=1)
    assert [p.name for p in job.iterdir()] == ["step-000000060.pt"]


def test_load_ignores_partial_and_foreign_files_and_save_removes_partials(job):
    training.save_checkpoint({"step": 10}, 10)
    for name in ("step-000000090.pt.partial", "step-last.pt", "notes.txt"):
        (job / name).write_text("not a checkpoint")
    assert training.load_checkpoint() == ({"step": 10}, 10)
    training.save_checkpoint({"step": 20}, 20)
    assert not (job / "step-000000090.pt.partial").exists()
    assert (job / "notes.txt").exists()


def test_only_rank_0_writes_checkpoints(job, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    training.save_checkpoint({"model": [1]}, 10)
    assert not job.exists() and capsys.readouterr().out == ""
    assert training.load_checkpoint() is None


def test_the_ddp_example_trains_checkpoints_and_resumes(envs_dir, tmp_path):
    torchrun = envs_dir / TORCH / "bin" / "torchrun"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        ATELIER_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        ATELIER_OUTPUT_DIR=str(tmp_path / "output"),
    )

    def train(*args: str) -> list[str]:
        command = [torchrun, "--standalone", "--nproc-per-node=2", ROOT / "examples/train_ddp.py"]
        result = subprocess.run(
            [*command, "--checkpoint-every", "10", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.rstrip("\n").split("\n")

    first = train("--steps", "40")
    assert "\n".join(first).count("all_reduce world_size=2 sum=3.0") == 2  # each rank's view
    assert first[-1] == "done"
    assert {"step": 40, "checkpoint": True} in metrics_lines("\n".join(first))
    assert len([m for m in metrics_lines("\n".join(first)) if "values" in m]) == 40
    assert (tmp_path / "checkpoints" / "step-000000040.pt").exists()

    second = train("--steps", "60")
    assert "resumed from step 40" in second and second[-1] == "done"
    steps = [m["step"] for m in metrics_lines("\n".join(second)) if "values" in m]
    assert steps == list(range(41, 61))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000000040.pt",
        "step-000000050.pt",
        "step-000000060.pt",
    ]
    check = "import torch; print(torch.jit.load('output/model.pt')(torch.ones(1, 1)).item())"
    python = envs_dir / TORCH / "bin" / "python"
    served = subprocess.run([python, "-c", check], capture_output=True, text=True, cwd=tmp_path)
    assert abs(float(served.stdout) - 5) < 0.1, served.stderr  # 3 * 1 + 2
