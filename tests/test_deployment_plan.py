"""A deployment's plan and its refusals, app keys, the rolling upgrade's state machine and the
latency histogram: all pure."""

import json
import os
import random
import re

import pytest

from atelier.spawner import core
from atelier.spawner.core import deployments
from atelier.spawner.core.deployments import DeploymentPlan, Sources
from atelier.spawner.core.rollout import Replica, Step, latency_bucket, latency_quantile, roll

TORCH = core.Image("pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64")
BASE = core.Image("python_3.11-cpu-py_3.11-debian_12-x86_64")
CUDA = core.Image("pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64")
OLD = core.Image(
    "python_3.10-cpu-py_3.10-debian_12-x86_64", status="deprecated", successor=BASE.name
)
OFF = core.Image("python_3.9-cpu-py_3.9-debian_11-x86_64", status="disabled")
SPECS = {
    name: core.Spec(name) for name in ("cpu.2u8g", "cpu.4u16g", "gpu.1xa100.8u64g", "cpu.8u32g")
}
SPECS["cpu.8u32g"] = core.Spec("cpu.8u32g", disabled=True)
CATALOG = core.Catalog(
    {i.name: i for i in (TORCH, BASE, CUDA, OLD, OFF)}, SPECS, {"a100": 4}, None, None
)
SOURCES = Sources(
    volumes={"lab", "scratch"},
    job_outputs={"fit": ("lab", "jobs/fit"), "tune": ("scratch", "runs/tune/out")},
)
LIMITS = core.Limits()
BODY = {"name": "line", "image": TORCH.name, "spec": "cpu.2u8g", "volume": "lab", "model": "m"}


def deploy(limits=LIMITS, sources=SOURCES, **fields) -> DeploymentPlan:
    body = {key: value for key, value in {**BODY, **fields}.items() if value is not None}
    return deployments.plan_deployment("ann", body, CATALOG, sources, limits)


def refusal(call, *args, **kwargs) -> core.OptionsError:
    with pytest.raises(core.OptionsError) as refused:
        call(*args, **kwargs)
    return refused.value


def change(current: DeploymentPlan, raw, limits=LIMITS):
    return deployments.plan_change(current, raw, CATALOG, SOURCES, limits)


# the plan ---------------------------------------------------------------------------------
def test_a_deployment_serves_a_model_directory_on_one_of_the_owners_volumes():
    plan = deploy(model="models/./bert/")
    assert (plan.owner, plan.name, plan.image, plan.spec) == (
        "ann",
        "line",
        TORCH,
        SPECS["cpu.2u8g"],
    )
    assert (plan.volume, plan.model) == ("lab", "models/bert")
    assert (plan.replicas, plan.timeout_seconds, plan.environment) == (1, 60, {})


def test_a_deployment_of_a_job_serves_that_jobs_output_on_its_volume():
    plan = deploy(volume=None, model=None, job="tune")
    assert (plan.volume, plan.model) == ("scratch", "runs/tune/out")


def test_a_job_decides_the_volume_whatever_volume_is_given():
    assert deploy(model=None, volume="lab", job="tune").volume == "scratch"


def test_replicas_timeout_and_environment_are_kept_as_given():
    plan = deploy(replicas=8, timeout_seconds=600, environment={"MODEL_DTYPE": "bf16"})
    assert (plan.replicas, plan.timeout_seconds) == (8, 600)
    assert plan.environment == {"MODEL_DTYPE": "bf16"}


def test_the_environment_given_is_copied_not_shared():
    environment = {"A": "1"}
    plan = deploy(environment=environment)
    environment["A"] = "2"
    assert plan.environment == {"A": "1"}


def test_the_lowest_and_highest_values_allowed_are_accepted():
    assert deploy(replicas=1, timeout_seconds=1).replicas == 1
    limits = core.Limits(deployment_replicas=3, deployment_timeout_seconds=90)
    plan = deploy(limits, replicas=3, timeout_seconds=90)
    assert (plan.replicas, plan.timeout_seconds) == (3, 90)


@pytest.mark.parametrize("name", ["a", "line-2", "0abc", "a" * 63])
def test_a_name_of_a_z_0_9_and_dashes_is_accepted(name):
    assert deploy(name=name).name == name


def test_the_model_server_gets_the_model_directory_where_the_backend_shows_the_volume():
    plan = deploy(model="models/bert", timeout_seconds=45)
    assert plan.server_argv("/opt/py/bin/python", "/work") == [
        "/opt/py/bin/python",
        "-m",
        "atelier.serving",
        "/work/models/bert",
        "--name",
        "line",
        "--drain-seconds=45",
    ]


def test_a_stored_version_is_planned_again_the_same():
    plan = deploy(replicas=3, timeout_seconds=120, environment={"A": "b"}, spec="cpu.4u16g")
    stored = plan.to_json()
    assert stored == {
        "image": TORCH.name,
        "spec": "cpu.4u16g",
        "volume": "lab",
        "model": "m",
        "replicas": 3,
        "timeout_seconds": 120,
        "environment": {"A": "b"},
    }
    again = json.loads(json.dumps(stored))  # what the store gives back
    assert deployments.plan_from_json("ann", "line", again, CATALOG) == plan


