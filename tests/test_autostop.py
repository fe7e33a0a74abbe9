"""The auto-stop decision, from the hub API's own user model."""

from datetime import UTC, datetime

from atelier.hub.autostop.stopper import due_instances

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def server(started, hours, ready=True):
    return {"started": started, "ready": ready, "user_options": {"autostop_hours": hours}}


def test_due_instances():
    users = [
        {
            "name": "alice",
            "servers": {
                "late": server("2026-01-01T09:00:00Z", 2),  # 11:00 < 12:00: due
                "exact": server("2026-01-01T10:00:00.000000Z", 2),  # 12:00: due
                "early": server("2026-01-01T11:00:00Z", 2),  # 13:00: not yet
                "never": server("2026-01-01T01:00:00Z", None),  # no auto-stop
                "starting": server("2026-01-01T01:00:00Z", 1, ready=False),
            },
        },
        {"name": "bob", "servers": {"x": server("2026-01-01T11:30:00Z", 0.25)}},
        {"name": "carol", "servers": {}},
    ]
    assert due_instances(users, NOW) == [("alice", "late"), ("alice", "exact"), ("bob", "x")]
