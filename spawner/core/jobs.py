"""Training jobs: what a job is, its validation, and how its ranks are launched.

A job runs a script (or a command) on an image and spec, on `nodes` x `processes_per_node`
ranks formed into one torch.distributed group by `torchrun`, in the work volume of one of its
owner's instances. Everything here is pure: the service stores and supervises the plan, a
backend only decides where each node's `torchrun` runs (a process tree as the owner's
account, a container, a pod).
"""

from __future__ import annotations

import dataclasses
import json
import math
import posixpath
import re
import signal
from dataclasses import dataclass, field

from atelier.spawner.core.catalog import Catalog, Image, Spec
from atelier.spawner.core.errors import OptionsError
from atelier.spawner.core.instances import InstanceOptions, choose
from atelier.spawner.core.limits import Limits

JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
JOB_FIELDS = (
    "name", "image", "spec", "volume", "script", "command", "args", "hyperparameters",
    "nodes", "processes_per_node", "environment", "inputs", "output", "retries",
    "time_limit_minutes", "batch",
)  # fmt: skip
STORED = ("volume", "argv", "python", "nodes", "processes_per_node", "environment", "inputs")
STORED += ("output", "retries", "time_limit_minutes")  # with image and spec: a stored plan
JOB_STATUSES = ("pending", "running", "completed", "failed", "stopped")
FINISHED = ("completed", "failed", "stopped")
ENVIRONMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
HYPERPARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")  # --step-seconds=0.1
# what torchrun and Atelier set for each rank: a job's own environment never replaces them
RESERVED_ENVIRONMENT = re.compile(
    r"^(ATELIER_.*|TORCHELASTIC_.*|RANK|LOCAL_RANK|WORLD_SIZE|LOCAL_WORLD_SIZE|GROUP_RANK"
    r"|ROLE_RANK|ROLE_WORLD_SIZE|MASTER_ADDR|MASTER_PORT|CUDA_VISIBLE_DEVICES"
    r"|ASCEND_RT_VISIBLE_DEVICES|HOME|USER|PATH|JUPYTERHUB_.*)$"
)
ENVIRONMENT_ENTRIES, ENVIRONMENT_VALUE_LENGTH = 64, 4096
ARGS, ARG_LENGTH, PATHS, PATH_LENGTH = 256, 4096, 16, 1024
DISTRIBUTED_BACKEND = {"cpu": "gloo", "gpu": "nccl", "ascend": "hccl"}  # by the image's flavor
PREFIX = "[rank{rank}]:"  # how each rank's lines reach the node's log (torchrun's --tee)
PREFIX_TEMPLATE = PREFIX.format(rank="${rank}")
METRICS_MARK = "\x1eatelier-metrics "  # a line a rank prints from atelier.training
MAX_STEP = 2**31 - 1  # a step the store keeps (a checkpoint's) in every database
METRIC_VALUES = 32  # the most values one log_metrics call records
BATCH_MODULE = "atelier.serving.batch"  # torchrun -m: batch inference over a job's inputs


@dataclass(frozen=True)
class JobPlan:
    """Everything a backend needs to run one job, decided before any I/O."""

    owner: str
    name: str
    image: Image
    spec: Spec  # what each node gets: its cores, memory and devices
    volume: str  # the instance whose work volume the job runs in
    argv: tuple[str, ...]  # the script (a path on the volume) or command, then its arguments
    python: bool  # argv[0] is a Python script (else an executable: torchrun --no-python)
    nodes: int = 1
    processes_per_node: int = 1
    environment: dict[str, str] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()  # paths on the volume, relative to its root
    output: str = ""  # a path on the volume: the job's results and its checkpoints
    retries: int = 0  # how often a failed job restarts from its newest checkpoint
    time_limit_minutes: int | None = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node

    @property
    def distributed_backend(self) -> str:
        return DISTRIBUTED_BACKEND[self.image.flavor]

    @property
    def checkpoints(self) -> str:
        return f"{self.output}/checkpoints"

    @property
    def accelerator_count(self) -> int:
        """Devices the whole job holds: each node's spec, on every node."""
        return self.spec.accelerator_count * self.nodes

    def to_json(self) -> dict:
        """The request as stored and shown (the image and spec by name): `STORED`."""
        return {
            "image": self.image.name,
            "spec": self.spec.name,
            "volume": self.volume,
            "argv": list(self.argv),
            "python": self.python,
            "nodes": self.nodes,
            "processes_per_node": self.processes_per_node,
            "environment": dict(self.environment),
            "inputs": list(self.inputs),
            "output": self.output,
            "retries": self.retries,
            "time_limit_minutes": self.time_limit_minutes,
        }