def test_a_stored_version_of_a_job_keeps_its_output_not_the_job():
    plan = deploy(volume=None, model=None, job="fit")
    assert "job" not in plan.to_json()
    assert deployments.plan_from_json("ann", "line", plan.to_json(), CATALOG) == plan


def test_a_stored_version_on_an_image_deprecated_since_is_planned_again():
    plan = DeploymentPlan("ann", "line", OLD, SPECS["cpu.2u8g"], "lab", "m")
    assert deployments.plan_from_json("ann", "line", plan.to_json(), CATALOG) == plan


def test_a_stored_version_on_an_image_disabled_since_is_refused():
    plan = DeploymentPlan("ann", "line", OFF, SPECS["cpu.2u8g"], "lab", "m")
    error = refusal(deployments.plan_from_json, "ann", "line", plan.to_json(), CATALOG)
    assert error.field == "image" and "disabled" in error.message


# refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [None, [], "line", 3, ["name", "line"]])
def test_a_body_that_is_not_an_object_is_refused(body):
    error = refusal(deployments.plan_deployment, "ann", body, CATALOG, SOURCES, LIMITS)
    assert (error.field, error.code) == ("body", "invalid")


def test_an_unknown_field_is_named_with_the_known_ones():
    error = refusal(deploy, zeta=1, command=["serve"])
    assert error.field == "command"  # the first unknown one, in order
    assert "timeout_seconds" in error.message and "environment" in error.message


def test_an_unknown_field_is_refused_before_a_bad_name():
    assert refusal(deploy, name="Bad Name", nodes=2).field == "nodes"


@pytest.mark.parametrize(
    "name", [None, "", "Line", "-line", "li_ne", "li ne", "a" * 64, 7, ["line"], "línea"]
)
def test_a_bad_name_is_refused(name):
    body = {**BODY, "name": name}
    error = refusal(deployments.plan_deployment, "ann", body, CATALOG, SOURCES, LIMITS)
    assert error.field == "name"


@pytest.mark.parametrize("key", ["image", "spec"])
@pytest.mark.parametrize("value", [None, 3, ["x"]])
def test_a_missing_image_or_spec_is_refused(key, value):
    body = {**BODY, key: value}
    if value is None:
        del body[key]
    error = refusal(deployments.plan_deployment, "ann", body, CATALOG, SOURCES, LIMITS)
    assert error.field == key and "required" in error.message


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"image": "tensorflow_9-cpu-py_3.11-debian_12-x86_64"}, "image", "no image"),
        ({"image": OFF.name}, "image", "disabled"),
        ({"image": OLD.name}, "image", "deprecated"),  # a new deployment never starts on it
        ({"spec": "cpu.1u1g"}, "spec", "no spec"),
        ({"spec": "cpu.8u32g"}, "spec", "no spec"),  # disabled
        ({"spec": "gpu.1xa100.8u64g"}, "spec", "cannot run"),  # a CPU image on a GPU spec
        ({"image": CUDA.name, "spec": "gpu.1xa100.8u64g"}, "spec", "no accelerator"),
    ],
)
def test_an_image_or_spec_the_catalog_cannot_give_is_refused(fields, field, words):
    error = refusal(deploy, **fields)
    assert error.field == field and words in error.message


def test_a_model_and_a_job_together_are_refused():
    error = refusal(deploy, job="fit")
    assert error.field == "model" and "either" in error.message


def test_neither_a_model_nor_a_job_is_refused():
    assert refusal(deploy, model=None).field == "model"
    assert refusal(deploy, model=None, volume=None).field == "model"


@pytest.mark.parametrize("job", ["other", "", None, 3, ["fit"], "FIT"])
def test_a_job_that_is_not_a_completed_training_job_of_the_owners_is_refused(job):
    body = {key: value for key, value in BODY.items() if key not in ("model", "volume")}
    body["job"] = job
    error = refusal(deployments.plan_deployment, "ann", body, CATALOG, SOURCES, LIMITS)
    assert error.field == "job" and repr(job) in error.message


@pytest.mark.parametrize("volume", ["other", None, "", 3, ["lab"]])
def test_a_volume_that_is_not_the_owners_is_refused(volume):
    error = refusal(deploy, volume=volume)
    assert error.field == "volume"
    if volume is not None:
        assert repr(volume) in error.message


def test_no_volume_at_all_refuses_a_model():
    assert refusal(deploy, sources=Sources(set(), {})).field == "volume"


@pytest.mark.parametrize(
    "model", ["/etc", "/", "..", "../other", "a/../../b", "a/..", "", ".", "./", 3, None, "a\0b"]
)
def test_a_model_outside_the_volume_or_not_a_path_is_refused(model):
    body = {**BODY, "model": model}
    error = refusal(deployments.plan_deployment, "ann", body, CATALOG, SOURCES, LIMITS)
    assert error.field == "model"


def test_a_model_path_too_long_is_refused():
    assert refusal(deploy, model="m" * 1025).field == "model"
    assert deploy(model="m" * 1024).model == "m" * 1024


