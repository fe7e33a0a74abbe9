"""The backend contract: what a user notices of any backend, written once and run against
each (`local`, and the test backend in tests/backends that proves the seam), through the
hub's REST API, the Atelier API and Debian's OpenSSH client.

One hub per backend (module scope); the instance most tests look at is started once and
reused. ATELIER_CONTRACT_BACKENDS=test (comma-separated) runs a subset.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import BASE, FAKE_GPU, ROOT, Hub, environ_of, owner_of, uid_of
from dockerhub import docker_hub
from test_ssh_e2e import reachable_over_ssh

pytestmark = pytest.mark.e2e
BACKENDS_DIR = ROOT / "tests" / "backends"
BACKENDS = os.environ.get("ATELIER_CONTRACT_BACKENDS", "local,test,docker").split(",")
REMOVE = {"remove": True, "confirm": "delete-volume"}  # deleting an instance deletes its volume
CPU_OPTIONS = {"image": BASE, "spec": "cpu.2u4g", "tags": {"team": "vision"}, "autostop_hours": 8}
USER, INSTANCE = "dev", "box"
LOGIN = f"{USER}+{INSTANCE}"


class ProcessBackendHub(Hub):
    """A hub on the test backend: tests/backends is its installation (PYTHONPATH, which
    JupyterHub's managed services, the Atelier service and the SSH gateway, inherit)."""

    environment = {
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(BACKENDS_DIR), os.environ.get("PYTHONPATH")) if p
        )
    }


