"""The job plan, the torchrun command and how a node's output is read: pure, and the node
monitor's splitting into per-rank logs and metrics."""

import json
import time

import pytest

from atelier.spawner import core
from atelier.spawner.core import jobs
from atelier.spawner.jobnode import Splitter

TORCH = core.Image("pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64")
CUDA = core.Image("pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64")
SPECS = {name: core.Spec(name) for name in ("cpu.2u8g", "gpu.2xa100.16u128g")}
CATALOG = core.Catalog({i.name: i for i in (TORCH, CUDA)}, SPECS, {"a100": 4}, None, None)
BODY = {"name": "ddp", "image": TORCH.name, "spec": "cpu.2u8g", "volume": "lab"}


def plan(**fields) -> jobs.JobPlan:
    return jobs.plan_job(
        "ann", {**BODY, "script": "train.py", **fields}, CATALOG, {"lab"}, core.Limits()
    )


def test_a_job_runs_its_script_with_its_arguments_and_hyperparameters():
    job = plan(args=["--epochs=2"], hyperparameters={"lr": 0.1, "step-seconds": 0}, nodes=2)
    assert job.argv == ("train.py", "--epochs=2", "--lr=0.1", "--step-seconds=0")
    assert (job.world_size, job.distributed_backend, job.output) == (2, "gloo", "jobs/ddp")
    assert jobs.plan_from_json("ann", "ddp", job.to_json(), CATALOG) == job


def test_a_gpu_job_gets_one_process_per_device_and_nccl():
    job = plan(image=CUDA.name, spec="gpu.2xa100.16u128g", nodes=2)
    assert (job.processes_per_node, job.accelerator_count, job.distributed_backend) == (
        2,
        4,
        "nccl",
    )
    with pytest.raises(core.OptionsError) as refused:
        plan(image=CUDA.name, spec="gpu.2xa100.16u128g", processes_per_node=3)
    assert refused.value.field == "processes_per_node"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"script": None}, "script"),
        ({"command": ["python"]}, "script"),  # both
        ({"script": "train.sh"}, "script"),
        ({"hyperparameters": {"a b": 1}}, "hyperparameters"),
        ({"hyperparameters": {"lr": [1]}}, "hyperparameters"),
        ({"args": ["x"] * 300}, "args"),
        ({"environment": {"PATH": "/tmp"}}, "environment"),
        ({"environment": {"A": 1}}, "environment"),
        ({"inputs": ["/etc"]}, "inputs"),
        ({"output": "."}, "output"),
        ({"nodes": True}, "nodes"),
        ({"retries": 11}, "retries"),
        ({"volume": "other"}, "volume"),
    ],
)
def test_a_bad_field_is_named(fields, field):
    body = {**BODY, "script": "train.py", **fields}
    body = {key: value for key, value in body.items() if value is not None}
    with pytest.raises(core.OptionsError) as refused:
        jobs.plan_job("ann", body, CATALOG, {"lab"}, core.Limits())
    assert refused.value.field == field


def test_the_job_limit_counts_pending_and_running_jobs():
    jobs.check_job_count(3, core.Limits(jobs_per_user=4))
    with pytest.raises(core.OptionsError) as refused:
        jobs.check_job_count(4, core.Limits(jobs_per_user=4))
    assert refused.value.code == "quota_exceeded"


def test_each_node_meets_the_others_at_the_rendezvous_node_0_holds():
    job = plan(nodes=2, processes_per_node=2)
    argv = jobs.torchrun_argv(job, 1, "10.0.0.5:29400", "abc", "/tmp/t")
    assert argv[:4] == ["torchrun", "--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d"]
    assert "--rdzv-conf=is_host=0" in argv and "--max-restarts=0" in argv
    assert argv[-1] == "train.py"
    environment = jobs.rank_environment(job, "/work", 3)
    assert environment["ATELIER_CHECKPOINT_DIR"] == "/work/jobs/ddp/checkpoints"
    assert environment["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "[rank${rank}]:"


def test_a_node_report_names_the_rank_that_failed_first():
    report = """t.py FAILED
Failures:
[1]:
  time      : 2026-12-02_06:04:50
  host      : box
  rank      : 2 (local_rank: 0)
  exitcode  : 1 (pid: 11)
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_06:04:50
  host      : box
  rank      : 3 (local_rank: 1)
  exitcode  : -9 (pid: 12)
  error_file: <N/A>
"""
    assert jobs.failed_rank(report) == (3, 137)
    assert jobs.describe_exit(137) == "exited 137 (SIGKILL)"
    assert jobs.failed_rank("no report") is None


def test_a_nodes_output_goes_to_each_ranks_log_the_agents_log_and_the_metrics(tmp_path):
    splitter = Splitter(tmp_path, 0, ranks=2)
    for line in [
        "W1202 agent says\n",
        "[rank1]:hello from 1\n",
        "[rank7]:a rank the job has not\n",
        "[rank0]:[rank0]: Traceback\n",
        f'[rank0]:{jobs.METRICS_MARK}{{"step": 3, "values": {{"loss": 0.5}}, "time": 7.5}}\n',
        f'[rank0]:{jobs.METRICS_MARK}{{"step": 5, "checkpoint": true}}\n',
        f"[rank0]:{jobs.METRICS_MARK}not json\n",
        f'[rank0]:{jobs.METRICS_MARK}{{"step": 6, "values": {{"loss": NaN}}}}\n',
        f'[rank0]:{jobs.METRICS_MARK}{{"step": {2**40}, "checkpoint": true}}\n',
        "[rank0]:no newline",
    ]:
        splitter.line(line)
    assert (tmp_path / "rank-1.log").read_text() == "hello from 1\n"
    refused = (tmp_path / "rank-0.log").read_text().split("\n")[:-1]  # \x1e: no line break
    assert refused[0] == " Traceback" and refused[-1] == "no newline"
    assert len(refused) == 5  # not json, NaN, a step no store keeps: lines, not metrics
    assert (tmp_path / "node-0.log").read_text() == "W1202 agent says\na rank the job has not\n"
    assert not (tmp_path / "rank-7.log").exists()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"rank": 0, "step": 3, "values": {"loss": 0.5}, "time": 7.5}  # logged
    assert records[1].pop("time") == pytest.approx(time.time(), abs=60)  # unsaid: when read
    assert records[1] == {"rank": 0, "checkpoint": 5}


@pytest.mark.parametrize("said", ['"yesterday"', "true", "NaN", "1e999", "[1]", "null"])
def test_a_time_a_rank_forges_is_dropped_for_when_the_monitor_read_it(tmp_path, said):
    """A rank's "time" is kept only as a finite number; anything else the job prints there
    leaves the monitor's own clock, and the step still counts."""
    splitter = Splitter(tmp_path, 0, ranks=1)
    splitter.line(
        f'[rank0]:{jobs.METRICS_MARK}{{"step": 4, "values": {{"loss": 1}}, "time": {said}}}\n'
    )
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record.pop("time") == pytest.approx(time.time(), abs=60)
    assert record == {"rank": 0, "step": 4, "values": {"loss": 1}}