@pytest.mark.parametrize("replicas", [0, -1, 9, True, False, "2", 2.0, None])
def test_a_replica_count_outside_one_to_the_limit_is_refused(replicas):
    body = {**BODY, "replicas": replicas}
    error = refusal(deployments.plan_deployment, "ann", body, CATALOG, SOURCES, LIMITS)
    assert error.field == "replicas" and "from 1 to 8" in error.message


def test_the_replica_limit_is_the_configured_one():
    limits = core.Limits(deployment_replicas=2)
    error = refusal(deploy, limits, replicas=3)
    assert error.field == "replicas" and "to 2" in error.message
    assert deploy(limits, replicas=2).replicas == 2


@pytest.mark.parametrize("timeout", [0, -5, 601, True, "60", 60.5, None])
def test_a_timeout_outside_one_to_the_limit_is_refused(timeout):
    body = {**BODY, "timeout_seconds": timeout}
    error = refusal(deployments.plan_deployment, "ann", body, CATALOG, SOURCES, LIMITS)
    assert error.field == "timeout_seconds" and "from 1 to 600" in error.message


def test_the_timeout_limit_is_the_configured_one():
    limits = core.Limits(deployment_timeout_seconds=30)
    error = refusal(deploy, limits, timeout_seconds=31)
    assert error.field == "timeout_seconds" and "to 30" in error.message


@pytest.mark.parametrize(
    "environment",
    [
        {"ATELIER_LISTEN_FD": "3"},  # the socket the model server inherits
        {"ATELIER_ANYTHING": "x"},
        {"PATH": "/tmp"},
        {"HOME": "/tmp"},
        {"USER": "root"},
        {"JUPYTERHUB_API_TOKEN": "x"},
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"RANK": "0"},
        {"1A": "x"},
        {"A-B": "x"},
        {"": "x"},
        {"A": 1},
        {"A": None},
        {"A": "x\0y"},
        {"A": "x" * 4097},
        {f"V{i}": "x" for i in range(65)},
        ["A=1"],
        "A=1",
    ],
)
def test_an_environment_that_sets_what_atelier_sets_or_is_malformed_is_refused(environment):
    assert refusal(deploy, environment=environment).field == "environment"


def test_an_environment_of_the_most_entries_and_longest_values_is_accepted():
    environment = {f"V{i}": "x" * 4096 for i in range(64)}
    assert deploy(environment=environment).environment == environment


def test_a_null_environment_is_an_empty_one():
    assert deploy(environment=None).environment == {}
    body = {**BODY, "environment": None}
    assert deployments.plan_deployment("ann", body, CATALOG, SOURCES, LIMITS).environment == {}


def test_the_deployments_per_user_limit_counts_every_deployment():
    limits = core.Limits(deployments_per_user=4)
    deployments.check_deployment_count(0, limits)
    deployments.check_deployment_count(3, limits)
    for count in (4, 5):
        error = refusal(deployments.check_deployment_count, count, limits)
        assert (error.field, error.code) == ("name", "quota_exceeded")
        assert "at most 4 deployments" in error.message
        assert "limits.deployments_per_user" in error.message


def test_the_app_keys_per_deployment_limit():
    limits = core.Limits(app_keys_per_deployment=2)
    deployments.check_key_count(1, limits)
    error = refusal(deployments.check_key_count, 2, limits)
    assert (error.field, error.code) == ("key", "quota_exceeded")
    assert "at most 2 app keys" in error.message
    assert "limits.app_keys_per_deployment" in error.message


def test_no_deployment_is_allowed_when_the_limit_is_zero():
    error = refusal(deployments.check_deployment_count, 0, core.Limits(deployments_per_user=0))
    assert error.code == "quota_exceeded"
    error = refusal(deployments.check_key_count, 0, core.Limits(app_keys_per_deployment=0))
    assert error.code == "quota_exceeded"


def test_model_source_reads_a_job_or_a_model_on_a_volume():
    assert deployments.model_source({"job": "fit"}, SOURCES) == ("lab", "jobs/fit")
    assert deployments.model_source({"volume": "scratch", "model": "a//b"}, SOURCES) == (
        "scratch",
        "a/b",
    )
    assert refusal(deployments.model_source, {}, SOURCES).field == "model"
    assert refusal(deployments.model_source, {"job": None}, SOURCES).field == "job"


# changes ----------------------------------------------------------------------------------
CURRENT = deploy(replicas=2, environment={"A": "1"})


@pytest.mark.parametrize(
    "raw",
    [
        {"replicas": 5},
        {"timeout_seconds": 300},
        {"replicas": 1, "timeout_seconds": 1},
        {"model": "m", "volume": "lab", "replicas": 3},  # the same model is the same version
        {"image": TORCH.name, "spec": "cpu.2u8g", "environment": {"A": "1"}},
        {"model": "./m/"},  # the same directory, spelled otherwise
    ],
)
def test_a_change_of_the_replica_count_or_the_timeout_alone_is_no_new_version(raw):
    plan, new_version = change(CURRENT, raw)
    assert new_version is False
    for key, value in raw.items():
        if key in ("replicas", "timeout_seconds"):
            assert getattr(plan, key) == value


