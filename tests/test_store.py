"""The store on SQLite and PostgreSQL: migrations match the models; catalog, instance records
and audit events behave the same on both."""

import os
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from atelier.hub.store.records import Base
from atelier.hub.store.store import CatalogError, Store
from atelier.spawner.core import Image, Limits, OptionsError, Spec
from atelier.spawner.devices import Allocator, Device, DevicesUnavailable

EVENT = {"source_ip": "10.0.0.1", "resource_type": "instance", "result": "success"}
TORCH = Image("pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64", "PyTorch")
BASE = Image("python_3.11-cpu-py_3.11-debian_12-x86_64")
A100_0, A100_1 = Device("gpu", "a100", 0), Device("gpu", "a100", 1)
ONE = {"nodes": 1, "processes_per_node": 1}  # a stored plan, as far as the store reads it


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'atelier.sqlite'}"
    url = os.environ.get("ATELIER_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set ATELIER_TEST_POSTGRES_URL (.ci/postgres starts one and prints it)")
    with create_engine(url).begin() as connection:  # a fresh schema for every test
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    return url


def test_migrations_build_exactly_the_models(url):
    store = Store(url)
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    Store(url)  # a second start migrates nothing


def test_an_image_an_admin_deleted_is_not_seeded_again(url):
    """The configured catalog fills the first start only: `atelier images delete` of a
    configured image must survive the next start and the next CLI command, which seed again."""
    store = Store(url)
    store.seed([TORCH, BASE], [Spec("cpu.2u8g")])
    store.delete_image(TORCH.name)
    store.seed([TORCH, BASE], [Spec("cpu.2u8g"), Spec("cpu.2u4g")])
    assert [i.name for i in store.images()] == [BASE.name]
    assert [s.name for s in store.specs()] == ["cpu.2u8g"]


def test_catalog_round_trip(url):
    store = Store(url)
    store.seed([TORCH, BASE], [Spec("cpu.2u8g")])
    store.seed([Image(TORCH.name, "renamed in atelier.yaml")], [])  # seeding never overwrites
    assert [i.title for i in store.images()] == [BASE.name, "PyTorch"]
    store.update_image(BASE.name, status="deprecated", successor=TORCH.name)
    assert store.images()[0].successor == TORCH.name
    with pytest.raises(CatalogError, match="successor: 'nope' is not another image"):
        store.update_image(BASE.name, successor="nope")
    store.update_image(TORCH.name, accelerator_types=("a100",))
    assert store.images()[1].accelerator_types == ("a100",)
    store.update_spec("cpu.2u8g", disabled=True)
    assert store.specs()[0].disabled is True
    store.delete_image(BASE.name)
    with pytest.raises(CatalogError, match="no image named"):
        store.delete_image(BASE.name)


def test_instance_records(url):
    store = Store(url)
    first = store.instance_created("alice", "lab")
    assert store.instance_created("alice", "lab") == first
    assert list(store.instance_records("alice")) == ["lab"] and store.instance_records("bob") == {}
    store.place_instance("bob", "gpu", "vision")
    assert store.all_instance_records() == {
        "alice": {"lab": (first, None, None)},
        "bob": {"gpu": store.instance_records("bob")["gpu"]},
    }
    assert store.all_instance_records()["bob"]["gpu"][1] == "vision"
    store.set_failure("alice", "lab", "volume missing")
    assert Store(url).failure("alice", "lab") == "volume missing"  # kept across restarts
    assert store.instance_records("alice")["lab"][2] == "volume missing"
    store.set_failure("alice", "lab", None)
    assert store.failure("alice", "lab") is None
    store.forget_instance("alice", "lab")
    assert store.instance_records("alice") == {}
    store.set_failure("alice", "lab", None)  # clearing defines nothing
    assert store.instance_records("alice") == {}


