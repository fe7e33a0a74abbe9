"""Attacks on deployments, for real, against a real hub running as root: another user
reaching alice's deployment through the API, through the router with their own app key and
through the replica's socket on this machine; calls without a valid key (never reaching the
model); bad input; and the hub going down under a deployment. Each test performs the attack
and asserts it is refused: a failing test is an open hole."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import TORCH, environ_of, uid_of
from test_deployments_e2e import infer, predictor, put, settled

pytestmark = pytest.mark.e2e
CALLS = "models/echo/calls.txt"  # one line per request the model answered
COUNTING = """
import numpy

class Predictor:
    def __init__(self, model_dir):
        self.calls = open(model_dir + "/calls.txt", "a", buffering=1)

    def predict(self, inputs):
        self.calls.write("call\\n")
        return numpy.asarray(inputs["x"]) * 2
"""


def deploy(hub, token, name, model, instance="lab", **fields):
    body = {"name": name, "image": TORCH, "spec": "cpu.2u8g", "volume": instance,
            "model": model, **fields}  # fmt: skip
    return hub.atelier("POST", "/deployments", token, json=body)


@pytest.fixture(scope="module")
def alice(hub):
    token = hub.add_user("alice")
    hub.start("alice", "lab", token, {"image": TORCH, "spec": "cpu.2u8g"})
    put(hub, "models/echo/predictor.py", COUNTING)
    assert deploy(hub, token, "echo", "models/echo").status_code == 201
    assert settled(hub, token, "echo")["status"] == "running"
    key = hub.atelier("POST", "/deployments/alice/echo/keys", token).json()["key"]
    return token, key


@pytest.fixture(scope="module")
def bob(hub):
    token = hub.add_user("bob")
    hub.start("bob", "box", token, {"image": TORCH, "spec": "cpu.2u8g"})
    predictor(hub, "models/mine", 1, user="bob", instance="box")
    assert deploy(hub, token, "mine", "models/mine", instance="box").status_code == 201
    assert settled(hub, token, "mine", owner="bob")["status"] == "running"
    key = hub.atelier("POST", "/deployments/bob/mine/keys", token).json()["key"]
    return token, key


def calls(hub) -> int:
    path = hub.volume("alice", "lab") / CALLS
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_another_user_cannot_see_or_touch_a_deployment_through_the_api(hub, alice, bob):
    token, _ = bob
    before = hub.atelier("GET", "/deployments/alice/echo", alice[0]).json()
    for method, path, body in [
        ("GET", "", None),
        ("PATCH", "", {"replicas": 3}),
        ("DELETE", "", None),
        ("POST", "/rollback", None),
        ("POST", "/stop", None),
        ("POST", "/start", None),
        ("GET", "/events", None),
        ("GET", "/logs", None),
        ("GET", "/keys", None),
        ("POST", "/keys", None),
        ("DELETE", f"/keys/{alice[1].split('.')[0]}", None),
    ]:
        response = hub.atelier(method, f"/deployments/alice/echo{path}", token, json=body)
        assert response.status_code == 404, (method, path, response.text)
    listed = hub.atelier("GET", "/deployments", token).json()["deployments"]
    assert [d["name"] for d in listed] == ["mine"]
    after = hub.atelier("GET", "/deployments/alice/echo", alice[0]).json()
    assert (after["version"], after["replicas"], after["status"]) == (
        before["version"], before["replicas"], "running",
    )  # fmt: skip
    assert len(hub.atelier("GET", "/deployments/alice/echo/keys", alice[0]).json()["keys"]) == 1


def test_a_call_without_a_valid_key_never_reaches_the_model(hub, alice, bob):
    counted = calls(hub)
    url = f"{hub.url}/deployments/alice/echo/v2/models/echo/infer"
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    prefix, secret = alice[1].split(".")
    for headers in [
        {},
        {"Authorization": alice[1]},  # no scheme
        {"Authorization": f"Basic {alice[1]}"},
        {"Authorization": f"Bearer {prefix}.{secret[:-1]}x"},  # one character off
        {"Authorization": f"Bearer {bob[1]}"},  # a key of another deployment
        {"Authorization": f"Bearer {prefix}"},
        {"Cookie": "jupyterhub-session-id=x"},
    ]:
        response = requests.post(url, json=body, headers=headers, timeout=10)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert infer(hub, "mine", alice[1], [1.0], owner="bob").status_code == 401
    assert calls(hub) == counted  # none of them ran the model
    assert infer(hub, "echo", alice[1], [1.0]).status_code == 200
    assert calls(hub) == counted + 1


def test_a_revoked_key_stops_working(hub, alice):
    token, _ = alice
    made = hub.atelier("POST", "/deployments/alice/echo/keys", token).json()
    assert infer(hub, "echo", made["key"], [1.0]).status_code == 200
    listed = hub.atelier("GET", "/deployments/alice/echo/keys", token).json()["keys"]
    assert made["prefix"] in [k["prefix"] for k in listed]
    assert all("key" not in k for k in listed)  # the secret was shown once
    path = f"/deployments/alice/echo/keys/{made['prefix']}"
    assert hub.atelier("DELETE", path, token).status_code == 204
    hub.wait_for(
        lambda: infer(hub, "echo", made["key"], [1.0]).status_code == 401, 5, "the key refused"
    )


def replica_pids(deployment: str) -> list[int]:
    """The model server processes of a deployment on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ours = environ_of(int(entry.name)).get("ATELIER_DEPLOYMENT") == deployment
                if ours and b"atelier.serving" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def sockets_of(pid: int) -> list[str]:
    """The Unix socket paths a process holds (/proc/net/unix, by its fds' inodes): its
    listening socket's, which each connection it accepted shows too."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    paths = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes:
            paths.append(fields[7])
    return sorted(set(paths))


def test_the_replica_is_the_owners_and_no_other_account_can_reach_it(hub, alice, bob):
    pids = replica_pids("echo")
    assert len(pids) == 1, [(p, Path(f"/proc/{p}/cmdline").read_bytes()) for p in pids]
    (pid,) = pids
    assert uid_of(pid) == pwd.getpwnam(hub.account("alice")).pw_uid
    environment = environ_of(pid)
    assert not {"JUPYTERHUB_API_TOKEN", "ATELIER_CONFIG"} & set(environment)
    group = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"{hub.account('alice')}.deploy." in group  # a cgroup of its own, the spec's limits
    (path,) = sockets_of(pid)
    assert Path(path).parent.stat().st_mode & 0o777 == 0o700  # root's alone
    bob_uid = pwd.getpwnam(hub.account("bob")).pw_uid
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused')\n"
        "else:\n    print('connected')\n"
    )
    for uid in (bob_uid, pwd.getpwnam(hub.account("alice")).pw_uid):  # the owner's own code too
        said = subprocess.run(
            ["/usr/bin/python3", "-c", probe, path],
            user=uid,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert said.stdout.strip() == "refused", said


def test_bad_input_is_refused_naming_the_field_and_changes_nothing(hub, alice):
    token, _ = alice
    for fields, field in [
        ({"model": "../../../etc"}, "model"),
        ({"model": "/etc"}, "model"),
        ({"model": "models/echo", "replicas": 0}, "replicas"),
        ({"model": "models/echo", "replicas": 10_000}, "replicas"),
        ({"model": "models/echo", "timeout_seconds": 0}, "timeout_seconds"),
        ({"model": "models/echo", "environment": {"PATH": "/tmp"}}, "environment"),
        ({"model": "models/echo", "spec": "gpu.1xa100.8u64g"}, "spec"),
        ({"model": "models/echo", "job": "nothing"}, "model"),
    ]:
        response = deploy(hub, token, "bad", **{"model": None, **fields})
        assert response.status_code == 400, (fields, response.text)
        assert response.json()["error"]["field"] == field, (fields, response.text)
    response = deploy(hub, token, "bad", "models/echo", instance="box")  # bob's instance
    assert response.status_code == 400 and response.json()["error"]["field"] == "volume"
    response = hub.atelier("PATCH", "/deployments/alice/echo", token, json={"owner": "bob"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "owner"
    names = [d["name"] for d in hub.atelier("GET", "/deployments", token).json()["deployments"]]
    assert names == ["echo"]


def test_a_deployment_serves_on_while_the_hub_restarts(hub, alice):
    token, key = alice
    (before,) = replica_pids("echo")
    hub.restart()
    assert replica_pids("echo") == [before]  # the replica outlived the hub
    hub.wait_for(lambda: infer(hub, "echo", key, [2.0]).status_code == 200, 60, "an answer")
    assert infer(hub, "echo", key, [2.0]).json()["outputs"][0]["data"] == [4.0]
    assert settled(hub, token, "echo")["status"] == "running"


def test_a_deleted_deployment_leaves_nothing_and_is_audited(hub, alice):
    token, key = alice
    (pid,) = replica_pids("echo")
    (path,) = sockets_of(pid)
    assert hub.atelier("DELETE", "/deployments/alice/echo", token).status_code == 204
    assert replica_pids("echo") == [] and not Path(path).exists()
    assert infer(hub, "echo", key, [1.0]).status_code == 401
    assert hub.atelier("GET", "/deployments/alice/echo", token).status_code == 404
    audit = hub.atelier("GET", "/audit", params={"resource": "alice/echo"}).json()["events"]
    actions = {e["action"] for e in audit if e["resource"] == "alice/echo"}
    assert {"createService", "createAppKey", "deleteAppKey", "deleteService"} <= actions


def test_a_deleted_users_deployments_go_with_them(hub, bob):
    """Their replicas stop as a deployment's delete stops them: nothing of theirs is left
    mounted (the replica's home held their volume), nor their logs and environment files."""
    token, key = bob
    assert replica_pids("mine")
    id = hub.atelier("GET", "/deployments/bob/mine", token).json()["id"]
    directory, account = hub.dir / "data" / "deployments" / id, hub.account("bob")
    assert directory.is_dir()
    assert hub.api("DELETE", "/users/bob").status_code == 204
    assert not replica_pids("mine")
    assert infer(hub, "mine", key, [1.0], owner="bob").status_code == 401
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    assert not [m for m in mounts if m.startswith(f"{hub.shared_dir}/homes/{account}/")]
    assert not directory.exists()
    audit = hub.atelier("GET", "/audit", params={"resource": "bob/mine"}).json()["events"]
    assert any(e["action"] == "deleteService" and "owner" in e["reason"] for e in audit)
    token = hub.add_user("bob")  # the name again: a new person, who inherits nothing
    assert hub.atelier("GET", "/deployments", token).json()["deployments"] == []
    assert hub.atelier("GET", "/deployments/bob/mine", token).status_code == 404
    assert not replica_pids("mine")  # and nothing started it again
