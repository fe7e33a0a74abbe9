"""The Atelier service's REST API end to end: instances, catalog, quotas, audit, scopes."""

from pathlib import Path

import pytest
from conftest import BASE, TORCH, environ_of
from test_snapshot_surfaces import undocumented_routes

from atelier.hub.service.openapi import document

pytestmark = pytest.mark.e2e
CREATE = {"name": "api-1", "image": BASE, "spec": "cpu.2u4g", "tags": {"team": "nlp"}}


def error_of(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_instance_lifecycle_through_the_api(hub):
    token = hub.add_user("una")
    created = hub.atelier("POST", "/instances", token, json=CREATE)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["owner"] == "una" and body["status"] == "running"
    assert body["image"] == BASE and body["tags"] == {"team": "nlp"} and body["created"]
    assert body["url"] == "/user/una/api-1/"

    listed = hub.atelier("GET", "/instances", token).json()["instances"]
    assert [(i["owner"], i["name"]) for i in listed] == [("una", "api-1")]

    stopped = hub.atelier("POST", "/instances/una/api-1/stop", token)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    changed = hub.atelier(
        "PATCH", "/instances/una/api-1", token, json={"image": TORCH, "autostop_hours": 2}
    )
    assert changed.status_code == 200
    assert changed.json()["image"] == TORCH and changed.json()["tags"] == {"team": "nlp"}
    started = hub.atelier("POST", "/instances/una/api-1/start", token)
    assert started.json()["status"] == "running" and started.json()["autostop_at"]

    running_image = hub.atelier("PATCH", "/instances/una/api-1", token, json={"image": BASE})
    assert error_of(running_image, 400) == {
        "code": "invalid",
        "field": "image",
        "message": "can change only while the instance is stopped, it is running",
    }
    # the README's PATCH of a running instance: the answer shows it restarted on the new spec,
    # with what the PATCH did not name kept
    respecced = hub.atelier("PATCH", "/instances/una/api-1", token, json={"spec": "cpu.2u8g"})
    assert respecced.status_code == 200, respecced.text
    shown = {key: respecced.json()[key] for key in ("status", "spec", "tags", "autostop_hours")}
    assert shown == {
        "status": "running",
        "spec": "cpu.2u8g",
        "tags": {"team": "nlp"},
        "autostop_hours": 2,
    }
    quotas = hub.atelier("GET", "/quotas", token).json()
    assert quotas["instances"] == {"used": 1, "allowed": 4}

    unconfirmed = error_of(hub.atelier("DELETE", "/instances/una/api-1", token), 400)
    assert (unconfirmed["code"], unconfirmed["field"]) == ("confirmation_required", "confirm")
    assert "deletes its work volume" in unconfirmed["message"]
    confirmed = hub.atelier("DELETE", "/instances/una/api-1?confirm=delete-volume", token)
    assert confirmed.status_code == 204
    assert error_of(hub.atelier("GET", "/instances/una/api-1", token), 404)["code"] == "not_found"

    actions = [
        (e["action"], e["result"])
        for e in reversed(
            hub.atelier("GET", "/audit?resource=una/api-1&resource_type=instance", token).json()[
                "events"
            ]
        )
    ]
    assert actions == [
        ("createNotebook", "success"),
        ("stopNotebook", "success"),
        ("updateNotebook", "success"),
        ("startNotebook", "success"),
        ("updateNotebook", "failure"),
        ("updateNotebook", "success"),
        ("deleteNotebook", "success"),
    ]
    event = hub.atelier("GET", "/audit?action=createNotebook&resource=una/api-1", token).json()[
        "events"
    ][0]
    assert event["actor"] == "una" and event["source_ip"] == "127.0.0.1" and event["owner"] == "una"
    query = "/audit?resource=una/api-1&resource_type=volume"
    volume_events = hub.atelier("GET", query, token).json()["events"]
    assert [(e["action"], e["actor"], e["source_ip"]) for e in reversed(volume_events)] == [
        ("createVolume", "una", "127.0.0.1"),
        ("deleteVolume", "una", "127.0.0.1"),
    ]


@pytest.mark.parametrize(
    "body, status, code, field",
    [
        ({"image": BASE, "spec": "cpu.2u4g"}, 400, "missing_field", "name"),
        ({**CREATE, "cores": 8}, 400, "unknown_field", "cores"),
        ({**CREATE, "name": "Bad Name"}, 400, "invalid", "name"),
        ({**CREATE, "image": "nope"}, 400, "invalid", "image"),
        ({**CREATE, "spec": "gpu.1xa100.8u64g"}, 400, "invalid", "spec"),
        ({**CREATE, "tags": {"k": "v" * 44}}, 400, "invalid", "tags.k"),
        ({**CREATE, "name": 5}, 400, "invalid", "name"),
    ],
)
def test_bad_creates_name_the_field_and_change_nothing(hub, body, status, code, field):
    token = hub.add_user("vera")
    error = error_of(hub.atelier("POST", "/instances", token, json=body), status)
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"]
    assert hub.atelier("GET", "/instances", token).json()["instances"] == []


def test_bodies_that_are_not_objects(hub):
    token = hub.add_user("vera")
    assert (
        error_of(hub.atelier("POST", "/instances", token, data="{"), 400)["code"] == "invalid_json"
    )
    assert (
        error_of(hub.atelier("POST", "/instances", token, json=[1]), 400)["code"] == "invalid_body"
    )


def test_a_second_user_sees_and_touches_nothing_of_the_first(hub):
    owner, other = hub.add_user("wade"), hub.add_user("xena")
    hub.api(
        "PUT",
        "/users/wade/servers/secret",
        owner,
        json={"user_options": {"image": BASE, "spec": "cpu.2u4g"}},
    )
    walk = [
        ("GET", "/instances/wade/secret", None),
        ("PATCH", "/instances/wade/secret", {"tags": {}}),
        ("DELETE", "/instances/wade/secret", None),
        ("POST", "/instances/wade/secret/start", None),
        ("POST", "/instances/wade/secret/stop", None),
        ("GET", "/instances?owner=wade", None),
    ]
    for method, path, body in walk:
        assert error_of(hub.atelier(method, path, other, json=body), 404)["code"] == "not_found", (
            path
        )
    create_for_other = hub.atelier("POST", "/instances", other, json={**CREATE, "owner": "wade"})
    assert create_for_other.status_code == 404
    assert hub.atelier("GET", "/instances", other).json()["instances"] == []
    everyone = hub.atelier("GET", "/instances").json()["instances"]  # an admin sees all owners
    assert ("wade", "secret") in [(i["owner"], i["name"]) for i in everyone]
    events = hub.atelier("GET", "/audit", other).json()["events"]
    assert all("wade" not in (e["owner"], e["actor"]) for e in events)
    assert [i["name"] for i in hub.atelier("GET", "/instances", owner).json()["instances"]] == [
        "secret"
    ]


def test_scopes_decide_what_a_token_may_do(hub):
    hub.add_user("yuri")
    reader = hub.add_user(
        "yuri", ["access:services!service=atelier", "custom:atelier:instances:read"]
    )
    assert hub.atelier("GET", "/instances", reader).status_code == 200
    refused = error_of(hub.atelier("POST", "/instances", reader, json=CREATE), 403)
    assert refused == {
        "code": "forbidden",
        "field": None,
        "message": "this needs the scope custom:atelier:instances:create",
    }
    assert hub.atelier("GET", "/instances", reader).json()["instances"] == []
    denied = hub.atelier("GET", "/audit?action=accessDenied&actor=yuri").json()["events"]
    assert [(e["resource"], e["reason"], e["result"]) for e in denied] == [
        ("/services/atelier/api/v1/instances", "custom:atelier:instances:create", "failure")
    ]
    no_access = hub.add_user("yuri", ["read:users!user"])
    assert hub.atelier("GET", "/instances", no_access).status_code == 403
    assert (
        error_of(hub.atelier("GET", "/instances", "not-a-token"), 401)["code"] == "unauthenticated"
    )


def test_catalog_admin_only_and_audited(hub):
    user = hub.add_user("zoe")
    images = hub.atelier("GET", "/images", user).json()["images"]
    torch = next(i for i in images if i["name"] == TORCH)
    assert (torch["flavor"], torch["engine"], torch["engine_version"], torch["python"]) == (
        "cpu",
        "pytorch",
        "2.13.0",
        "3.11",
    )
    assert hub.atelier("GET", f"/images/{TORCH}", user).json()["arch"] == "x86_64"
    assert error_of(hub.atelier("GET", "/images/nope", user), 404)["code"] == "not_found"
    new = {"name": "jax_0.4.30-cpu-py_3.11-debian_12-x86_64", "display_name": "JAX"}
    assert error_of(hub.atelier("POST", "/images", user, json=new), 403)["code"] == "forbidden"

    assert hub.atelier("POST", "/images", json=new).status_code == 201
    bad = hub.atelier("POST", "/images", json={"name": "jax-latest"})
    assert error_of(bad, 400)["field"] == "name"
    deprecate = {"status": "deprecated", "successor": TORCH}
    assert (
        hub.atelier("PATCH", f"/images/{new['name']}", json=deprecate).json()["successor"] == TORCH
    )
    assert (
        error_of(hub.atelier("PATCH", f"/images/{new['name']}", json={"status": "gone"}), 400)[
            "field"
        ]
        == "status"
    )
    assert hub.atelier("DELETE", f"/images/{new['name']}").status_code == 204
    assert error_of(hub.atelier("DELETE", f"/images/{new['name']}"), 404)["code"] == "not_found"

    assert hub.atelier("POST", "/specs", json={"name": "cpu.4u16g"}).status_code == 201
    assert (
        hub.atelier("PATCH", "/specs/cpu.4u16g", json={"disabled": True}).json()["disabled"] is True
    )
    assert (
        error_of(hub.atelier("PATCH", "/specs/cpu.4u16g", json={"disabled": "yes"}), 400)["field"]
        == "disabled"
    )
    assert hub.atelier("DELETE", "/specs/cpu.4u16g").status_code == 204
    assert error_of(hub.atelier("DELETE", "/specs/cpu.4u16g", user), 403)["code"] == "forbidden"

    def history(kind):
        events = hub.atelier("GET", f"/audit?user=admin&resource_type={kind}").json()["events"]
        return [(e["action"], e["result"]) for e in reversed(events)]

    assert history("image") == [
        ("createImage", "success"),
        ("createImage", "failure"),
        ("updateImage", "success"),
        ("updateImage", "failure"),
        ("deleteImage", "success"),
        ("deleteImage", "failure"),
    ]
    assert history("spec") == [
        ("createSpec", "success"),
        ("updateSpec", "success"),
        ("deleteSpec", "success"),
    ]


def test_audit_filters_and_pages(hub):
    first = hub.atelier("GET", "/audit?limit=2").json()
    second = hub.atelier("GET", "/audit?limit=2&offset=2").json()
    assert first["total"] == second["total"] >= 4
    assert len(first["events"]) == 2 and first["events"][0]["id"] > second["events"][0]["id"]
    assert hub.atelier("GET", "/audit?since=2999-01-01T00:00:00Z").json() == {
        "total": 0,
        "events": [],
    }
    assert error_of(hub.atelier("GET", "/audit?since=yesterday"), 400)["field"] == "since"
    assert error_of(hub.atelier("GET", "/audit?limit=0"), 400)["field"] == "limit"


def test_a_new_user_of_a_deleted_users_name_sees_none_of_their_events(hub):
    def key_events(token=None):
        events = hub.atelier("GET", "/audit?resource_type=keypair", token).json()["events"]
        return [(e["owner"], e["resource"]) for e in events if e["owner"] == "ada"]

    first = hub.add_user("ada")
    generate = {"name": "laptop", "generate": True}
    assert hub.atelier("POST", "/keypairs", first, json=generate).status_code == 201
    assert key_events(first) == [("ada", "laptop")]
    assert hub.api("DELETE", "/users/ada").status_code == 204

    second = hub.add_user("ada")
    assert hub.atelier("GET", "/audit", second).json() == {"total": 0, "events": []}
    assert hub.atelier("POST", "/keypairs", second, json={**generate, "name": "desk"}).ok
    assert key_events(second) == [("ada", "desk")]
    assert key_events() == [("ada", "desk"), ("ada", "laptop")]  # an admin sees both


def test_every_route_is_in_the_openapi_document(hub):
    served = hub.atelier("GET", "/openapi.json", "no-token-needed")
    assert served.status_code == 200 and served.json() == document()
    assert undocumented_routes(document()) == []  # each route, each method


INSIDE = "from atelier.sdk import Client; c = Client(); print([i['name'] for i in c.instances()], c.user)"  # noqa: E501 - one line of a notebook


def test_sdk_and_cli(hub):
    import json
    import subprocess
    import sys

    from atelier.sdk import AtelierError, Client

    token = hub.add_user("sam")
    client = Client(f"{hub.url}/services/atelier/api/v1", token)
    created = client.create_instance("sdk-1", image=BASE, spec="cpu.2u4g", tags={"via": "sdk"})
    assert created["status"] == "running" and client.user == "sam"
    with pytest.raises(AtelierError) as error:
        client.create_instance("sdk-2", image=BASE, spec="cpu.1u1g")
    assert (error.value.status, error.value.field) == (400, "spec")

    # inside the instance: no setup, the URL and token come from its environment
    environment = environ_of(hub.servers("sam")["sdk-1"]["state"]["pid"])
    python = environment["VIRTUAL_ENV"] + "/bin/python"
    inside = subprocess.run([python, "-c", INSIDE], env=environment, capture_output=True, text=True)
    assert inside.stdout.split() == ["['sdk-1']", "sam"], inside.stderr

    cli = [sys.executable, "-m", "atelier.hub.cli.main"]
    api = ["--url", client.url, "--token", token]
    listing = subprocess.run([*cli, "instances", "list", *api], capture_output=True, text=True)
    assert listing.stdout.split()[:2] == ["OWNER", "NAME"] and "sdk-1" in listing.stdout
    stopped = subprocess.run(
        [*cli, "instances", "stop", "sdk-1", "--json", *api], capture_output=True, text=True
    )
    assert json.loads(stopped.stdout)["status"] == "stopped"  # one instance: one object
    refused = subprocess.run(
        [*cli, "instances", "update", "sdk-1", "--spec", "cpu.1u1g", *api],
        capture_output=True,
        text=True,
    )
    assert (
        refused.returncode == 2 and "400 invalid: spec: no spec named 'cpu.1u1g'" in refused.stderr
    )
    audit = subprocess.run(
        [*cli, "audit", "--resource", "sam/sdk-1", "--json", *api], capture_output=True, text=True
    )
    assert [e["action"] for e in json.loads(audit.stdout)][:2] == ["updateNotebook", "stopNotebook"]
    client.delete_instance("sdk-1", delete_volume=True)
    assert client.instances() == []


def test_schemathesis_finds_no_fault_in_the_read_only_routes(hub):
    """Property-based requests from the OpenAPI document: conformance and no 5xx."""
    import subprocess
    import sys
    from pathlib import Path

    schemathesis = Path(sys.executable).parent / "st"
    spec = f"{hub.url}/services/atelier/api/v1/openapi.json"
    result = subprocess.run(
        [
            schemathesis,
            "run",
            spec,
            "-H",
            f"Authorization: token {hub.admin_token}",
            "--include-method",
            "GET",
            "--max-examples",
            "25",
            "--checks",
            "all",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "Tested: 25" in result.stdout  # every GET operation


def test_private_images_are_their_owners_alone(hub, envs_dir):
    private = "mine_1.0-cpu-py_3.11-debian_12-x86_64"
    if not (envs_dir / private).exists():  # its local environment: the base one
        (envs_dir / private).symlink_to(envs_dir / BASE)
    owner, other = hub.add_user("priya"), hub.add_user("piet")
    image = {"name": private, "visibility": "private", "owner": "priya"}
    no_owner = hub.atelier("POST", "/images", json={**image, "owner": None})
    assert error_of(no_owner, 400)["field"] == "owner"
    ghost = hub.atelier("POST", "/images", json={**image, "owner": "nobody-here"})
    assert error_of(ghost, 400) == {
        "code": "invalid",
        "field": "owner",
        "message": "no hub user named 'nobody-here'",
    }
    assert hub.atelier("POST", "/images", json=image).status_code == 201
    assert hub.atelier("GET", f"/images/{private}", owner).json()["owner"] == "priya"
    assert private not in [i["name"] for i in hub.atelier("GET", "/images", other).json()["images"]]
    assert hub.atelier("GET", f"/images/{private}", other).status_code == 404
    theirs = {"name": "p1", "image": private, "spec": "cpu.2u4g"}
    refused = hub.atelier("POST", "/instances", other, json=theirs)
    assert error_of(refused, 400)["message"] == f"no image named {private!r} in the catalog"
    assert hub.atelier("GET", "/instances", other).json()["instances"] == []
    made = hub.atelier("POST", "/instances", owner, json=theirs)
    assert made.status_code == 201, made.text
    assert (
        hub.atelier("DELETE", "/instances/priya/p1?confirm=delete-volume", owner).status_code == 204
    )
    assert hub.atelier("DELETE", f"/images/{private}").status_code == 204


def test_workspaces_share_images_and_quota_with_members_only(hub, envs_dir):
    shared = "vision_1.0-cpu-py_3.11-debian_12-x86_64"
    if not (envs_dir / shared).exists():  # its local environment: the base one
        (envs_dir / shared).symlink_to(envs_dir / BASE)
    member, outsider = hub.add_user("wanda"), hub.add_user("omar")
    assert error_of(hub.atelier("GET", "/workspaces", member), 403)["code"] == "forbidden"

    created = hub.atelier(
        "POST", "/workspaces", json={"name": "vision", "members": ["wanda"], "max_instances": 1}
    )
    assert created.status_code == 201, created.text
    assert created.json()["members"] == ["wanda"] and created.json()["instances"] == 0
    assert hub.api("GET", "/groups/vision").json()["users"] == ["wanda"]  # a JupyterHub group
    assert (
        error_of(hub.atelier("POST", "/workspaces", json={"name": "Vision Team"}), 400)["field"]
        == "name"
    )
    assert (
        "already exists"
        in error_of(hub.atelier("POST", "/workspaces", json={"name": "vision"}), 400)["message"]
    )

    image = {"name": shared, "visibility": "shared", "workspace": "vision"}
    assert (
        error_of(hub.atelier("POST", "/images", json={**image, "workspace": None}), 400)["field"]
        == "workspace"
    )
    assert (
        error_of(hub.atelier("POST", "/images", json={**image, "workspace": "nope"}), 400)["field"]
        == "workspace"
    )
    assert hub.atelier("POST", "/images", json=image).status_code == 201
    assert shared in [i["name"] for i in hub.atelier("GET", "/images", member).json()["images"]]
    assert shared not in [
        i["name"] for i in hub.atelier("GET", "/images", outsider).json()["images"]
    ]
    assert hub.atelier("GET", f"/images/{shared}", outsider).status_code == 404

    instance = {"name": "w1", "image": shared, "spec": "cpu.2u4g", "workspace": "vision"}
    assert (
        error_of(hub.atelier("POST", "/instances", outsider, json=instance), 404)["field"]
        == "workspace"
    )
    foreign_image = hub.atelier(
        "POST", "/instances", outsider, json={**instance, "workspace": None}
    )
    assert error_of(foreign_image, 400)["message"] == f"no image named {shared!r} in the catalog"
    made = hub.atelier("POST", "/instances", member, json=instance)
    assert made.status_code == 201 and made.json()["workspace"] == "vision"
    full = hub.atelier("POST", "/instances", member, json={**instance, "name": "w2"})
    assert error_of(full, 400) == {
        "code": "quota_exceeded",
        "field": "workspace",
        "message": "workspace vision allows at most 1 instances",
    }
    assert hub.atelier("GET", "/quotas", member).json()["workspaces"] == {
        "vision": {"used": 1, "allowed": 1}
    }
    assert hub.atelier("GET", "/quotas", outsider).json()["workspaces"] == {}

    in_use = hub.atelier("DELETE", "/workspaces/vision")
    assert (
        error_of(in_use, 409)["message"]
        == "workspace vision still has instances; delete them first"
    )
    assert hub.atelier("PATCH", "/workspaces/vision", json={"members": ["wanda", "omar"]}).json()[
        "members"
    ] == ["omar", "wanda"]
    assert (
        hub.atelier("DELETE", "/instances/wanda/w1?confirm=delete-volume", member).status_code
        == 204
    )
    assert hub.atelier("DELETE", f"/images/{shared}").status_code == 204
    assert hub.atelier("DELETE", "/workspaces/vision").status_code == 204
    assert hub.api("GET", "/groups/vision").status_code == 404


def test_key_pairs_register_generate_isolate_and_delete(hub, tmp_path):
    import subprocess

    owner, other = hub.add_user("kai"), hub.add_user("lea")
    key_file = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
    public = (tmp_path / "id_ed25519.pub").read_text()
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{key_file}.pub"], capture_output=True, text=True
    ).stdout.split()[1]

    added = hub.atelier("POST", "/keypairs", owner, json={"name": "laptop", "public_key": public})
    assert added.status_code == 201 and added.json()["fingerprint"] == fingerprint
    assert "private_key" not in added.json()
    again = hub.atelier("POST", "/keypairs", owner, json={"name": "again", "public_key": public})
    assert error_of(again, 409)["message"] == f"you registered this key already ({fingerprint})"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(tmp_path / "weak")],
        check=True,
    )
    weak = hub.atelier(
        "POST",
        "/keypairs",
        owner,
        json={"name": "weak", "public_key": (tmp_path / "weak.pub").read_text()},
    )
    assert error_of(weak, 400) == {
        "code": "invalid",
        "field": "public_key",
        "message": "RSA keys need at least 3072 bits; this one has 2048",
    }
    both = hub.atelier(
        "POST", "/keypairs", owner, json={"name": "x", "public_key": public, "generate": True}
    )
    assert error_of(both, 400)["field"] == "public_key"

    generated = hub.atelier(
        "POST", "/keypairs", owner, json={"name": "ci", "generate": True}
    ).json()
    assert generated["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    listed = hub.atelier("GET", "/keypairs", owner).json()["keypairs"]
    assert [k["name"] for k in listed] == ["laptop", "ci"]
    assert all("private_key" not in k for k in listed)  # shown once, never stored

    key_id = listed[0]["id"]
    assert hub.atelier("GET", "/keypairs", other).json()["keypairs"] == []
    assert error_of(hub.atelier("GET", f"/keypairs/{key_id}", other), 404)["code"] == "not_found"
    assert error_of(hub.atelier("DELETE", f"/keypairs/{key_id}", other), 404)["code"] == "not_found"
    assert error_of(hub.atelier("GET", "/keypairs?owner=kai", other), 404)["code"] == "not_found"
    assert hub.atelier("DELETE", f"/keypairs/{key_id}", owner).status_code == 204
    assert [k["name"] for k in hub.atelier("GET", "/keypairs", owner).json()["keypairs"]] == ["ci"]
    actions = [
        (e["action"], e["result"])
        for e in reversed(
            hub.atelier("GET", "/audit?resource_type=keypair", owner).json()["events"]
        )
    ]
    assert actions == [
        ("createKeyPair", "success"),
        ("createKeyPair", "failure"),
        ("createKeyPair", "failure"),
        ("createKeyPair", "success"),
        ("deleteKeyPair", "success"),
    ]


def test_the_instance_limit_names_the_field_and_the_limit(hub):
    token = hub.add_user("ines")
    define = {"user_options": {"image": BASE, "spec": "cpu.2u4g"}}
    for n in range(4):
        assert hub.api("PUT", f"/users/ines/servers/n{n}", token, json=define).status_code == 201
    error = error_of(hub.atelier("POST", "/instances", token, json=CREATE), 400)
    assert error == {
        "code": "invalid",
        "field": "name",
        "message": "at most 4 instances per user (limits.instances_per_user); delete one first",
    }


def test_the_default_role_has_all_but_the_admin_scopes_as_documented(hub):
    token = hub.add_user("ursula")  # a token with everything the default user role gives
    for method, path in (("GET", "/instances"), ("GET", "/images"), ("GET", "/specs")):
        assert hub.atelier(method, path, token).status_code == 200
    assert hub.atelier("GET", "/keypairs", token).status_code == 200
    assert hub.atelier("GET", "/audit", token).status_code == 200
    for method, path, body, scope in (
        ("GET", "/workspaces", None, "workspaces:admin"),
        ("POST", "/images", {"name": "jax_0.4.30-cpu-py_3.11-debian_12-x86_64"}, "images:admin"),
    ):
        error = error_of(hub.atelier(method, path, token, json=body), 403)
        assert error["message"] == f"this needs the scope custom:atelier:{scope}"

    openapi = hub.atelier("GET", "/openapi.json").json()
    assert "default role has all but the two `:admin` ones" in openapi["info"]["description"]
    for (path, method), summary in (
        (("/workspaces", "get"), "not in the default user role"),
        (("/images", "post"), "not in the default user role"),
        (("/instances", "post"), "in every user's default role"),
    ):
        assert summary in openapi["paths"][path][method]["description"]
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "Every user's default role has all but the two `:admin` scopes" in readme