@pytest.mark.parametrize(
    "raw",
    [
        {"model": "other"},
        {"volume": "scratch"},
        {"image": BASE.name},
        {"spec": "cpu.4u16g"},
        {"environment": {"A": "2"}},
        {"environment": {}},
        {"environment": None},
        {"job": "fit"},  # the same volume, another directory
        {"replicas": 4, "model": "other"},
    ],
)
def test_a_change_of_the_model_image_spec_or_environment_is_a_new_version(raw):
    plan, new_version = change(CURRENT, raw)
    assert new_version is True
    assert (plan.owner, plan.name) == ("ann", "line")


def test_a_change_keeps_what_it_does_not_name():
    plan, _ = change(CURRENT, {"spec": "cpu.4u16g"})
    assert plan == DeploymentPlan(
        "ann", "line", TORCH, SPECS["cpu.4u16g"], "lab", "m", 2, 60, {"A": "1"}
    )


def test_a_change_to_another_volume_keeps_the_model_directory():
    plan, _ = change(CURRENT, {"volume": "scratch"})
    assert (plan.volume, plan.model) == ("scratch", "m")


def test_giving_a_job_replaces_the_model_and_its_volume():
    plan, new_version = change(CURRENT, {"job": "tune"})
    assert (plan.volume, plan.model, new_version) == ("scratch", "runs/tune/out", True)
    assert (plan.replicas, plan.environment) == (2, {"A": "1"})


def test_a_model_after_a_job_serves_from_the_volume_the_job_used():
    current, _ = change(CURRENT, {"job": "tune"})
    plan, new_version = change(current, {"model": "other"})
    assert (plan.volume, plan.model, new_version) == ("scratch", "other", True)


def test_a_job_and_a_model_in_one_change_are_refused_as_in_a_new_deployment():
    error = refusal(change, CURRENT, {"job": "fit", "model": "other"})
    assert error.field == "model"


def test_a_change_to_a_job_the_owner_has_not_is_refused():
    error = refusal(change, CURRENT, {"job": "nope"})
    assert error.field == "job" and "'nope'" in error.message


@pytest.mark.parametrize("raw", [{}, None, [], "replicas", [["replicas", 2]], 2])
def test_an_empty_or_non_object_change_is_refused(raw):
    error = refusal(change, CURRENT, raw)
    assert error.field == "body" and "replicas" in error.message


@pytest.mark.parametrize("key", ["name", "owner", "argv", "nodes", "version"])
def test_a_field_that_cannot_change_is_named(key):
    error = refusal(change, CURRENT, {key: "x", "replicas": 2})
    assert error.field == key and "cannot be changed" in error.message
    assert "timeout_seconds" in error.message


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"replicas": 0}, "replicas"),
        ({"replicas": 9}, "replicas"),
        ({"replicas": True}, "replicas"),
        ({"replicas": "3"}, "replicas"),
        ({"timeout_seconds": 601}, "timeout_seconds"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"image": None}, "image"),
        ({"image": "nope_1-cpu-py_3.11-debian_12-x86_64"}, "image"),
        ({"image": OLD.name}, "image"),  # never moved onto a deprecated image
        ({"image": CUDA.name, "spec": "gpu.1xa100.8u64g"}, "spec"),
        ({"spec": "gpu.1xa100.8u64g"}, "spec"),
        ({"spec": None}, "spec"),
        ({"volume": "other"}, "volume"),
        ({"model": "/etc"}, "model"),
        ({"model": "../x"}, "model"),
        ({"model": None}, "model"),
        ({"environment": {"ATELIER_LISTEN_FD": "9"}}, "environment"),
        ({"environment": {"PATH": "/"}}, "environment"),
    ],
)
def test_a_bad_change_is_refused_naming_the_field(raw, field):
    assert refusal(change, CURRENT, raw).field == field


def test_a_changes_limits_are_the_configured_ones():
    limits = core.Limits(deployment_replicas=3)
    assert change(CURRENT, {"replicas": 3}, limits)[0].replicas == 3
    assert "to 3" in refusal(change, CURRENT, {"replicas": 4}, limits).message


def test_a_limit_lowered_below_what_a_deployment_has_refuses_its_next_change():
    limits = core.Limits(deployment_timeout_seconds=10)  # CURRENT's timeout is 60
    error = refusal(change, CURRENT, {"replicas": 3}, limits)
    assert error.field == "timeout_seconds" and "to 10" in error.message
    assert change(CURRENT, {"replicas": 3, "timeout_seconds": 10}, limits)[0].replicas == 3


def test_a_deployment_on_an_image_deprecated_since_can_still_be_scaled():
    """A deprecated image runs what already runs on it (as an instance does): scaling it or
    changing its timeout must not be refused because a new deployment could not use it."""
    current = DeploymentPlan("ann", "line", OLD, SPECS["cpu.2u8g"], "lab", "m", 2)
    plan, new_version = change(current, {"replicas": 4})
    assert (plan.image, plan.replicas, new_version) == (OLD, 4, False)
    plan, new_version = change(current, {"image": BASE.name})
    assert (plan.image, new_version) == (BASE, True)


def test_a_change_does_not_touch_the_current_plan():
    before = CURRENT.to_json()
    change(CURRENT, {"job": "tune", "environment": {"B": "2"}})
    assert CURRENT.to_json() == before