def plan_from_json(owner: str, name: str, data: dict, catalog: Catalog) -> JobPlan:
    """A stored job's plan again (`JobPlan.to_json`), on what the catalog holds now: an image
    deleted or disabled since it was submitted refuses the next start."""
    image, spec = choose(InstanceOptions(data["image"], data["spec"]), catalog, data["image"])
    fields = {f.name: data[f.name] for f in dataclasses.fields(JobPlan) if f.name in STORED}
    fields.update(argv=tuple(data["argv"]), inputs=tuple(data["inputs"]))
    return JobPlan(owner=owner, name=name, image=image, spec=spec, **fields)


def plan_job(
    owner: str, raw: object, catalog: Catalog, volumes: set[str], limits: Limits
) -> JobPlan:
    """The job `raw` (the API's body) asks for, on one of the owner's `volumes` (the
    instances whose work volume it may use); raises `OptionsError` naming the first bad field."""
    if not isinstance(raw, dict):
        raise OptionsError("body", "must be a JSON object")
    unknown = sorted(set(raw) - set(JOB_FIELDS))
    if unknown:
        raise OptionsError(unknown[0], f"is not a job field; known: {', '.join(JOB_FIELDS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not JOB_NAME.fullmatch(name):
        raise OptionsError("name", "must be 1 to 63 of a-z, 0-9 and '-', starting with a-z or 0-9")
    for key in ("image", "spec"):
        if not isinstance(raw.get(key), str):
            raise OptionsError(key, "is required: a name from the catalog")
    image, spec = choose(InstanceOptions(raw["image"], raw["spec"]), catalog)
    volume = raw.get("volume")
    if not isinstance(volume, str) or volume not in volumes:
        raise OptionsError("volume", f"no instance of yours named {volume!r} has a work volume")
    nodes = bounded(raw, "nodes", 1, limits.job_nodes)
    per_node = bounded(raw, "processes_per_node", spec.accelerator_count or 1, limits.job_processes)
    if spec.accelerator_count and per_node > spec.accelerator_count:
        raise OptionsError(
            "processes_per_node",
            f"at most one process per device: spec {spec.name} has {spec.accelerator_count}",
        )
    argv, python = parse_argv(raw)
    return JobPlan(
        owner=owner,
        name=name,
        image=image,
        spec=spec,
        volume=volume,
        argv=argv,
        python=python,
        nodes=nodes,
        processes_per_node=per_node,
        environment=parse_environment(raw.get("environment")),
        inputs=tuple(volume_path(p, "inputs") for p in listed(raw, "inputs", PATHS, PATH_LENGTH)),
        output=volume_path(raw.get("output", f"jobs/{name}"), "output"),
        retries=bounded(raw, "retries", 0, limits.job_retries, low=0),
        time_limit_minutes=None
        if raw.get("time_limit_minutes") is None
        else bounded(raw, "time_limit_minutes", 0, limits.job_time_limit_minutes),
    )


def bounded(raw: dict, key: str, default: int, high: int, low: int = 1) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OptionsError(key, f"must be a whole number from {low} to {high}")
    return value


def listed(raw: dict, key: str, most: int, length: int) -> list[str]:
    values = raw.get(key) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise OptionsError(key, "must be a list of strings")
    if len(values) > most:
        raise OptionsError(key, f"at most {most} entries, got {len(values)}")
    if any(len(v) > length or "\0" in v for v in values):
        raise OptionsError(key, f"each entry is at most {length} characters, without NUL")
    return values


def parse_argv(raw: dict) -> tuple[tuple[str, ...], bool]:
    """The script (a path on the volume), the command, or batch inference's module, then the
    arguments and the hyperparameters (`{"lr": 0.1}` is `--lr=0.1`)."""
    script, command, batch = raw.get("script"), raw.get("command"), raw.get("batch")
    if sum(given is not None for given in (script, command, batch)) != 1:
        raise OptionsError(
            "script", "give one of script (a .py path on the volume), command or batch"
        )
    if batch is not None:
        head = batch_argv(batch, raw)
    elif script is not None:
        if not isinstance(script, str) or not script.endswith(".py") or script.startswith("-"):
            raise OptionsError("script", "must be the path of a .py file on the volume")
        head = [volume_path(script, "script")]
    else:
        head = listed(raw, "command", ARGS, ARG_LENGTH)
        if not head or not head[0] or head[0].startswith("-"):  # never one of torchrun's options
            raise OptionsError("command", "must name the program to run first")
    hyperparameters = raw.get("hyperparameters") or {}
    if not isinstance(hyperparameters, dict):
        raise OptionsError("hyperparameters", "must be an object of names and values")
    flags = []
    for key, value in hyperparameters.items():
        if not HYPERPARAMETER_NAME.fullmatch(key) or isinstance(value, dict | list):
            raise OptionsError(
                "hyperparameters", f"{key!r}: names are a-z, 0-9, '_', '.', '-'; values scalar"
            )
        flags.append(f"--{key}={value}")
    if any(len(flag) > ARG_LENGTH for flag in flags):
        raise OptionsError(
            "hyperparameters", f"each --name=value is at most {ARG_LENGTH} characters"
        )
    argv = [*head, *listed(raw, "args", ARGS, ARG_LENGTH), *flags]
    if len(argv) > ARGS:
        raise OptionsError("args", f"at most {ARGS} arguments in all, got {len(argv)}")
    return tuple(argv), command is None


def batch_argv(batch: object, raw: dict) -> list[str]:
    """Batch inference (atelier.serving.batch) of the model directory `batch["model"]` over
    the job's `inputs`, into its `output`."""
    if not isinstance(batch, dict) or set(batch) != {"model"}:
        raise OptionsError("batch", 'must be {"model": <a model directory on the volume>}')
    if not raw.get("inputs"):
        raise OptionsError("inputs", "batch inference needs the directories of its requests")
    return ["-m", BATCH_MODULE, volume_path(batch["model"], "batch")]


def parse_environment(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > ENVIRONMENT_ENTRIES:
        raise OptionsError("environment", f"must be an object of at most {ENVIRONMENT_ENTRIES}")
    for key, value in raw.items():
        if not ENVIRONMENT_NAME.fullmatch(key):
            raise OptionsError("environment", f"{key!r} is not a variable name")
        if RESERVED_ENVIRONMENT.fullmatch(key):
            raise OptionsError("environment", f"{key} is set by Atelier and torchrun")
        if not isinstance(value, str) or len(value) > ENVIRONMENT_VALUE_LENGTH or "\0" in value:
            raise OptionsError(
                "environment", f"{key}: values are strings of at most {ENVIRONMENT_VALUE_LENGTH}"
            )
    return dict(raw)


def volume_path(path: object, key: str) -> str:
    """A path inside the volume, relative to its root, normalised: never absolute, never
    `..`, so it names the same place in every backend's view of the volume."""
    if not isinstance(path, str) or not path or len(path) > PATH_LENGTH or "\0" in path:
        raise OptionsError(key, f"must be a path on the volume of at most {PATH_LENGTH} characters")
    normal = posixpath.normpath(path)
    if path.startswith("/") or ".." in path.split("/") or normal == ".":
        raise OptionsError(key, f"{path!r} must be relative to the volume's root, without '..'")
    return normal


def waiting_for(plan: JobPlan, free: int) -> str:
    """Why a job is pending: the devices it waits for, in words."""
    kind = "NPUs" if plan.spec.flavor == "ascend" else "GPUs"
    return f"waiting for {plan.accelerator_count} {plan.spec.accelerator_type} {kind} ({free} free)"


def check_job_count(active: int, limits: Limits) -> None:
    """A user with `active` pending or running jobs may submit one more."""
    if active >= limits.jobs_per_user:
        raise OptionsError(
            "name",
            f"at most {limits.jobs_per_user} pending or running jobs per user "
            "(limits.jobs_per_user); wait for one or stop it",
            "quota_exceeded",
        )


def rank_environment(plan: JobPlan, root: str, attempt: int) -> dict[str, str]:
    """What every rank finds besides torchrun's own variables; `root` is where the backend
    shows the volume to the job."""
    return {
        **plan.environment,
        "ATELIER_JOB": plan.name,
        "ATELIER_JOB_ATTEMPT": str(attempt),
        "ATELIER_DIST_BACKEND": plan.distributed_backend,
        "ATELIER_OUTPUT_DIR": f"{root}/{plan.output}",
        "ATELIER_CHECKPOINT_DIR": f"{root}/{plan.checkpoints}",
        "ATELIER_INPUT_DIRS": ":".join(f"{root}/{path}" for path in plan.inputs),
        "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": PREFIX_TEMPLATE,
    }


def torchrun_argv(plan: JobPlan, node: int, endpoint: str, run_id: str, log_dir: str) -> list[str]:
    """One node's `torchrun` command line (its program resolved by the backend's PATH):
    rendezvous at `endpoint`, restarts left to the service (it resumes from a checkpoint
    and tells which rank failed), every rank's output tee'd with its rank as prefix."""
    return [
        "torchrun",
        f"--nnodes={plan.nodes}",
        f"--nproc-per-node={plan.processes_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-conf=is_host={int(node == 0)}",  # node 0 holds the store, wherever it runs
        f"--rdzv-id={run_id}",
        "--max-restarts=0",
        "--tee=3",
        f"--log-dir={log_dir}",
        *([] if plan.python else ["--no-python"]),
        *plan.argv,
    ]


RANK_LINE = re.compile(r"^\[rank(\d{1,6})\]:")
FAILURE = re.compile(
    r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+) \(local_rank: \d+\)"
    r"\s*exitcode\s*:\s*(-?\d+)",
    re.S,
)


def split_line(line: str) -> tuple[int | None, str]:
    """A node's output line as (rank, text): torchrun's tee prefixes each rank's lines (a
    rank's own traceback is prefixed twice); the agent's lines have no rank."""
    match = RANK_LINE.match(line)
    if match is None:
        return None, line
    text = line[match.end() :]
    return int(match[1]), text.removeprefix(match[0])


def metrics_record(rank: int, text: str) -> dict | None:
    """What `atelier.training` printed on a rank's line, or None for an ordinary line:
    {"rank", "step", "values"} (and "time", when the rank said when) or {"rank", "checkpoint":
    step}. A malformed one is a line."""
    if not text.startswith(METRICS_MARK):
        return None
    try:
        record = json.loads(text[len(METRICS_MARK) :])
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP:
        return None
    values = record.get("values")
    if (
        isinstance(values, dict)
        and len(values) <= METRIC_VALUES
        and all(isinstance(k, str) and len(k) <= 128 and finite(v) for k, v in values.items())
    ):
        logged = {"time": record["time"]} if finite(record.get("time")) else {}
        return {"rank": rank, "step": record["step"], "values": values, **logged}
    if record.get("checkpoint") is True:
        return {"rank": rank, "checkpoint": record["step"]}
    return None


def finite(value: object) -> bool:
    """A number JSON can carry (no NaN, no infinity; not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def exit_status(code: int) -> int:
    """A shell's way of telling a signal: killed by SIGKILL (-9 to Python) is 137."""
    return 128 - code if code < 0 else code


def failed_rank(node_log: str) -> tuple[int, int] | None:
    """(rank, exit status) of the first failure torchrun's agent reported, if it did."""
    match = FAILURE.search(node_log)
    return None if match is None else (int(match[1]), exit_status(int(match[2])))


def describe_exit(status: int) -> str:
    if status > 128:
        try:
            return f"exited {status} ({signal.Signals(status - 128).name})"
        except ValueError:
            pass
    return f"exited {status}"
