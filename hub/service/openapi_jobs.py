"""The training jobs' part of the OpenAPI document (openapi.py): their operations, the
answers that differ from the usual JSON ones (a log is text), and their schemas, bounded by
the hub's configured limits as the rest of the document is (spawner/core/jobs.py checks them)."""

from __future__ import annotations

from atelier.hub.service.openapi_schemas import (
    ARGUMENT,
    INTEGER,
    STRING,
    listing,
    obj,
    query,
    ref,
)
from atelier.spawner import core
from atelier.spawner.core import jobs

JOB = "/jobs/{owner}/{name}"
OWNER = {"name": "owner", "in": "path", "required": True, "schema": ARGUMENT}
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": ARGUMENT,
    "description": "the job's name (unique per owner)",
}
TAIL_LINES = 100_000  # the most lines `tail` asks for (jobs.py's JobLogsHandler)
LOG_QUERY = [
    query(
        "rank",
        {"type": "integer", "minimum": 0},
        "whose log: a rank from 0 to the job's world_size - 1 (0)",
    ),
    query("tail", {"type": "integer", "minimum": 1, "maximum": TAIL_LINES}, "only its last lines"),
    query("follow", {"enum": ["1"]}, "1: keep answering as it is written, until the job ends"),
    query("download", {"enum": ["1"]}, "1: as an attachment, <owner>-<name>-rank-<rank>.log"),
]
MANAGE, READ = "jobs:manage", "jobs:read"

# in OPERATIONS' form (openapi.py): a summary names a limit as {field} of core.Limits
JOB_OPERATIONS = {
    ("/jobs", "get"): (
        "Your training jobs, newest first (an admin's token with admin:users: everyone's, "
        "or ?owner=)",
        READ,
        [query("owner", ARGUMENT, "only this owner's (admins)")],
        None,
        200,
        "JobList",
    ),
    ("/jobs", "post"): (
        "Submit a training job: a script or command on `nodes` x `processes_per_node` ranks "
        "(torchrun), in the work volume of one of your instances; it waits (pending) for its "
        "devices. At most `limits.jobs_per_user` ({jobs_per_user}) pending or running each "
        "(403 `quota_exceeded`); 409 when you have a job of that name",
        MANAGE,
        [],
        "JobRequest",
        201,
        "Job",
    ),
    (JOB, "get"): ("Show a training job", READ, [OWNER, NAME], None, 200, "Job"),
    (JOB, "delete"): (
        "Delete a job, its logs and metrics (a pending or running one is stopped first; "
        "the results in its output on the volume stay)",
        MANAGE,
        [OWNER, NAME],
        None,
        204,
        None,
    ),
    (f"{JOB}/stop", "post"): (
        "Stop a pending or running job: answers 202 at once, the job is `stopped` once its "
        "ranks have exited (409 when it is not pending or running)",
        MANAGE,
        [OWNER, NAME],
        None,
        202,
        "Job",
    ),
    (f"{JOB}/resume", "post"): (
        "Resume a stopped or failed job from its newest checkpoint (or from the start): "
        "answers 202, pending again (409 in any other status; 403 `quota_exceeded` past "
        "`limits.jobs_per_user`, {jobs_per_user})",
        MANAGE,
        [OWNER, NAME],
        None,
        202,
        "Job",
    ),
    (f"{JOB}/events", "get"): (
        "What happened to a job, oldest first: queued, devices allocated, started, a rank "
        "exited, restarted from a checkpoint, ...",
        READ,
        [OWNER, NAME],
        None,
        200,
        "JobEventList",
    ),
    (f"{JOB}/logs", "get"): (
        "One rank's log as text: all of it, its last `tail` lines, or followed live "
        "(`follow=1`); 410 once removed, `limits.job_log_retention_days` "
        "({job_log_retention_days}) days after the job ended",
        READ,
        [OWNER, NAME, *LOG_QUERY],
        None,
        200,
        None,
    ),
    (f"{JOB}/metrics", "get"): (
        "A job's metrics (what its ranks reported with atelier.training), what it uses now "
        "while running, and its newest checkpoint's step",
        READ,
        [OWNER, NAME],
        None,
        200,
        "JobMetrics",
    ),
}
ERROR = {"content": {"application/json": {"schema": ref("Error")}}}
QUOTA = {"description": "missing the scope, or `quota_exceeded`: too many active jobs", **ERROR}
# answers besides (or instead of) the ones every operation has: merged into its responses
JOB_RESPONSES = {
    ("/jobs", "post"): {"403": QUOTA},
    (JOB, "delete"): {"503": {"description": "the job did not stop in time; try again", **ERROR}},
    (f"{JOB}/stop", "post"): {"409": {"description": "the job is not pending or running", **ERROR}},
    (f"{JOB}/resume", "post"): {
        "403": QUOTA,
        "409": {"description": "the job is not stopped or failed", **ERROR},
    },
    (f"{JOB}/logs", "get"): {
        "200": {
            "description": "the rank's log (empty before it wrote any)",
            "headers": {
                "Content-Disposition": {
                    "description": "with `download=1`: attachment",
                    "schema": STRING,
                }
            },
            "content": {"text/plain": {"schema": STRING}},
        },
        "410": {"description": "its logs were removed (limits.job_log_retention_days)", **ERROR},
    },
}

