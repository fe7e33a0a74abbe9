"""The OpenAPI document states the hub's configured limits, not the defaults (no hub needed)."""

import os
from types import SimpleNamespace

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from atelier.hub.service.deployments import MANAGE, READ, DeploymentBase
from atelier.hub.service.openapi import document
from atelier.hub.store.store import Store
from atelier.spawner.core import Catalog, Image, Limits, OptionsError, Spec, deployments


def test_the_document_carries_the_configured_limits():
    limits = Limits(tags_per_instance=3, volume_max_gb=50, volume_step_max_gb=7)
    openapi = document(limits)
    schemas = openapi["components"]["schemas"]
    create = schemas["InstanceCreate"]["properties"]
    assert create["tags"]["maxProperties"] == 3
    assert schemas["InstanceChange"]["properties"]["tags"]["maxProperties"] == 3
    assert schemas["Instance"]["properties"]["tags"]["maxProperties"] == 3
    assert create["volume_gb"]["maximum"] == 50
    assert schemas["VolumeExpand"]["properties"]["add_gb"]["maximum"] == 7
    expand = openapi["paths"]["/instances/{owner}/{name}/volume/expand"]["post"]
    assert expand["summary"].startswith("Grow the work volume (1 to 7 GB a step, 50 GB at most;")


def test_the_instance_name_and_key_pair_count_follow_the_limits():
    openapi = document(Limits(instance_name_length=12, keypairs_per_user=2))
    create = openapi["components"]["schemas"]["InstanceCreate"]["properties"]
    assert create["name"]["pattern"] == "^[a-z0-9-]{1,12}$"
    assert "`limits.keypairs_per_user` (2) each" in openapi["paths"]["/keypairs"]["post"]["summary"]


# deployments ------------------------------------------------------------------------------
IMAGE = Image("python_3.11-cpu-py_3.11-debian_12-x86_64")
CATALOG = Catalog({IMAGE.name: IMAGE}, {"cpu.2u4g": Spec("cpu.2u4g")})
SOURCES = deployments.Sources({"lab"}, {"train-1": ("lab", "jobs/train-1")})
SERVE = {"name": "digits", "image": IMAGE.name, "spec": "cpu.2u4g"}
DEPLOYMENT_LIMITS = Limits(deployment_replicas=3, deployment_timeout_seconds=90)
DEPLOYMENT = "/deployments/{owner}/{name}"