# app keys ---------------------------------------------------------------------------------
def test_an_app_key_starts_with_its_prefix_and_is_an_app_key():
    prefix, key = deployments.new_app_key(os.urandom(deployments.KEY_ENTROPY))
    assert re.fullmatch(r"ak_[0-9a-f]{12}", prefix)
    assert deployments.KEY_PREFIX.fullmatch(prefix)
    assert key.startswith(prefix + ".")
    assert len(key) == len(prefix) + 1 + 43
    assert deployments.key_prefix(f"Bearer {key}") == (prefix, key)


def test_two_app_keys_differ_in_prefix_and_secret():
    keys = [deployments.new_app_key(os.urandom(deployments.KEY_ENTROPY)) for _ in range(50)]
    assert len({prefix for prefix, _ in keys}) == 50
    assert len({key.split(".", 1)[1] for _, key in keys}) == 50


def test_the_store_keeps_a_digest_never_the_key():
    _, key = deployments.new_app_key(os.urandom(deployments.KEY_ENTROPY))
    digest = deployments.key_digest(key)
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and key not in digest
    assert deployments.key_digest(key) == digest


def test_a_key_matches_only_its_own_digest():
    (_, key), (_, other) = (
        deployments.new_app_key(os.urandom(deployments.KEY_ENTROPY)),
        deployments.new_app_key(os.urandom(deployments.KEY_ENTROPY)),
    )
    digest = deployments.key_digest(key)
    assert deployments.key_matches(key, digest)
    assert not deployments.key_matches(other, digest)
    assert not deployments.key_matches(key[:-1], digest)
    assert not deployments.key_matches(key + "x", digest)
    assert not deployments.key_matches(key.upper(), digest)
    assert not deployments.key_matches(key, digest.upper())
    assert not deployments.key_matches(key, "")


KEY = "ak_0123456789ab." + "A" * 20 + "-_" + "z9" * 10 + "q"  # 43 characters of secret


def test_a_bearer_header_of_an_app_keys_shape_gives_its_prefix():
    assert len(KEY.split(".")[1]) == 43
    assert deployments.key_prefix(f"Bearer {KEY}") == ("ak_0123456789ab", KEY)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        KEY,  # no scheme
        f"Basic {KEY}",
        f"Token {KEY}",
        f"Bearer{KEY}",
        f"Bearer {KEY} extra",
        f"Bearer {KEY}.",
        f"Bearer {KEY}A",  # 44 characters of secret
        f"Bearer {KEY[:-1]}",  # 42
        f"Bearer {KEY.split('.')[0]}",  # the prefix alone
        f"Bearer {KEY.split('.')[0]}.",
        f"Bearer {KEY.replace('.', '_')}",
        f"Bearer {KEY.replace('ak_', 'ek_')}",
        f"Bearer {KEY.replace('0123456789ab', '0123456789AB')}",  # the prefix is lower hex
        f"Bearer {KEY.replace('0123456789ab', '0123456789abc')}",
        f"Bearer {KEY.replace('0123456789ab', '0123456789a')}",
        f"Bearer {KEY.replace('0123456789ab', 'ghijklmnopqr')}",
        f"Bearer {KEY[:-1]}=",  # base64's padding is no part of it
        f"Bearer {KEY[:-1]}+",
        f"Bearer {KEY[:-1]}/",
        f"Bearer {KEY}\nX-Injected: 1",
        f"Bearer {KEY[:20]} {KEY[20:]}",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.sig",  # a JWT, not an app key
    ],
)
def test_anything_but_a_bearer_app_key_gives_no_prefix(header):
    assert deployments.key_prefix(header) is None


# the rolling upgrade ----------------------------------------------------------------------
def r(number, version, phase="ready", since=0.0) -> Replica:
    return Replica(number, version, phase, since)


def step(replicas=(), target=2, serving=1, wanted=2, failures=(), now=100.0) -> Step:
    return roll(
        target=target,
        serving=serving,
        wanted=wanted,
        replicas=list(replicas),
        failures=list(failures),
        now=now,
        ready_seconds=60,
        drain_seconds=30,
    )


def test_a_first_deploy_starts_every_replica_asked_for():
    assert step([], target=1, serving=None, wanted=3) == Step(None, "deploying", start=3)


def test_a_first_deploy_is_deploying_until_every_replica_is_ready():
    replicas = [r(1, 1), r(2, 1, "starting", 90), r(3, 1)]
    assert step(replicas, target=1, serving=None, wanted=3) == Step(None, "deploying")


def test_a_first_deploy_serves_and_runs_once_every_replica_is_ready():
    replicas = [r(1, 1), r(2, 1), r(3, 1)]
    assert step(replicas, target=1, serving=None, wanted=3) == Step(1, "running")


def test_a_running_deployment_does_nothing():
    replicas = [r(1, 1), r(2, 1)]
    assert step(replicas, target=1, serving=1, wanted=2) == Step(1, "running")


def test_an_upgrade_starts_every_new_replica_while_the_old_ones_serve():
    assert step([r(1, 1), r(2, 1)]) == Step(1, "upgrading", start=2)