def test_audit_visibility_filters_pages_and_retention(url):
    store = Store(url)
    store.record(actor="alice", action="createNotebook", resource="alice/a", owner="alice", **EVENT)
    store.record(actor="admin", action="stopNotebook", resource="alice/a", owner="alice", **EVENT)
    store.record(actor="bob", action="createNotebook", resource="bob/b", owner="bob", **EVENT)

    total, events = store.audit(visible_to="alice")
    assert total == 2 and [e["actor"] for e in events] == ["admin", "alice"]  # newest first
    assert store.audit(visible_to="alice", actor="bob") == (0, [])
    assert store.audit(action="createNotebook")[0] == 2
    total, page = store.audit(limit=1, offset=1)
    assert total == 3 and page[0]["actor"] == "admin"
    assert store.audit(since=datetime.now(UTC) + timedelta(minutes=1)) == (0, [])
    assert events[0]["time"].endswith("+00:00")

    assert store.expire_audit(datetime.now(UTC) + timedelta(seconds=1)) == 3
    assert store.audit() == (0, [])


def test_a_refusal_quoting_nul_is_recorded_with_the_nul_shown(url):
    """PostgreSQL stores no NUL: a reason quoting a user's key "\\x00" once answered 500."""
    reason = "\x00: unknown field"
    store = Store(url)
    store.record(
        actor="a\x00", action="createNotebook", resource="a/x", owner="a", reason=reason, **EVENT
    )
    [event] = store.audit()[1]
    assert (event["actor"], event["reason"]) == ("a\\x00", "\\x00: unknown field")


def test_jobs_queue_oldest_first_within_the_owners_limit(url):
    store, limits = Store(url), Limits(jobs_per_user=2)
    first = store.create_job("ann", "a", {"nodes": 1, "processes_per_node": 2}, limits)
    store.create_job("ann", "b", {"nodes": 2, "processes_per_node": 2}, limits)
    store.create_job("bob", "a", ONE, limits)
    with pytest.raises(CatalogError) as taken:
        store.create_job("bob", "a", ONE, limits)
    assert taken.value.code == "exists"
    with pytest.raises(OptionsError) as full:
        store.create_job("ann", "c", ONE, limits)
    assert full.value.code == "quota_exceeded"
    assert [job["name"] for job in store.active_jobs()] == ["a", "b", "a"]
    assert first["world_size"] == 2 and first["status"] == "pending"
    store.update_job(first["id"], "completed", status="completed", ended=datetime.now(UTC))
    assert store.create_job("ann", "c", ONE, limits)["name"] == "c"  # a slot again
    assert [e["message"] for e in store.job_events(first["id"])] == ["queued", "completed"]
    assert store.jobs_ended_before(datetime.now(UTC) + timedelta(days=1)) == [first["id"]]


def test_device_holds_are_one_allocator_for_every_process(url):
    hub, service = Allocator([A100_0, A100_1], Store(url)), Allocator([A100_0, A100_1], Store(url))
    assert hub.acquire("instance:ann:lab", "gpu.1xa100.8u64g", "a100", 1) == [A100_0]
    assert service.acquire("job:j1", "gpu.1xa100.8u64g", "a100", 1) == [A100_1]
    with pytest.raises(DevicesUnavailable):
        hub.acquire("instance:bob:lab", "gpu.1xa100.8u64g", "a100", 1)
    Store(url).release_device_holds("instance:")  # the hub starts again
    assert service.available("job:j2", "gpu.1xa100.8u64g", "a100", 1) == [A100_0]


def test_no_replica_is_added_to_a_stopped_or_deleted_deployment(url):
    """A supervisor's step that read the deployment before its owner's delete stopped it
    starts nothing: the store refuses the replica."""
    store = Store(url)
    made = store.create_deployment("ann", "digits", {"replicas": 1}, Limits())
    assert store.add_replica(made["id"], 1) == 1
    store.update_deployment(made["id"], "its owner is deleted", stopped=True)
    assert store.add_replica(made["id"], 1) is None
    store.forget_user("ann")
    assert store.add_replica(made["id"], 1) is None
    assert store.replicas(made["id"], live=False) == []


def test_a_deleted_users_jobs_and_deployments_go_with_them(url):
    store = Store(url)
    for owner in ("ann", "bo"):
        store.create_job(owner, "train", {"nodes": 1, "processes_per_node": 1}, Limits())
        store.create_deployment(owner, "digits", {"replicas": 1}, Limits())
    store.forget_user("ann")
    assert (store.jobs("ann"), store.deployments("ann")) == ([], [])
    assert [j["owner"] for j in store.jobs()] == ["bo"]
    assert [d["owner"] for d in store.deployments()] == ["bo"]