def validator(openapi: dict, schema: str) -> Draft202012Validator:
    """One of the document's schemas, its $refs resolved within the document."""
    resource = Resource.from_contents(openapi, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:atelier", resource)
    ref = {"$ref": f"urn:atelier#/components/schemas/{schema}"}
    return Draft202012Validator(ref, registry=registry)


def test_the_deployment_routes_state_their_scopes_statuses_and_answers():
    paths = document(Limits(deployments_per_user=2, app_keys_per_deployment=5))["paths"]
    assert set(paths["/deployments"]) == {"get", "post"}
    assert set(paths[DEPLOYMENT]) == {"get", "patch", "delete"}
    for path, method, scope, status in (
        ("/deployments", "get", READ, "200"),
        ("/deployments", "post", MANAGE, "201"),
        (DEPLOYMENT, "get", READ, "200"),
        (DEPLOYMENT, "patch", MANAGE, "200"),
        (DEPLOYMENT, "delete", MANAGE, "204"),
        (f"{DEPLOYMENT}/rollback", "post", MANAGE, "202"),
        (f"{DEPLOYMENT}/stop", "post", MANAGE, "202"),
        (f"{DEPLOYMENT}/start", "post", MANAGE, "202"),
        (f"{DEPLOYMENT}/events", "get", READ, "200"),
        (f"{DEPLOYMENT}/logs", "get", READ, "200"),
        (f"{DEPLOYMENT}/keys", "get", READ, "200"),
        (f"{DEPLOYMENT}/keys", "post", MANAGE, "201"),
        (f"{DEPLOYMENT}/keys/{{prefix}}", "delete", MANAGE, "204"),
    ):
        op = paths[path][method]
        assert (
            f"`{scope}`" in op["description"] and "every user's default role" in op["description"]
        )
        assert {status, "400", "401", "403", "404", "409"} <= set(op["responses"]), (path, method)
    post = paths["/deployments"]["post"]
    assert "`limits.deployments_per_user` (2)" in post["summary"]
    assert "/deployments/<owner>/<name>/v2/" in post["summary"] and "Bearer" in post["summary"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeploymentRequest"
    }
    assert "quota_exceeded" in post["responses"]["403"]["description"]
    keys = paths[f"{DEPLOYMENT}/keys"]["post"]
    assert "(5)" in keys["summary"] and "requestBody" not in keys
    assert "zero failed requests" in paths[DEPLOYMENT]["patch"]["summary"]
    assert "503" in paths[DEPLOYMENT]["delete"]["responses"]
    logs = paths[f"{DEPLOYMENT}/logs"]["get"]
    assert set(logs["responses"]["200"]["content"]) == {"text/plain"}
    assert [p["name"] for p in logs["parameters"] if p["in"] == "query"] == ["replica", "tail"]


def test_the_deployment_bodies_have_the_fields_and_the_configured_limits():
    schemas = document(DEPLOYMENT_LIMITS)["components"]["schemas"]
    request, change = schemas["DeploymentRequest"], schemas["DeploymentChange"]
    assert set(request["properties"]) == {*deployments.DEPLOYMENT_FIELDS, "owner"}
    assert set(request["required"]) == {"name", "image", "spec"}
    assert set(change["properties"]) == set(deployments.CHANGEABLE)
    assert change["minProperties"] == 1 and "required" not in change
    for fields in (request["properties"], change["properties"]):
        assert (fields["replicas"]["minimum"], fields["replicas"]["maximum"]) == (1, 3)
        assert fields["timeout_seconds"]["maximum"] == 90
    shown = schemas["Deployment"]["properties"]
    assert shown["replicas"]["maximum"] == 3
    defaults = document()["components"]["schemas"]["DeploymentRequest"]["properties"]
    assert defaults["replicas"]["maximum"] == Limits().deployment_replicas


GOOD_DEPLOYMENTS = [
    {**SERVE, "volume": "lab", "model": "models/digits"},
    {**SERVE, "job": "train-1", "replicas": 3, "timeout_seconds": 90},
    {**SERVE, "volume": "lab", "model": "m", "environment": {"MODEL_DTYPE": "float32"}},
]
BAD_DEPLOYMENTS = [
    {**SERVE, "volume": "lab"},  # neither model nor job
    {**SERVE, "volume": "lab", "model": "m", "job": "train-1"},  # both
    {**SERVE, "model": "m"},  # no volume
    {**SERVE, "volume": "lab", "model": "/abs"},
    {**SERVE, "volume": "lab", "model": "m", "replicas": 4},
    {**SERVE, "volume": "lab", "model": "m", "replicas": 0},
    {**SERVE, "volume": "lab", "model": "m", "replicas": True},
    {**SERVE, "volume": "lab", "model": "m", "timeout_seconds": 91},
    {**SERVE, "volume": "lab", "model": "m", "environment": {"HOME": "/"}},
    {**SERVE, "volume": "lab", "model": "m", "name": "Bad_Name"},
    {**SERVE, "volume": "lab", "model": "m", "gpus": 1},
]


@pytest.mark.parametrize("raw", GOOD_DEPLOYMENTS)
def test_what_the_deployment_schema_takes_the_hub_takes(raw):
    validator(document(DEPLOYMENT_LIMITS), "DeploymentRequest").validate(raw)
    deployments.plan_deployment("alice", raw, CATALOG, SOURCES, DEPLOYMENT_LIMITS)


@pytest.mark.parametrize("raw", BAD_DEPLOYMENTS)
def test_what_the_deployment_schema_refuses_the_hub_refuses(raw):
    assert not validator(document(DEPLOYMENT_LIMITS), "DeploymentRequest").is_valid(raw)
    with pytest.raises(OptionsError):
        deployments.plan_deployment("alice", raw, CATALOG, SOURCES, DEPLOYMENT_LIMITS)


def test_the_deployment_schemas_have_what_the_api_answers_with(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'atelier.sqlite'}")
    plan = deployments.plan_deployment("alice", GOOD_DEPLOYMENTS[0], CATALOG, SOURCES, Limits())
    made = store.create_deployment("alice", "digits", plan.to_json(), Limits())
    number = store.add_replica(made["id"], 1)
    store.set_replica(made["id"], number, phase="ready", endpoint="unix:/x")
    store.update_deployment(made["id"], "ready", status="running", serving=1)
    store.add_request_metrics({made["id"]: (3, 1, {100: 3})})
    version = store.new_version(made["id"], {**plan.to_json(), "model": "m2"}, "model changed")
    store.version_failed(made["id"], version, "replica 2 exited 1")
    handler = SimpleNamespace(context=SimpleNamespace(store=store))
    openapi = document()
    properties = openapi["components"]["schemas"]["Deployment"]["properties"]
    shown = DeploymentBase.public(handler, store.deployment("alice", "digits"), True)
    assert set(properties) == set(shown)
    validator(openapi, "Deployment").validate(shown)
    assert shown["versions"][-1]["failed"] and shown["metrics"]["latency_ms"]["p50"] > 0
    listed = [DeploymentBase.public(handler, d) for d in store.deployments("alice")]
    validator(openapi, "DeploymentList").validate({"deployments": listed})
    events = {"events": store.deployment_events(made["id"])}
    validator(openapi, "DeploymentEventList").validate(events)
    prefix, key = deployments.new_app_key(os.urandom(deployments.KEY_ENTROPY))
    made_key = store.create_app_key(made["id"], prefix, deployments.key_digest(key), Limits())
    validator(openapi, "AppKey").validate({**made_key, "key": key})
    validator(openapi, "AppKeyList").validate({"keys": store.app_keys(made["id"])})


GOOD_CHANGES = [{"replicas": 3}, {"job": "train-1"}, {"model": "m2"}, {"environment": {}}]
BAD_CHANGES = [{}, {"job": "train-1", "model": "m"}, {"replicas": 4}, {"timeout_seconds": 0}]
BAD_CHANGES += [{"name": "other"}, {"model": "../up"}]


@pytest.mark.parametrize(
    ("raw", "good"), [(r, True) for r in GOOD_CHANGES] + [(r, False) for r in BAD_CHANGES]
)
def test_what_the_change_schema_takes_the_hub_takes(raw, good):
    assert validator(document(DEPLOYMENT_LIMITS), "DeploymentChange").is_valid(raw) == good
    current = deployments.plan_deployment(
        "alice", GOOD_DEPLOYMENTS[0], CATALOG, SOURCES, DEPLOYMENT_LIMITS
    )
    if good:
        deployments.plan_change(current, raw, CATALOG, SOURCES, DEPLOYMENT_LIMITS)
    else:
        with pytest.raises(OptionsError):
            deployments.plan_change(current, raw, CATALOG, SOURCES, DEPLOYMENT_LIMITS)
