"""Training jobs without a hub: the OpenAPI document describes their routes, the Job the API
answers with and the JobRequest it takes, bounded by the hub's configured limits."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from atelier.hub.context import Context
from atelier.hub.service.jobs import JOBS_MANAGE, JOBS_READ, read_series
from atelier.hub.service.openapi import document
from atelier.hub.service.training import Training
from atelier.hub.store.records import JobRecord
from atelier.hub.store.store import Store
from atelier.spawner.core import Catalog, Image, Limits, OptionsError, Spec, jobs

IMAGE = Image("python_3.11-cpu-py_3.11-debian_12-x86_64")
CATALOG = Catalog({IMAGE.name: IMAGE}, {"cpu.2u4g": Spec("cpu.2u4g")})
REQUEST = {"name": "train-1", "image": IMAGE.name, "spec": "cpu.2u4g", "volume": "lab"}
LIMITS = Limits(job_nodes=3, job_processes=5, job_retries=2, job_time_limit_minutes=90)
JOB = "/jobs/{owner}/{name}"


def validator(openapi: dict, schema: str) -> Draft202012Validator:
    """One of the document's schemas, its $refs resolved within the document."""
    resource = Resource.from_contents(openapi, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:atelier", resource)
    ref = {"$ref": f"urn:atelier#/components/schemas/{schema}"}
    return Draft202012Validator(ref, registry=registry)


def planned(raw: dict, limits: Limits = LIMITS) -> jobs.JobPlan:
    return jobs.plan_job("alice", raw, CATALOG, {"lab"}, limits)


def record(**more) -> JobRecord:
    plan = planned({**REQUEST, "script": "train.py", "nodes": 2, "processes_per_node": 3})
    job = JobRecord(id="j1", owner="alice", name="train-1", plan=plan.to_json(), **more)
    job.status, job.attempt, job.restarts, job.devices = "running", 1, 0, []
    job.created = job.started = datetime.now(UTC)
    return job


def test_the_job_schema_has_what_the_api_answers_with():
    openapi = document(LIMITS)
    job = record(checkpoint_step=40, run={"pid": 1}, stop_requested=False)
    shown = {k: v for k, v in job.to_json().items() if k not in ("run", "stop_requested")}
    assert set(openapi["components"]["schemas"]["Job"]["properties"]) == set(shown)
    assert not {"run", "stop_requested"} & set(
        openapi["components"]["schemas"]["Job"]["properties"]
    )
    validator(openapi, "Job").validate(shown)
    validator(openapi, "JobList").validate({"jobs": [shown]})
    job.devices = [{"kind": "gpu", "type": "h100", "index": 0}]
    job.status, job.ended, job.reason = "failed", datetime.now(UTC), "rank 3 exited 137"
    validator(openapi, "Job").validate(job.to_json())


def test_the_job_request_has_the_job_fields_and_the_configured_limits():
    schema = document(LIMITS)["components"]["schemas"]["JobRequest"]
    fields = schema["properties"]
    assert set(fields) == {*jobs.JOB_FIELDS, "owner"}  # what JobsHandler.post takes
    assert set(schema["required"]) == {"name", "image", "spec", "volume"}
    assert (fields["nodes"]["minimum"], fields["nodes"]["maximum"]) == (1, 3)
    assert fields["processes_per_node"]["maximum"] == 5
    assert (fields["retries"]["minimum"], fields["retries"]["maximum"]) == (0, 2)
    assert fields["time_limit_minutes"]["maximum"] == 90
    assert fields["name"]["pattern"] == jobs.JOB_NAME.pattern
    assert fields["environment"]["maxProperties"] == jobs.ENVIRONMENT_ENTRIES
    defaults = document()["components"]["schemas"]["JobRequest"]["properties"]
    assert defaults["nodes"]["maximum"] == Limits().job_nodes
    assert defaults["time_limit_minutes"]["maximum"] == Limits().job_time_limit_minutes


GOOD = [
    {**REQUEST, "script": "train.py"},
    {**REQUEST, "command": ["python", "-m", "x"], "args": ["--a"], "nodes": 3},
    {**REQUEST, "script": "a/b.py", "hyperparameters": {"lr": 0.1, "name": "x", "flag": True}},
    {**REQUEST, "script": "t.py", "environment": {"SEED": "1"}, "inputs": ["data"]},
    {**REQUEST, "script": "t.py", "output": "out/x", "retries": 2, "time_limit_minutes": 90},
    {**REQUEST, "script": "t.py", "time_limit_minutes": None, "processes_per_node": 5},
]
BAD = [
    {**REQUEST},  # neither script nor command
    {**REQUEST, "script": "t.py", "command": ["x"]},  # both
    {**REQUEST, "script": "t.sh"},
    {**REQUEST, "script": "/abs/t.py"},
    {**REQUEST, "command": []},
    {**REQUEST, "script": "t.py", "nodes": 4},
    {**REQUEST, "script": "t.py", "nodes": 0},
    {**REQUEST, "script": "t.py", "nodes": True},
    {**REQUEST, "script": "t.py", "processes_per_node": 6},
    {**REQUEST, "script": "t.py", "retries": 3},
    {**REQUEST, "script": "t.py", "retries": -1},
    {**REQUEST, "script": "t.py", "time_limit_minutes": 91},
    {**REQUEST, "script": "t.py", "time_limit_minutes": 0},
    {**REQUEST, "script": "t.py", "environment": {"RANK": "1"}},
    {**REQUEST, "script": "t.py", "environment": {"1X": "1"}},
    {**REQUEST, "script": "t.py", "hyperparameters": {"lr": [1]}},
    {**REQUEST, "script": "t.py", "inputs": ["/etc"]},
    {**REQUEST, "script": "t.py", "inputs": ["x"] * (jobs.PATHS + 1)},
    {**REQUEST, "script": "t.py", "name": "Bad_Name"},
    {**REQUEST, "script": "t.py", "gpus": 1},
]


@pytest.mark.parametrize("raw", GOOD)
def test_what_the_schema_takes_the_hub_takes(raw):
    validator(document(LIMITS), "JobRequest").validate(raw)
    planned(raw)


@pytest.mark.parametrize("raw", BAD)
def test_what_the_schema_refuses_the_hub_refuses(raw):
    assert not validator(document(LIMITS), "JobRequest").is_valid(raw)
    with pytest.raises(OptionsError):
        planned(raw)


def test_the_job_routes_state_their_scopes_statuses_and_answers():
    openapi = document(Limits(jobs_per_user=3, job_log_retention_days=9))
    paths = openapi["paths"]
    assert set(paths["/jobs"]) == {"get", "post"}
    assert set(paths[JOB]) == {"get", "delete"}
    for path, method, scope, status in (
        ("/jobs", "get", JOBS_READ, "200"),
        ("/jobs", "post", JOBS_MANAGE, "201"),
        (JOB, "get", JOBS_READ, "200"),
        (JOB, "delete", JOBS_MANAGE, "204"),
        (f"{JOB}/stop", "post", JOBS_MANAGE, "202"),
        (f"{JOB}/resume", "post", JOBS_MANAGE, "202"),
        (f"{JOB}/events", "get", JOBS_READ, "200"),
        (f"{JOB}/logs", "get", JOBS_READ, "200"),
        (f"{JOB}/metrics", "get", JOBS_READ, "200"),
    ):
        op = paths[path][method]
        assert (
            f"`{scope}`" in op["description"] and "every user's default role" in op["description"]
        )
        assert status in op["responses"], (path, method)
    post = paths["/jobs"]["post"]
    assert "`limits.jobs_per_user` (3)" in post["summary"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/JobRequest"
    }
    assert "quota_exceeded" in paths[f"{JOB}/resume"]["post"]["responses"]["403"]["description"]
    assert [p["name"] for p in paths["/jobs"]["get"]["parameters"]] == ["owner"]
    assert "503" in paths[JOB]["delete"]["responses"]


def test_the_logs_are_text_and_gone_after_the_retention():
    logs = document(Limits(job_log_retention_days=9))["paths"][f"{JOB}/logs"]["get"]
    assert set(logs["responses"]["200"]["content"]) == {"text/plain"}
    assert "410" in logs["responses"] and "(9) days" in logs["summary"]
    query = {p["name"]: p for p in logs["parameters"] if p["in"] == "query"}
    assert set(query) == {"rank", "tail", "follow", "download"}
    assert query["rank"]["schema"]["minimum"] == 0 and query["tail"]["schema"]["minimum"] == 1
    assert not any(p["required"] for p in query.values())


def test_the_events_and_metrics_answers_follow_their_schemas(tmp_path):
    openapi = document()
    events = {"events": [{"time": datetime.now(UTC).isoformat(), "message": "queued"}]}
    validator(openapi, "JobEventList").validate(events)
    (tmp_path / "metrics.jsonl").write_text(
        '{"rank": 0, "step": 1, "values": {"loss": 2.5, "tokens": 10}}\n'
        '{"rank": 0, "step": 2, "values": {"loss": 1.5}}\n'
        '{"rank": 0, "step": 3, "values": {"loss"'  # a line still being written
    )
    series = read_series(tmp_path / "metrics.jsonl")
    assert series == {"loss": [[1, 2.5], [2, 1.5]], "tokens": [[1, 10]]}
    metrics = validator(openapi, "JobMetrics")
    metrics.validate({"series": series, "usage": {}, "checkpoint_step": None})
    metrics.validate(
        {"series": {}, "usage": {"cpu_seconds": 1.5, "memory_bytes": 2}, "checkpoint_step": 4}
    )
    assert not metrics.is_valid({"series": {"loss": [[1]]}, "usage": {}, "checkpoint_step": None})


def test_a_finished_jobs_logs_go_after_their_retention_and_its_record_stays(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'atelier.sqlite'}")
    limits = Limits(job_log_retention_days=30)
    context = SimpleNamespace(store=store, settings=SimpleNamespace(data_dir=tmp_path))
    context.limits, context.job_dir = limits, functools.partial(Context.job_dir, context)
    training = Training(context)
    plan = {"nodes": 1, "processes_per_node": 1}
    old, recent = (store.create_job("ann", name, plan, limits) for name in ("old", "recent"))
    for job, days in ((old, 31), (recent, 29)):
        ended = datetime.now(UTC) - timedelta(days=days)
        store.update_job(job["id"], status="completed", ended=ended)
        (training.directory(job["id"]) / "rank-0.log").parent.mkdir(parents=True)
    training.expire_logs()
    assert not training.directory(old["id"]).exists()
    assert training.directory(recent["id"]).exists()
    assert store.job("ann", "old")["status"] == "completed"