def test_an_upgrade_keeps_the_old_version_serving_until_every_new_replica_is_ready():
    old = [r(1, 1), r(2, 1)]
    assert step([*old, r(3, 2, "starting", 90), r(4, 2, "starting", 90)]) == Step(1, "upgrading")
    assert step([*old, r(3, 2), r(4, 2, "starting", 90)]) == Step(1, "upgrading")


def test_the_traffic_moves_at_once_when_every_new_replica_is_ready_and_the_old_ones_drain():
    assert step([r(1, 1), r(2, 1), r(3, 2), r(4, 2)]) == Step(2, "running", drain=(1, 2))


def test_when_the_traffic_moves_old_replicas_still_starting_are_stopped():
    replicas = [r(1, 1), r(5, 1, "starting", 90), r(3, 2), r(4, 2)]
    assert step(replicas) == Step(2, "running", drain=(1,), stop=(5,))


def test_when_the_traffic_moves_replicas_of_every_older_version_go():
    replicas = [r(1, 1), r(2, 7, "starting", 90), r(3, 0), r(4, 2), r(5, 2)]
    assert step(replicas) == Step(2, "running", drain=(1, 3), stop=(2,))


def test_a_draining_replica_is_stopped_only_after_drain_seconds():
    replicas = [r(1, 1, "draining", 80), r(2, 2), r(3, 2)]
    assert step(replicas, serving=2, now=109.9) == Step(2, "running")
    assert step(replicas, serving=2, now=110) == Step(2, "running", stop=(1,))
    assert step(replicas, serving=2, now=500) == Step(2, "running", stop=(1,))


def test_a_draining_replica_is_never_counted_as_serving():
    """A target replica draining (a scale-down's) leaves a gap that a new one fills."""
    replicas = [r(1, 2, "draining", 99), r(2, 2)]
    assert step(replicas, serving=2) == Step(2, "upgrading", start=1)


def test_a_failure_of_the_new_version_fails_it_and_the_old_one_goes_on_serving():
    replicas = [r(1, 1), r(2, 1), r(3, 2), r(4, 2, "starting", 90)]
    got = step(replicas, failures=[(2, "replica 5 exited 1")])
    assert got == Step(1, "running", stop=(3, 4), failed="replica 5 exited 1")


def test_the_first_failure_reported_is_the_reason_given():
    got = step([r(1, 1)], failures=[(1, "old"), (2, "first"), (2, "second")])
    assert got.failed == "first"


def test_a_failure_of_a_first_deploy_fails_the_deployment():
    replicas = [r(1, 1), r(2, 1, "starting", 90)]
    got = step(replicas, target=1, serving=None, failures=[(1, "replica 3 exited 137")])
    assert got == Step(None, "failed", stop=(1, 2), failed="replica 3 exited 137")


def test_a_failed_version_still_stops_what_has_drained():
    replicas = [r(1, 0, "draining", 0), r(2, 0, "draining", 99), r(3, 1), r(4, 2)]
    got = step(replicas, failures=[(2, "boom")])
    assert (got.serving, got.status, got.stop, got.drain) == (1, "running", (4, 1), ())


def test_a_new_replica_not_ready_within_ready_seconds_fails_the_version():
    replicas = [r(1, 1), r(2, 2), r(3, 2, "starting", 39)]
    got = step(replicas, now=100)
    assert got == Step(1, "running", stop=(2, 3), failed="replica 3 was not ready within 60 s")


def test_a_new_replica_ready_seconds_after_it_started_is_still_in_time():
    replicas = [r(1, 1), r(2, 2), r(3, 2, "starting", 40)]
    assert step(replicas, now=100) == Step(1, "upgrading")


def test_a_first_deploy_not_ready_in_time_fails():
    got = step([r(1, 1, "starting", 0)], target=1, serving=None, wanted=1, now=61)
    assert got == Step(None, "failed", stop=(1,), failed="replica 1 was not ready within 60 s")


def test_a_reported_failure_is_the_reason_before_a_timeout():
    got = step([r(3, 2, "starting", 0)], failures=[(2, "exited 2")], now=100)
    assert got.failed == "exited 2"


def test_a_failure_of_the_serving_version_gets_a_replacement():
    replicas = [r(1, 1)]  # replica 2 ended
    got = step(replicas, target=1, serving=1, failures=[(1, "replica 2 exited 1")])
    assert got == Step(1, "upgrading", start=1)
    assert got.failed is None


def test_a_replacement_becoming_ready_brings_the_deployment_back_to_running():
    replicas = [r(1, 1), r(3, 1)]
    assert step(replicas, target=1, serving=1) == Step(1, "running")


def test_every_serving_replica_ending_still_gets_replacements_not_a_failure():
    failures = [(1, "a"), (1, "b")]
    assert step([], target=1, serving=1, failures=failures) == Step(1, "upgrading", start=2)


def test_a_failure_of_another_version_is_ignored_for_the_target():
    replicas = [r(1, 1), r(3, 2), r(4, 2, "starting", 90)]
    assert step(replicas, failures=[(1, "replica 2 exited 1"), (0, "x")]) == Step(1, "upgrading")


def test_an_old_replica_ending_during_an_upgrade_is_not_replaced_by_an_old_one():
    """The new version's replicas take its place: an upgrade only ever starts the target."""
    got = step([r(3, 2), r(4, 2, "starting", 90)], failures=[(1, "replica 1 exited 1")])
    assert got == Step(1, "upgrading")


