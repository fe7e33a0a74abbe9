"""Attacks on the Atelier service's API, each refused: an admin's narrow token (or their
instance's server token) used for changes or on other users' things, malformed query values,
oversized bodies, and key pairs without end."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests
from conftest import BASE, environ_of, pid_of

pytestmark = pytest.mark.e2e
ACCESS = "access:services!service=atelier"
READ_ONLY = [
    ACCESS,
    "custom:atelier:instances:read",
    "custom:atelier:images:read",
    "custom:atelier:audit:read",
]


def error_of(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_an_admins_read_only_token_reads_their_own_and_changes_nothing(hub):
    victim = hub.add_user("vera")
    created = hub.atelier(
        "POST", "/instances", victim, json={"name": "lab", "image": BASE, "spec": "cpu.2u4g"}
    )
    assert created.status_code == 201, created.text
    hub.wait_for(lambda: hub.servers("vera")["lab"]["ready"], what="vera's instance to run")
    reader = hub.add_user("admin", READ_ONLY)

    for path in ("/instances", "/images", f"/images/{BASE}", "/specs"):
        assert hub.atelier("GET", path, reader).status_code == 200, path
    # without JupyterHub's admin scope, the admin's token is kept to the admin's own
    assert hub.atelier("GET", "/instances", reader).json()["instances"] == []
    assert error_of(hub.atelier("GET", "/instances/vera/lab", reader), 404)["code"] == "not_found"

    changes = [
        ("DELETE", "/instances/vera/lab?confirm=delete-volume", None, "instances:delete"),
        ("PATCH", "/instances/vera/lab", {"tags": {"x": "y"}}, "instances:update"),
        ("POST", "/instances/vera/lab/stop", None, "instances:update"),
        ("POST", "/instances/vera/lab/volume/expand", {"add_gb": 1}, "instances:update"),
        ("POST", "/instances", {"name": "mine", "image": BASE, "spec": "cpu.2u4g"}, "create"),
        ("POST", "/images", {"name": "jax_0.4.30-cpu-py_3.11-debian_12-x86_64"}, "images:admin"),
        ("PATCH", f"/images/{BASE}", {"status": "disabled"}, "images:admin"),
        ("DELETE", f"/images/{BASE}", None, "images:admin"),
        ("POST", "/specs", {"name": "cpu.4u16g"}, "images:admin"),
        ("PATCH", "/specs/cpu.2u4g", {"disabled": True}, "images:admin"),
        ("DELETE", "/specs/cpu.2u4g", None, "images:admin"),
        ("POST", "/workspaces", {"name": "heist"}, "workspaces:admin"),
        ("POST", "/keypairs", {"name": "k", "generate": True}, "keypairs:manage"),
    ]
    for method, path, body, scope in changes:
        refused = error_of(hub.atelier(method, path, reader, json=body), 403)
        assert refused["code"] == "forbidden" and scope in refused["message"], (path, refused)

    assert hub.servers("vera")["lab"]["ready"]
    assert hub.atelier("GET", "/instances/vera/lab").json()["tags"] == {}
    assert hub.atelier("GET", f"/images/{BASE}").json()["status"] == "active"
    assert not hub.atelier("GET", "/specs/cpu.2u4g").json()["disabled"]
    assert error_of(hub.atelier("GET", "/workspaces/heist"), 404)["code"] == "not_found"
    denied = hub.atelier("GET", "/audit?user=admin&action=accessDenied&limit=100").json()
    assert denied["total"] == len(changes)

    # the admin's full token still does what an admin does
    assert hub.atelier("POST", "/specs", json={"name": "cpu.4u16g"}).status_code == 201
    assert hub.atelier("DELETE", "/specs/cpu.4u16g").status_code == 204
    assert hub.atelier("POST", "/workspaces", json={"name": "crew"}).status_code == 201
    assert hub.atelier("DELETE", "/workspaces/crew").status_code == 204
    gone = hub.atelier("DELETE", "/instances/vera/lab?confirm=delete-volume")
    assert gone.status_code == 204, gone.text


def test_other_users_things_need_the_hub_admin_scope_not_the_admin_flag(hub):
    """JupyterHub reports the admin flag to every token of an admin: a narrowed token and the
    server token inside an admin's instance reach the admin's own things alone."""
    bob = hub.add_user("bob")
    lab = {"name": "lab", "image": BASE, "spec": "cpu.2u4g"}
    assert hub.atelier("POST", "/instances", bob, json=lab).status_code == 201
    private = "secret_1.0-cpu-py_3.11-debian_12-x86_64"
    image = {"name": private, "visibility": "private", "owner": "bob"}
    assert hub.atelier("POST", "/images", json=image).status_code == 201
    own = hub.atelier("POST", "/instances", json={**lab, "name": "own"})
    assert own.status_code == 201, own.text
    server_token = environ_of(pid_of(hub, "admin", "own"))["JUPYTERHUB_API_TOKEN"]
    narrow = hub.add_user(
        "admin",
        [ACCESS, "custom:atelier:instances:read", "custom:atelier:instances:delete"],
    )

    for token in (narrow, server_token):
        listed = hub.atelier("GET", "/instances", token).json()["instances"]
        assert [(i["owner"], i["name"]) for i in listed] == [("admin", "own")]
        for path in ("/instances?owner=bob", "/instances/bob/lab"):
            assert error_of(hub.atelier("GET", path, token), 404)["code"] == "not_found", path
        deleted = hub.atelier("DELETE", "/instances/bob/lab?confirm=delete-volume", token)
        assert error_of(deleted, 404)["code"] == "not_found"
    # the server token carries every user scope, and still reaches nothing of bob's
    walk = [
        ("POST", "/instances/bob/lab/stop", None),
        ("PATCH", "/instances/bob/lab", {"tags": {"x": "y"}}),
        ("POST", "/instances", {**lab, "name": "planted", "owner": "bob"}),
        ("GET", f"/images/{private}", None),
        ("GET", "/keypairs?owner=bob", None),
    ]
    for method, path, body in walk:
        refused = hub.atelier(method, path, server_token, json=body)
        assert error_of(refused, 404)["code"] == "not_found", path
    images = hub.atelier("GET", "/images", server_token).json()["images"]
    assert private not in [i["name"] for i in images]
    assert hub.atelier("GET", "/audit?user=bob", server_token).json()["total"] == 0
    assert hub.servers("bob")["lab"]["ready"] and "planted" not in hub.servers("bob")

    # the admin's full token still reaches everyone's
    assert hub.atelier("GET", f"/images/{private}").status_code == 200
    assert hub.atelier("GET", "/audit?user=bob").json()["total"] > 0
    everyone = hub.atelier("GET", "/instances").json()["instances"]
    assert ("bob", "lab") in [(i["owner"], i["name"]) for i in everyone]
    gone = hub.atelier("DELETE", "/instances/bob/lab?confirm=delete-volume")
    assert gone.status_code == 204, gone.text
    assert "lab" not in hub.servers("bob")
    stopped = hub.atelier("POST", "/instances/admin/own/stop")
    assert stopped.status_code == 200, stopped.text


def test_admin_power_follows_the_hub_admin_flag(hub):
    """Admins made or demoted later (admin page or API): their tokens follow within seconds."""
    token = hub.add_user("ada")  # a full token of hers: whatever she may do, it may
    path = "/specs/cpu.6u24g"

    def change_spec() -> int:
        return hub.atelier("PATCH", path, token, json={"disabled": True}).status_code

    assert hub.atelier("POST", "/specs", json={"name": "cpu.6u24g"}).status_code == 201
    assert change_spec() == 403
    assert hub.api("PATCH", "/users/ada", json={"admin": True}).status_code == 200
    hub.wait_for(lambda: change_spec() != 403, 15, "the promoted admin's power")
    assert change_spec() == 200 and hub.atelier("GET", path).json()["disabled"] is True

    assert hub.api("PATCH", "/users/ada", json={"admin": False}).status_code == 200
    hub.wait_for(lambda: change_spec() == 403, 15, "the demoted admin to lose it")
    assert hub.atelier("DELETE", path, token).status_code == 403
    assert hub.atelier("DELETE", path).status_code == 204


@pytest.mark.parametrize(
    ("query", "field", "limit"),
    [
        ("limit=²", "limit", "from 1 to 1000"),
        ("offset=²", "offset", "from 0 to 1000000000"),
        ("limit=٣", "limit", "from 1 to 1000"),
        ("limit=0", "limit", "from 1 to 1000"),
        ("limit=1001", "limit", "from 1 to 1000"),
        ("limit=-1", "limit", "from 1 to 1000"),
        ("limit=1e3", "limit", "from 1 to 1000"),
        ("limit=" + "9" * 5000, "limit", "from 1 to 1000"),
        ("offset=1000000001", "offset", "from 0 to 1000000000"),
        ("since=yesterday", "since", "ISO 8601"),
        ("until=0001-01-01T00:00:00%2B14:00", "until", "ISO 8601"),
        ("since=9999-12-31T23:59:59-14:00", "since", "ISO 8601"),
    ],
)
def test_malformed_audit_query_values_are_refused(hub, query, field, limit):
    error = error_of(hub.atelier("GET", f"/audit?{query}"), 400)
    assert error["field"] == field and limit in error["message"], error


def test_audit_since_counts_the_time_offset(hub):
    hub.atelier("DELETE", f"/images/{BASE}", hub.add_user("otto"))  # one accessDenied of otto's
    just_before = datetime.now(UTC) - timedelta(minutes=1)
    # the same instant written five hours east: 5 hours later on the clock
    east = just_before.astimezone(timezone(timedelta(hours=5))).isoformat()
    page = hub.atelier("GET", "/audit", params={"user": "otto", "since": east}).json()
    assert [e["action"] for e in page["events"]] == ["accessDenied"]
    later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert hub.atelier("GET", "/audit", params={"user": "otto", "since": later}).json() == {
        "total": 0,
        "events": [],
    }


def test_a_body_over_one_megabyte_is_refused(hub):
    token = hub.add_user("bruno")
    huge = {"name": "big", "image": BASE, "spec": "cpu.2u4g", "tags": {"x": "y" * (2 << 20)}}
    refused = error_of(hub.atelier("POST", "/instances", token, json=huge), 413)
    assert refused == {
        "code": "too_large",
        "field": None,
        "message": "the request body may be at most 1048576 bytes",
    }
    assert hub.atelier("GET", "/instances", token).json()["instances"] == []
    # and one sent in chunks, without a length
    chunks = (b"x" * 65536 for _ in range(32))
    streamed = requests.post(
        f"{hub.url}/services/atelier/api/v1/keypairs",
        headers={"Authorization": f"token {token}"},
        data=chunks,
        timeout=60,
    )
    assert error_of(streamed, 413)["code"] == "too_large"
    # one far too large is cut off unread (the proxy answers 503), and the service lives on
    cut = hub.atelier("POST", "/keypairs", token, data=b"x" * (8 << 20))
    assert cut.status_code >= 400
    assert hub.atelier("GET", "/keypairs", token).json()["keypairs"] == []


def test_key_pairs_per_user_are_capped(hub):
    token = hub.add_user("kim")
    for index in range(20):
        key = {"name": f"key-{index}", "generate": True}
        assert hub.atelier("POST", "/keypairs", token, json=key).status_code == 201
    refused = error_of(
        hub.atelier("POST", "/keypairs", token, json={"name": "one-more", "generate": True}), 400
    )
    assert refused == {
        "code": "quota_exceeded",
        "field": "name",
        "message": "each user may have at most 20 key pairs",
    }
    assert len(hub.atelier("GET", "/keypairs", token).json()["keypairs"]) == 20
    first = hub.atelier("GET", "/keypairs", token).json()["keypairs"][0]["id"]
    assert hub.atelier("DELETE", f"/keypairs/{first}", token).status_code == 204
    again = {"name": "one-more", "generate": True}
    assert hub.atelier("POST", "/keypairs", token, json=again).status_code == 201