PATH = {
    "type": "string",
    "minLength": 1,
    "maxLength": jobs.PATH_LENGTH,
    "pattern": r"^[^/\x00]",  # relative to the volume's root, without '..' (checked)
}
STRINGS = {
    "type": "array",
    "items": {"type": "string", "maxLength": jobs.ARG_LENGTH, "pattern": r"^[^\x00]*$"},
    "maxItems": jobs.ARGS,
}
NULLABLE_INTEGER = {"type": ["integer", "null"]}


def plan_properties(limits: core.Limits) -> dict:
    """What a job asked for, as stored and shown (JobPlan.to_json, less the image and spec)."""
    return {
        "volume": {"type": "string", "description": "the instance whose work volume it runs in"},
        "argv": {"type": "array", "items": STRING, "description": "the script or command, args"},
        "python": {"type": "boolean", "description": "argv[0] is a Python script"},
        "nodes": {"type": "integer", "minimum": 1, "maximum": limits.job_nodes},
        "processes_per_node": {"type": "integer", "minimum": 1, "maximum": limits.job_processes},
        "environment": {"type": "object", "additionalProperties": STRING},
        "inputs": {"type": "array", "items": STRING},
        "output": {"type": "string", "description": "its results and checkpoints/, on the volume"},
        "retries": {"type": "integer", "minimum": 0, "maximum": limits.job_retries},
        "time_limit_minutes": {**NULLABLE_INTEGER, "maximum": limits.job_time_limit_minutes},
    }