def test_the_new_version_serving_does_not_care_about_old_failures_or_old_timeouts():
    replicas = [r(1, 1, "starting", 0), r(3, 2), r(4, 2)]
    assert step(replicas, failures=[(1, "x")], now=1000) == Step(2, "running", stop=(1,))


def test_scaling_up_starts_more_and_is_upgrading_until_they_are_ready():
    assert step([r(1, 1), r(2, 1)], target=1, serving=1, wanted=4) == Step(1, "upgrading", start=2)
    replicas = [r(1, 1), r(2, 1), r(3, 1, "starting", 90), r(4, 1, "starting", 90)]
    assert step(replicas, target=1, serving=1, wanted=4) == Step(1, "upgrading")
    replicas = [r(1, 1), r(2, 1), r(3, 1), r(4, 1)]
    assert step(replicas, target=1, serving=1, wanted=4) == Step(1, "running")


def test_scaling_down_drains_the_newest_ready_replicas_first():
    replicas = [r(2, 1), r(4, 1), r(1, 1), r(3, 1)]
    assert step(replicas, target=1, serving=1, wanted=1) == Step(1, "upgrading", drain=(4, 3, 2))


def test_scaling_down_stops_starting_replicas_before_draining_ready_ones():
    replicas = [r(1, 1), r(2, 1, "starting", 90), r(3, 1), r(4, 1, "starting", 95)]
    assert step(replicas, target=1, serving=1, wanted=2) == Step(1, "upgrading", stop=(4, 2))
    got = step(replicas, target=1, serving=1, wanted=1)
    assert got == Step(1, "upgrading", drain=(3,), stop=(4, 2))


def test_after_a_scale_down_has_drained_it_runs_again():
    replicas = [r(1, 1), r(2, 1, "draining", 99), r(3, 1, "draining", 99)]
    assert step(replicas, target=1, serving=1, wanted=1) == Step(1, "running")


def test_scaling_down_during_an_upgrade_moves_the_traffic_once_enough_are_ready():
    replicas = [r(1, 1), r(2, 1), r(3, 2), r(4, 2, "starting", 90), r(5, 2, "starting", 90)]
    got = step(replicas, wanted=1)
    assert got == Step(2, "upgrading", drain=(1, 2), stop=(5, 4))


def test_scaling_down_a_first_deploy_keeps_what_is_ready():
    replicas = [r(1, 1, "starting", 90), r(2, 1), r(3, 1)]
    got = step(replicas, target=1, serving=None, wanted=2)
    assert got == Step(1, "upgrading", stop=(1,))


def test_stopping_drains_what_serves_and_stops_what_starts():
    replicas = [r(1, 1), r(2, 1, "starting", 90), r(3, 2), r(4, 2, "starting", 90)]
    got = step(replicas, wanted=0)
    assert (got.serving, got.status, got.start, got.failed) == (None, "stopped", 0, None)
    assert sorted(got.drain) == [1, 3] and sorted(got.stop) == [2, 4]


def test_a_stopped_deployment_stops_its_drained_replicas_only_after_drain_seconds():
    replicas = [r(1, 1, "draining", 90), r(2, 1, "draining", 60)]
    assert step(replicas, target=1, wanted=0, now=100) == Step(None, "stopped", stop=(2,))
    assert step([], target=1, wanted=0) == Step(None, "stopped")


def test_a_stopped_deployment_ignores_failures_and_timeouts():
    replicas = [r(1, 2, "starting", 0)]
    got = step(replicas, wanted=0, failures=[(2, "boom")], now=1000)
    assert got == Step(None, "stopped", stop=(1,))


def test_a_deployment_started_again_deploys_its_target():
    replicas = [r(1, 1, "draining", 99)]
    assert step(replicas, target=1, serving=None, wanted=2) == Step(None, "deploying", start=2)


def test_each_replica_is_acted_on_at_most_once_whatever_the_state():
    """Attack: no mix of versions, phases, times and failures drains and stops one replica
    together, starts a negative count, or asks for a replica that does not exist."""
    rng = random.Random(7)
    for _ in range(3000):
        replicas = [
            r(
                n,
                rng.randrange(3),
                rng.choice(("starting", "ready", "draining")),
                rng.uniform(0, 100),
            )
            for n in rng.sample(range(1, 30), rng.randrange(8))
        ]
        target = rng.randrange(3)
        serving = rng.choice([None, *range(3)])
        wanted = rng.randrange(5)
        failures = [(rng.randrange(3), "x") for _ in range(rng.randrange(2))]
        got = step(replicas, target, serving, wanted, failures, now=100)
        numbers = {replica.number for replica in replicas}
        acted = [*got.drain, *got.stop]
        assert len(acted) == len(set(acted)) and set(acted) <= numbers
        assert got.start >= 0 and got.status in deployments.DEPLOYMENT_STATUSES
        draining = {x.number for x in replicas if x.phase == "draining"}
        assert not draining & set(got.drain)
        if got.failed:
            assert got.serving == serving != target and got.start == 0 and not got.drain
        elif wanted:
            assert got.serving in (serving, target)
            live = [x for x in replicas if x.version == target and x.phase != "draining"]
            late = [x for x in live if x.phase == "starting" and 100 - x.since > 60]
            live = [x for x in live if x not in late]  # replaced: the target serves already
            assert got.start == max(0, wanted - len(live))
            assert {x.number for x in late} <= set(got.stop)
        old = [x for x in replicas if x.version != target and x.phase != "draining"]
        if got.serving == target and serving != target and wanted:  # the traffic moved
            assert {x.number for x in old} <= set(acted)
        if wanted and got.serving not in (target, None):  # the old version keeps what serves
            assert not {x.number for x in old if x.phase == "ready"} & set(acted)
        if got.status == "running" and not got.failed:  # what was asked serves, no more
            kept = [x for x in replicas if x.version == target and x.number not in acted]
            kept = [x for x in kept if x.phase != "draining"]
            assert got.serving == target and got.start == 0
            assert len(kept) == wanted and all(x.phase == "ready" for x in kept)


