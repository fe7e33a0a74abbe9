"""The deployments' part of the OpenAPI document (openapi.py), as openapi_jobs.py is the
training jobs': their operations, the answers that differ from the usual ones (a log is text),
and their schemas, bounded by the hub's configured limits (spawner/core/deployments.py checks
them), so clients and the schemathesis tests learn what the hub enforces."""

from __future__ import annotations

import dataclasses

from atelier.hub.service.openapi_jobs import PATH, job_schemas
from atelier.hub.service.openapi_schemas import (
    ARGUMENT,
    INTEGER,
    NULLABLE_STRING,
    STRING,
    listing,
    obj,
    query,
    ref,
)
from atelier.hub.store.deployments import LIVE, VERSIONS_KEPT
from atelier.spawner import core
from atelier.spawner.core import deployments, jobs

DEPLOYMENT = "/deployments/{owner}/{name}"


def path_parameter(name: str, description: str) -> dict:
    return {**query(name, ARGUMENT, description), "in": "path", "required": True}


def error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref("Error")}}}


OWNER = path_parameter("owner", "whose deployment")
NAME = path_parameter("name", "the deployment's name (unique per owner)")
PREFIX = path_parameter("prefix", "the app key's `prefix` (ak_ and 12 hex digits)")
LOG_QUERY = [
    query(
        "replica",
        {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
        "whose log: the number of any replica it has had (the newest)",
    ),
    query("tail", {"type": "integer", "minimum": 1, "maximum": 100_000}, "its last lines (1000)"),
]
DEFAULTS = {f.name: f.default for f in dataclasses.fields(deployments.DeploymentPlan)}
MANAGE, READ = "deployments:manage", "deployments:read"
SERVED = (
    "it answers at `/deployments/<owner>/<name>/v2/...` on the hub's address (`url`; Open "
    "Inference Protocol v2) to requests with `Authorization: Bearer <app key>`"
)

# in OPERATIONS' form (openapi.py): a summary names a limit as {field} of core.Limits
DEPLOYMENT_OPERATIONS = {
    ("/deployments", "get"): (
        "Your deployments, newest first (an admin's token with admin:users: everyone's, or "
        "?owner=); showing one adds its replicas and request metrics",
        READ,
        [query("owner", ARGUMENT, "only this owner's (admins)")],
        None,
        200,
        "DeploymentList",
    ),
    ("/deployments", "post"): (
        "Deploy a model as a real-time service: a model directory on the work volume of one "
        "of your instances (`volume`, `model`) or a completed training job's output (`job`), "
        f"served by `replicas` copies of Atelier's model server on a CPU spec; {SERVED} (make "
        "one with POST .../keys). Answers 201 while it is `deploying`. At most "
        "`limits.deployments_per_user` ({deployments_per_user}) each (403 `quota_exceeded`); "
        "409 when you have a deployment of that name",
        MANAGE,
        [],
        "DeploymentRequest",
        201,
        "Deployment",
    ),
    (DEPLOYMENT, "get"): (
        "Show a deployment: its status, the version asked for and the one serving, its "
        "replicas now, request metrics (requests, errors, latency p50 and p99) and `url`",
        READ,
        [OWNER, NAME],
        None,
        200,
        "Deployment",
    ),
    (DEPLOYMENT, "patch"): (
        "Change a deployment: a new model, volume, job, image, spec or environment is a new "
        "version, rolled out with zero failed requests (its replicas start beside the serving "
        "ones, the traffic moves once all are ready, the old ones drain); should it not become "
        "ready, the serving version goes on. `replicas` and `timeout_seconds` change in place",
        MANAGE,
        [OWNER, NAME],
        "DeploymentChange",
        200,
        "Deployment",
    ),
    (DEPLOYMENT, "delete"): (
        "Delete a deployment: its replicas drain and stop, then its versions, app keys, "
        "events, logs and metrics go (the model on the volume stays)",
        MANAGE,
        [OWNER, NAME],
        None,
        204,
        None,
    ),
    (f"{DEPLOYMENT}/rollback", "post"): (
        "Roll back: a new version with the plan of the previous version that served (the "
        "newest earlier one that did not fail), rolled out as a change is; answers 202 (409 "
        "when there is none)",
        MANAGE,
        [OWNER, NAME],
        None,
        202,
        "Deployment",
    ),
    (f"{DEPLOYMENT}/stop", "post"): (
        "Stop a deployment: answers 202 at once, `stopped`; its replicas drain and stop "
        "(requests get 503 until it starts again). It keeps its versions, app keys and url",
        MANAGE,
        [OWNER, NAME],
        None,
        202,
        "Deployment",
    ),
    (f"{DEPLOYMENT}/start", "post"): (
        "Start a stopped or failed deployment again at the version asked for: answers 202, "
        "`deploying` (409 in any other status)",
        MANAGE,
        [OWNER, NAME],
        None,
        202,
        "Deployment",
    ),
    (f"{DEPLOYMENT}/events", "get"): (
        "What happened to a deployment, oldest first: versions made, replicas ready, a "
        "version failed, changed, stopped, started, ...",
        READ,
        [OWNER, NAME],
        None,
        200,
        "DeploymentEventList",
    ),
    (f"{DEPLOYMENT}/logs", "get"): (
        "One replica's log as text (the newest replica's, or `replica`'s): its last `tail` lines",
        READ,
        [OWNER, NAME, *LOG_QUERY],
        None,
        200,
        None,
    ),
    (f"{DEPLOYMENT}/keys", "get"): (
        "A deployment's app keys, by prefix (a key itself is shown once, when made)",
        READ,
        [OWNER, NAME],
        None,
        200,
        "AppKeyList",
    ),
    (f"{DEPLOYMENT}/keys", "post"): (
        "Make an app key: `key` is in this answer only; send it as `Authorization: Bearer "
        "<key>` to the deployment's url. At most `limits.app_keys_per_deployment` "
        "({app_keys_per_deployment}) each (403 `quota_exceeded`); no body",
        MANAGE,
        [OWNER, NAME],
        None,
        201,
        "AppKey",
    ),
    (f"{DEPLOYMENT}/keys/{{prefix}}", "delete"): (
        "Revoke an app key: requests with it get 401 from then on (within a second)",
        MANAGE,
        [OWNER, NAME, PREFIX],
        None,
        204,
        None,
    ),
}
# answers besides (or instead of) the ones every operation has: merged into its responses
DEPLOYMENT_RESPONSES = {
    ("/deployments", "post"): {
        "403": error("missing the scope, or `quota_exceeded`: too many"),
        "409": error("you have a deployment of that name"),
    },
    (DEPLOYMENT, "delete"): {"503": error("the replicas did not stop in time; try again")},
    (f"{DEPLOYMENT}/rollback", "post"): {"409": error("there is no earlier version that served")},
    (f"{DEPLOYMENT}/start", "post"): {"409": error("the deployment is not stopped or failed")},
    (f"{DEPLOYMENT}/logs", "get"): {
        "200": {
            "description": "the replica's log (empty before it wrote any)",
            "content": {"text/plain": {"schema": STRING}},
        },
        "404": error("no such deployment, or no such replica (yet)"),
    },
    (f"{DEPLOYMENT}/keys", "post"): {
        "403": error("missing the scope, or `quota_exceeded`: too many keys")
    },
}

NAMED = {"type": "string", "pattern": jobs.JOB_NAME.pattern}
# the same rules as a job's (jobs.parse_environment checks both)
JOB_ENVIRONMENT = job_schemas(core.Limits())["JobRequest"]["properties"]["environment"]
ENVIRONMENT = {**JOB_ENVIRONMENT, "description": "the model server's (not Atelier's)"}
# relative to the volume's root, never through '..' nor the root itself (jobs.volume_path)
MODEL = {**PATH, "not": {"pattern": r"(^|/)\.\.(/|$)|^(\.?/)*\.?$"}}
DATE_TIME = {"type": "string", "format": "date-time"}
LATENCY = {"type": ["number", "null"], "description": "milliseconds; null before any request"}


def whole(field: str, most: int) -> dict:
    """A whole number from 1 to the limit, with DeploymentPlan's default."""
    return {"type": "integer", "minimum": 1, "maximum": most, "default": DEFAULTS[field]}


def change_properties(limits: core.Limits) -> dict:
    """What a deployment takes, at creation and in a change (CHANGEABLE)."""
    return {
        "image": {"type": "string", "description": "a catalog image (or your snapshot)"},
        "spec": {"type": "string", "description": "what each replica gets (CPU only for now)"},
        "volume": {"type": "string", "description": "one of your instances: its work volume"},
        "model": {**MODEL, "description": "the model directory, a path on the volume"},
        "job": {**NAMED, "description": "a completed training job of yours: serve its output"},
        "replicas": whole("replicas", limits.deployment_replicas),
        "timeout_seconds": {
            **whole("timeout_seconds", limits.deployment_timeout_seconds),
            "description": "the longest a request may take; past it the caller gets 504",
        },
        "environment": ENVIRONMENT,
    }


def plan_properties(limits: core.Limits) -> dict:
    """A version as stored and shown (DeploymentPlan.to_json)."""
    changeable = change_properties(limits)
    return {"image": STRING, "spec": STRING, **{k: changeable[k] for k in deployments.STORED}}


def deployment_schemas(limits: core.Limits) -> dict:
    changeable = change_properties(limits)
    request = obj(
        {
            "name": NAMED,
            "owner": {"type": "string", "description": "whose deployment (admins; yours)"},
            **changeable,
        },
        ("name", "image", "spec"),
    )
    request["oneOf"] = [{"required": ["model"]}, {"required": ["job"]}]
    request["dependentRequired"] = {"model": ["volume"]}
    change = obj(
        {
            **changeable,
            "job": {
                **changeable["job"],
                "description": "serve its output instead of model on volume",
            },
        }
    )
    change["minProperties"] = 1
    change["not"] = {"required": ["job", "model"]}  # one or the other, as in a new one
    return {
        "Deployment": obj(
            {
                "id": STRING,
                "owner": STRING,
                "name": STRING,
                "status": {"enum": list(deployments.DEPLOYMENT_STATUSES)},
                "reason": {**NULLABLE_STRING, "description": "why it failed, or a version did"},
                "version": {"type": "integer", "description": "the version asked for"},
                "serving_version": {
                    "type": ["integer", "null"],
                    "description": "the version requests go to (null before one was ready)",
                },
                **plan_properties(limits),
                "versions": {
                    "type": "array",
                    "items": ref("DeploymentVersion"),
                    "description": f"the newest {VERSIONS_KEPT}, oldest first",
                },
                "created": DATE_TIME,
                "url": {"type": "string", "description": "on the hub's address: <url>/v2/..."},
                "replicas_now": {
                    "type": "array",
                    "items": ref("Replica"),
                    "description": "showing one deployment: its live replicas",
                },
                "metrics": ref("DeploymentMetrics"),
            }
        ),
        "DeploymentRequest": request,
        "DeploymentChange": change,
        "DeploymentList": listing("deployments", "Deployment"),
        "DeploymentVersion": obj(
            {
                "version": INTEGER,
                "created": DATE_TIME,
                "failed": {"type": "string", "description": "why, if it never served"},
                "served": {"type": "boolean", "description": "it once served every request"},
                **plan_properties(limits),
            }
        ),
        "Replica": obj(
            {
                "number": {"type": "integer", "description": "never reused: its log's"},
                "version": INTEGER,
                "phase": {"enum": list(LIVE)},
                "since": DATE_TIME,
                "reason": NULLABLE_STRING,
            }
        ),
        "DeploymentMetrics": obj(
            {
                "requests": INTEGER,
                "errors": {"type": "integer", "description": "answers of 500 and above"},
                "latency_ms": obj({"p50": LATENCY, "p99": LATENCY}, ("p50", "p99")),
            },
            ("requests", "errors", "latency_ms"),
        ),
        "DeploymentEvent": obj({"time": DATE_TIME, "message": STRING}),
        "DeploymentEventList": listing("events", "DeploymentEvent"),
        "AppKey": obj(
            {
                "prefix": {"type": "string", "pattern": deployments.KEY_PREFIX.pattern},
                "created": DATE_TIME,
                "key": {"type": "string", "description": "when made only: the secret"},
            },
            ("prefix", "created"),
        ),
        "AppKeyList": listing("keys", "AppKey"),
    }