def job_schemas(limits: core.Limits) -> dict:
    request = obj(
        {
            "name": {"type": "string", "pattern": jobs.JOB_NAME.pattern},
            "owner": {"type": "string", "description": "whose job (admins; yours by default)"},
            "image": {"type": "string", "description": "a catalog image (or your snapshot)"},
            "spec": {"type": "string", "description": "what each node gets"},
            "volume": {
                "type": "string",
                "description": "one of your instances: the job runs in its work volume",
            },
            "script": {
                **PATH,
                "pattern": r"^[^/\x00].*\.py$",
                "description": "a .py file on the volume (or give command)",
            },
            "command": {**STRINGS, "minItems": 1, "description": "a program and its arguments"},
            "batch": {
                "type": "object",
                "properties": {"model": {**PATH, "description": "a model directory on the volume"}},
                "required": ["model"],
                "additionalProperties": False,
                "description": "batch inference instead of a script: the model (model.pt or "
                "predictor.py, as a deployment serves) over every .json (an Open Inference "
                "Protocol v2 request) and .npy file of `inputs`, each answer a file in `output`",
            },
            "args": {**STRINGS, "description": f"after the script or command ({jobs.ARGS} in all)"},
            "hyperparameters": {
                "type": "object",
                "propertyNames": {"pattern": jobs.ENVIRONMENT_NAME.pattern},
                "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
                "description": "each is passed as the argument --name=value",
            },
            "nodes": {
                "type": "integer",
                "minimum": 1,
                "maximum": limits.job_nodes,
                "default": 1,
            },
            "processes_per_node": {
                "type": "integer",
                "minimum": 1,
                "maximum": limits.job_processes,
                "description": "ranks per node: at most the spec's devices (by default, all)",
            },
            "environment": {
                "type": "object",
                "maxProperties": jobs.ENVIRONMENT_ENTRIES,
                "propertyNames": {
                    "pattern": jobs.ENVIRONMENT_NAME.pattern,
                    "not": {"pattern": jobs.RESERVED_ENVIRONMENT.pattern},
                },
                "additionalProperties": {
                    "type": "string",
                    "maxLength": jobs.ENVIRONMENT_VALUE_LENGTH,
                    "pattern": r"^[^\x00]*$",
                },
                "description": "every rank's variables (not those Atelier and torchrun set)",
            },
            "inputs": {
                "type": "array",
                "items": PATH,
                "maxItems": jobs.PATHS,
                "description": "paths on the volume, relative to its root",
            },
            "output": {**PATH, "description": "a path on the volume (jobs/<name>)"},
            "retries": {
                "type": "integer",
                "minimum": 0,
                "maximum": limits.job_retries,
                "default": 0,
                "description": "restarts from the newest checkpoint after a failure",
            },
            "time_limit_minutes": {
                **NULLABLE_INTEGER,
                "minimum": 1,
                "maximum": limits.job_time_limit_minutes,
                "description": "it fails once it ran this long; null: no limit",
            },
        },
        ("name", "image", "spec", "volume"),
    )
    request["oneOf"] = [{"required": [one]} for one in ("script", "command", "batch")]
    return {
        "Job": obj(
            {
                "id": STRING,
                "owner": STRING,
                "name": STRING,
                "status": {"enum": list(jobs.JOB_STATUSES)},
                "reason": {
                    "type": ["string", "null"],
                    "description": "why it waits, failed or stopped",
                },
                "image": STRING,
                "spec": STRING,
                **plan_properties(limits),
                "world_size": {"type": "integer", "description": "nodes x processes_per_node"},
                "attempt": {"type": "integer", "description": "starts so far"},
                "restarts": {"type": "integer", "description": "of them, after a failure"},
                "checkpoint_step": {**NULLABLE_INTEGER, "description": "the newest saved"},
                "devices": {"type": "array", "items": ref("Device")},
                "created": {"type": "string", "format": "date-time"},
                "started": {"type": ["string", "null"], "format": "date-time"},
                "ended": {"type": ["string", "null"], "format": "date-time"},
            }
        ),
        "JobRequest": request,
        "JobList": listing("jobs", "Job"),
        "Device": obj({"kind": STRING, "type": STRING, "index": INTEGER}),
        "JobEvent": obj({"time": {"type": "string", "format": "date-time"}, "message": STRING}),
        "JobEventList": listing("events", "JobEvent"),
        "JobMetrics": obj(
            {
                "series": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "array",
                        "items": {
                            "type": "array",
                            "prefixItems": [INTEGER, {"type": "number"}],
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    },
                    "description": "each metric's [step, value] points, oldest first",
                },
                "usage": {
                    "type": "object",
                    "additionalProperties": {"type": "number"},
                    "description": "while running, where known: cpu_seconds, memory_bytes",
                },
                "checkpoint_step": NULLABLE_INTEGER,
            },
            ("series", "usage", "checkpoint_step"),
        ),
    }