# latency ----------------------------------------------------------------------------------
def histogram(latencies) -> dict[int, int]:
    counts: dict[int, int] = {}
    for seconds in latencies:
        bucket = latency_bucket(seconds)
        counts[bucket] = counts.get(bucket, 0) + 1
    return counts


def close(got, want_ms):
    return got is not None and abs(got - want_ms) <= 0.025 * want_ms


def test_the_quantiles_of_a_mix_of_fast_and_slow_requests():
    latencies = [0.001] * 600 + [0.010] * 400
    random.Random(1).shuffle(latencies)
    counted = histogram(latencies)
    assert close(latency_quantile(counted, 0.5), 1.0)
    assert close(latency_quantile(counted, 0.99), 10.0)
    assert close(latency_quantile(counted, 0.6), 1.0)  # the 600th is still fast
    assert close(latency_quantile(counted, 0.61), 10.0)


@pytest.mark.parametrize("seconds", [0.0000015, 0.0001, 0.00123, 0.05, 0.7, 3.3, 59.9, 600])
def test_a_single_latency_is_reported_within_two_and_a_half_percent(seconds):
    counted = histogram([seconds] * 10)
    for q in (0.01, 0.5, 0.99):
        assert close(latency_quantile(counted, q), seconds * 1000)


def test_quantiles_of_a_spread_of_latencies_are_near_the_exact_ones():
    rng = random.Random(3)
    latencies = sorted(rng.lognormvariate(-4, 1) for _ in range(5000))
    counted = histogram(latencies)
    for q in (0.1, 0.5, 0.9, 0.99):
        exact = latencies[int(q * len(latencies)) - 1] * 1000
        assert abs(latency_quantile(counted, q) - exact) <= 0.06 * exact  # a bucket, and a bit


def test_no_requests_have_no_latency():
    assert latency_quantile({}, 0.5) is None
    assert latency_quantile({12: 0, 40: 0}, 0.99) is None


def test_an_empty_bucket_is_never_the_answer():
    counted = {latency_bucket(0.001): 0, latency_bucket(0.2): 5}
    assert close(latency_quantile(counted, 0.01), 200.0)


def test_the_99th_percentile_is_never_below_the_median():
    rng = random.Random(5)
    for _ in range(200):
        counted = histogram(rng.expovariate(50) for _ in range(rng.randrange(1, 60)))
        assert latency_quantile(counted, 0.99) >= latency_quantile(counted, 0.5)


def test_a_quantile_grows_with_q():
    counted = histogram([0.001 * k for k in range(1, 200)])
    values = [latency_quantile(counted, q / 100) for q in range(1, 100)]
    assert values == sorted(values)


def test_latency_buckets_grow_with_the_latency():
    latencies = sorted(random.Random(2).uniform(0, 10) for _ in range(2000))
    latencies = [0.0, 1e-9, 1e-6, *latencies, 1e3, 1e5]
    buckets = [latency_bucket(seconds) for seconds in latencies]
    assert buckets == sorted(buckets)
    assert latency_bucket(1e-3) < latency_bucket(1.1e-3) < latency_bucket(2e-3)


def test_a_latency_under_a_microsecond_or_negative_is_bucket_zero():
    assert latency_bucket(0) == latency_bucket(-1) == latency_bucket(1e-7) == 0


def test_buckets_are_read_in_the_order_of_their_latency_not_as_given():
    slow, fast = latency_bucket(0.0002), latency_bucket(0.0000016)
    counted = {slow: 10, fast: 90}  # as the store may give them back
    assert close(latency_quantile(counted, 0.5), 0.0016)
    assert close(latency_quantile(counted, 0.95), 0.2)


def test_a_serving_versions_replica_not_ready_in_time_is_replaced():
    late = step([r(1, 1, "ready", 0), r(2, 1, "starting", 0)], target=1, serving=1, now=1000)
    assert late.stop == (2,) and late.start == 1 and late.failed is None


def test_a_failed_target_with_nothing_serving_stops_every_other_version_too():
    got = step([r(1, 1, "starting", 0)], target=2, serving=None, failures=[(2, "boom")])
    assert got == Step(None, "failed", stop=(1,), failed="boom")