def unmount_below(directory: Path) -> None:
    """Volumes a backend keeps mounted while stopped (the test backend's tmpfs), once its
    instances stopped: nothing is left mounted under the hub's shared dir."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{directory}/")), reverse=True):
        subprocess.run(["/usr/bin/umount", "--lazy", mount], capture_output=True)


@pytest.fixture(scope="module", params=BACKENDS)
def hub(request, envs_dir):
    backend = request.param
    if backend == "docker":
        request.getfixturevalue("docker_images")
        hub = docker_hub(envs_dir, request.getfixturevalue("docker_engine"))
    elif backend == "test":
        hub = ProcessBackendHub(envs_dir, backend="test")
    else:
        hub = Hub(envs_dir)
    hub.backend = backend
    yield hub
    if hub.process.poll() is None:
        hub.stop_instances()
    unmount_below(hub.shared_dir)
    hub.stop()


def lab_status(hub, user, name, token):
    return requests.get(
        f"{hub.url}/user/{user}/{name}/api/status",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )


# create, start, stop, delete ---------------------------------------------------------------


def test_create_reach_stop_restart_delete(hub):  # moved from test_instances_e2e
    token = hub.add_user("alice")
    pid = hub.start("alice", "lab", token, CPU_OPTIONS)
    assert lab_status(hub, "alice", "lab", token).status_code == 200
    environment = environ_of(pid)
    assert environment["MEM_LIMIT"] == str(4 * 1024**3) and environment["CPU_LIMIT"] == "2"
    assert environment["ATELIER_IMAGE"] == BASE and "CUDA_VISIBLE_DEVICES" not in environment
    if os.geteuid() == 0 and hub.backend == "local":  # its users' own accounts
        assert owner_of(pid) == hub.account("alice")
        home = hub.home("alice", "lab")
        assert (home.stat().st_mode & 0o777) == 0o700 and home.owner() == owner_of(pid)

    assert hub.api("DELETE", "/users/alice/servers/lab", token).status_code in (202, 204)
    hub.wait_for(lambda: not hub.servers("alice")["lab"]["ready"], what="lab stopped")
    assert not Path(f"/proc/{pid}").exists()

    # restart without options: the same image, spec and tags
    hub.start("alice", "lab", token)
    assert hub.servers("alice")["lab"]["user_options"] == CPU_OPTIONS
    assert lab_status(hub, "alice", "lab", token).status_code == 200

    response = hub.api(
        "DELETE",
        "/users/alice/servers/lab",
        token,
        json=REMOVE,
    )
    assert response.status_code in (202, 204)
    hub.wait_for(lambda: "lab" not in hub.servers("alice"), what="lab deleted")
    volume_events = hub.atelier("GET", "/audit?resource=alice/lab&resource_type=volume").json()
    assert [(e["action"], e["actor"], e["source_ip"]) for e in volume_events["events"][::-1]] == [
        ("createVolume", "alice", "127.0.0.1"),
        ("deleteVolume", "alice", "127.0.0.1"),
    ]


# bad options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(  # moved from test_instances_e2e
    "name, body, message",
    [
        ("Bad_Name", CPU_OPTIONS, "name: 'Bad_Name' may contain only a-z, 0-9 and '-'"),
        ("x" * 65, CPU_OPTIONS, "name: must be 1 to 64 characters, got 65"),
        ("ok", {"spec": "cpu.2u4g"}, "image: is required"),
        ("ok", {**CPU_OPTIONS, "image": "nope"}, "image: no image named 'nope' in the catalog"),
        ("ok", {**CPU_OPTIONS, "spec": "gpu.1xa100.8u64g"}, "cannot run on gpu spec"),
        ("ok", {**CPU_OPTIONS, "spec": "cpu.1u1g"}, "spec: no spec named 'cpu.1u1g'"),
        (
            "ok",
            {"image": FAKE_GPU, "spec": "gpu.1xh100.16u128g"},
            "needs 1 h100 devices; this deployment has 0",
        ),
        ("ok", {**CPU_OPTIONS, "cores": 4}, "cores: unknown field"),
        (
            "ok",
            {**CPU_OPTIONS, "tags": {f"k{i}": "v" for i in range(21)}},
            "tags: at most 20 tags per instance, got 21",
        ),
        ("ok", {**CPU_OPTIONS, "tags": {"k" * 37: "v"}}, "must be 1 to 36 printable characters"),
        ("ok", {**CPU_OPTIONS, "tags": {"k": "v" * 44}}, "tags.k: value must be at most 43"),
        ("ok", {**CPU_OPTIONS, "volume_gb": 0}, "volume_gb: must be from 1 to 4096 GB, got 0"),
        (
            "ok",
            {**CPU_OPTIONS, "volume_gb": 201},
            "volume_gb: your volumes would hold 201 GB; the quota is 200 GB",
        ),
        (
            "ok",
            {**CPU_OPTIONS, "autostop_hours": 0.0001 - 1},
            "autostop_hours: must be more than 0",
        ),
    ],
)
def test_bad_requests_answer_400_and_change_nothing(hub, name, body, message):
    token = hub.add_user("bob")
    before = hub.servers("bob")
    response = hub.api("POST", f"/users/bob/servers/{name}", token, json=body)
    assert response.status_code == 400
    assert message in response.json()["message"]
    assert hub.servers("bob") == before
    assert (
        hub.api("PUT", f"/users/bob/servers/{name}", token, json={"user_options": body}).status_code
        == 400
    )
    assert hub.servers("bob") == before


# one running instance: SSH, its volume, a hub restart -------------------------------------------


@pytest.fixture(scope="module")
def running(hub, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"contract-{hub.backend}")
    return reachable_over_ssh(hub, USER, INSTANCE, directory)


def instance(hub, running) -> dict:
    return hub.atelier("GET", f"/instances/{USER}/{INSTANCE}", running["token"]).json()


FILESYSTEMS = {"local": "xfs", "test": "tmpfs", "docker": "xfs"}
UIDS = {
    "local": lambda hub: pwd.getpwnam(hub.account(USER)).pw_uid,
    "test": lambda hub: pwd.getpwnam("atelier-tb").pw_uid,
    "docker": lambda hub: 1000,  # the images' own user
}


def test_the_instance_runs_on_the_backend_the_hub_was_given(hub, running):
    """Not a contract: that each run of it is on the backend it names (no silent fallback)."""
    pid = hub.lab_pid(USER, INSTANCE)
    assert uid_of(pid) == UIDS[hub.backend](hub)
    mounted = running["client"].ssh(LOGIN, "findmnt -n -o FSTYPE -T work")
    assert mounted.stdout.strip() == FILESYSTEMS[hub.backend], mounted.stderr


def test_ssh_runs_commands_in_the_instance_with_their_exit_status(hub, running):
    client = running["client"]
    shell = client.ssh(LOGIN, 'echo "$HOME|$PWD|$VIRTUAL_ENV"; python -c "print(6*7)"; exit 3')
    assert shell.returncode == 3, shell.stderr
    home, cwd, venv, answer = shell.stdout.replace("\n", "|").split("|")[:4]
    lab = environ_of(hub.lab_pid(USER, INSTANCE))
    assert home == cwd == lab["HOME"] and venv == lab["VIRTUAL_ENV"] and answer == "42"


def test_scp_copies_into_the_instances_work_volume(hub, running):
    client, directory = running["client"], running["directory"]
    data = directory / "data.bin"
    data.write_bytes(os.urandom(3 * 1024 * 1024))
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    port, target = str(hub.ssh_port), f"{LOGIN}@127.0.0.1"
    scp = ["scp", *client.options(), "-P", port]
    sent = subprocess.run([*scp, str(data), f"{target}:work/data.bin"], capture_output=True)
    assert sent.returncode == 0, sent.stderr
    assert client.ssh(LOGIN, "sha256sum work/data.bin").stdout.split()[0] == digest
    back = directory / "back.bin"
    fetched = subprocess.run([*scp, f"{target}:work/data.bin", str(back)], capture_output=True)
    assert fetched.returncode == 0, fetched.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest


def test_the_volume_size_is_enforced_and_grows_online(hub, running):
    client, token = running["client"], running["token"]
    volume = instance(hub, running)["volume"]
    assert volume["size_gb"] == 1 and volume["enforced"] is True and volume["path"] == "work/"
    write = "dd if=/dev/zero of=work/filler bs=1M count=1100 status=none"

    full = client.ssh(LOGIN, write)
    assert full.returncode != 0 and "No space left on device" in full.stderr
    assert client.ssh(LOGIN, "rm work/filler").returncode == 0

    def expand(add_gb):
        path = f"/instances/{USER}/{INSTANCE}/volume/expand"
        return hub.atelier("POST", path, token, json={"add_gb": add_gb})

    refused = expand(0)
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "add_gb"
    assert instance(hub, running)["volume"]["size_gb"] == 1  # nothing changed

    grown = expand(1)
    assert grown.status_code == 200, grown.text
    assert grown.json()["volume"]["size_gb"] == 2
    assert instance(hub, running)["status"] == "running"  # online
    written = client.ssh(LOGIN, write)
    assert written.returncode == 0, written.stderr
    assert instance(hub, running)["volume"]["used_bytes"] >= 1100 * 1024**2
    assert client.ssh(LOGIN, "rm work/filler").returncode == 0


def test_a_hub_restart_keeps_the_running_instance_and_its_volume(hub, running):
    client, token = running["client"], running["token"]
    assert client.ssh(LOGIN, "echo kept > work/marker").returncode == 0
    pid = hub.lab_pid(USER, INSTANCE)
    hub.restart()
    assert instance(hub, running)["status"] == "running"
    assert hub.lab_pid(USER, INSTANCE) == pid
    hub.wait_for(
        lambda: lab_status(hub, USER, INSTANCE, token).status_code == 200,
        30,
        "JupyterLab through the new proxy",
    )
    hub.wait_for(lambda: client.ssh(LOGIN, "true").returncode == 0, 30, "the new SSH gateway")
    marker = client.ssh(LOGIN, "cat work/marker")
    assert (marker.returncode, marker.stdout) == (0, "kept\n"), marker.stderr


def test_a_stopped_instance_keeps_its_volume_files(hub, running):
    client, token = running["client"], running["token"]
    stopped = hub.atelier("POST", f"/instances/{USER}/{INSTANCE}/stop", token)
    assert stopped.json()["status"] == "stopped"
    assert hub.atelier("POST", f"/instances/{USER}/{INSTANCE}/start", token).json()["status"] == (
        "running"
    )
    marker = client.ssh(LOGIN, "cat work/marker")
    assert (marker.returncode, marker.stdout) == (0, "kept\n"), marker.stderr


def test_deleting_the_instance_deletes_its_volume(hub, running):
    token = running["token"]
    deleted = hub.atelier("DELETE", f"/instances/{USER}/{INSTANCE}?confirm=delete-volume", token)
    assert deleted.status_code == 204, deleted.text
    assert hub.atelier("GET", "/quotas", token).json()["volume_gb"]["used"] == 0
    body = {"name": INSTANCE, "image": BASE, "spec": "cpu.2u4g", "volume_gb": 1}
    again = hub.atelier("POST", "/instances", token, json=body)
    assert again.status_code == 201 and again.json()["volume"]["size_gb"] == 1, again.text
    work = requests.get(
        f"{hub.url}/user/{USER}/{INSTANCE}/api/contents/work",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert work.status_code == 200 and work.json()["content"] == [], work.text  # a new one


def test_a_deleted_users_name_inherits_nothing(hub):
    """Deleting a user deletes their instances and volumes (JupyterHub's delete, then the
    backend forgets what it kept for them): a new user of the name starts from nothing."""
    token = hub.add_user("hana")
    hub.start("hana", "notes", token, {**CPU_OPTIONS, "volume_gb": 1})
    contents = f"{hub.url}/user/hana/notes/api/contents/work"
    written = requests.put(
        f"{contents}/diary.txt",
        json={"type": "file", "format": "text", "content": "mine"},
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert written.status_code == 201, written.text
    deleted = hub.api("DELETE", "/users/hana")
    assert deleted.status_code == 204, deleted.text
    token = hub.add_user("hana")
    hub.start("hana", "notes", token, {**CPU_OPTIONS, "volume_gb": 1})
    work = requests.get(contents, headers={"Authorization": f"token {token}"}, timeout=30)
    assert work.status_code == 200 and work.json()["content"] == [], work.text


# auto-stop ------------------------------------------------------------------------------------


def test_autostop_stops_the_instance_on_time(hub):  # moved from test_instances_e2e
    token = hub.add_user("gina")
    options = {**CPU_OPTIONS, "autostop_hours": 0.002}  # 7.2 seconds
    hub.start("gina", "short", token, options)
    hub.wait_for(lambda: not hub.servers("gina")["short"]["ready"], timeout=40, what="auto-stop")
    assert "Auto-stopping gina:short" in hub.log_text()
    query = "/audit?resource=gina/short&action=stopNotebook"  # written once the stop completes
    stops = hub.wait_for(lambda: hub.atelier("GET", query).json()["events"], what="audit")
    assert [(e["actor"], e["result"]) for e in stops] == [("service:autostop", "success")]
