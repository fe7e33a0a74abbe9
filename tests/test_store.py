"""The store: migrations match the models, and audit events filter, page and expire."""

from datetime import UTC, datetime, timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from atelier.hub.store import Base, Store

EVENT = {"source_ip": "10.0.0.1", "resource_type": "instance", "result": "success"}


def test_migrations_build_exactly_the_models(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'atelier.sqlite'}")
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    Store(f"sqlite:///{tmp_path / 'atelier.sqlite'}")  # a second start migrates nothing


def test_audit_visibility_filters_pages_and_retention():
    store = Store("sqlite://")
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

    assert store.expire_audit(datetime.now(UTC) + timedelta(seconds=1)) == 3
    assert store.audit() == (0, [])
