"""What the Docker backend adds to the contract, on the tests' own engine: the container is
confined as planned (seen from the engine and from inside), one instance's user cannot steer
the gateway into another's container, containers outlive a killed hub, `atelier run` reports
containers it does not know, and `atelier images build` builds for the engine."""

from __future__ import annotations

import subprocess

import pytest
import requests
from conftest import BASE, environ_of, free_port
from dockerhub import container_of, docker_hub
from test_ssh_e2e import reachable_over_ssh, wait_for_port

from atelier.hub.store.store import Store
from atelier.spawner.docker import containers, images

pytestmark = pytest.mark.e2e
PIDS = 256
OPTIONS = {"image": BASE, "spec": "cpu.2u4g"}


@pytest.fixture(scope="module")
def hub(envs_dir, docker_engine, docker_images):
    hub = docker_hub(envs_dir, docker_engine, backend_options={"pids_limit": PIDS})
    yield hub
    hub.stop()


def test_the_container_is_confined_as_planned(hub, engine, alice):
    found = container_of(hub, engine, "alice", "box")
    assert found["Name"] == "/atelier-alice--box"
    assert found["Image"] == images.digest(engine, BASE)  # started by digest
    assert found["Config"]["User"] == "1000:1000"
    host = found["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and not host["Privileged"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == PIDS and host["NetworkMode"] == "host"
    assert host["NanoCpus"] == 2 * 10**9 and host["Memory"] == 4 * 1024**3
    inside = alice["client"].ssh(
        "alice+box",
        "id -u; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; "
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
    )
    assert inside.returncode == 0, inside.stderr
    uid, *status, pids = inside.stdout.split()[:6]
    assert uid == "1000" and pids == str(PIDS)
    assert dict(zip(status[::2], status[1::2], strict=True)) == {
        "CapEff:": "0000000000000000",
        "NoNewPrivs:": "1",
    }


def test_an_instance_sees_only_its_own_endpoint_and_no_hub_state(hub, alice, bob):
    listed = bob["client"].ssh("bob+box", "ls -A /run/atelier-ssh; ls -A work")
    assert listed.returncode == 0 and listed.stdout == "endpoint\n", listed.stdout
    hub_state = bob["client"].ssh("bob+box", f"ls {hub.dir} {hub.shared_dir}")
    assert hub_state.returncode != 0  # the host's directories are not in the container


def test_a_link_to_another_instances_endpoint_does_not_lead_there(hub, bob, tmp_path):
    """Mallory replaces her endpoint with a link to the host path of Bob's: the gateway,
    which resolves it on the host, would log her in to Bob's container. It refuses."""
    mallory = reachable_over_ssh(hub, "mallory", "box", tmp_path)
    theirs = hub.shared_dir / "endpoints" / hub.account("bob") / "box" / "endpoint"
    assert theirs.is_socket()
    swapped = mallory["client"].ssh(
        "mallory+box", f"rm /run/atelier-ssh/endpoint && ln -s {theirs} /run/atelier-ssh/endpoint"
    )
    assert swapped.returncode == 0, swapped.stderr
    attempt = mallory["client"].ssh("mallory+box", "touch work/mallory-was-here")
    assert attempt.returncode != 0
    assert bob["client"].ssh("bob+box", "ls work").stdout == ""  # Bob's volume untouched
    assert "answered from outside its container" in hub.log_text()  # the gateway's words


def test_containers_outlive_a_killed_hub_and_are_picked_up(hub, engine, bob):
    before = container_of(hub, engine, "bob", "box")
    hub.restart(kill=True)
    after = container_of(hub, engine, "bob", "box")
    assert after["Id"] == before["Id"] and after["State"]["Running"]
    lab = requests.get(
        f"{hub.url}/user/bob/box/api/status",
        headers={"Authorization": f"token {bob['token']}"},
        timeout=30,
    )
    assert lab.status_code == 200
    hub.wait_for(lambda: bob["client"].ssh("bob+box", "true").returncode == 0, 30, "SSH again")


def test_atelier_run_reports_containers_it_does_not_know(hub, engine):
    """A container of this hub's for an instance it no longer has is reported (and left to
    the operator); another hub's on the same engine is not this hub's business."""
    ours = containers.hub_id(str(hub.dir / "data"))

    def stray(hub_id: str, owner: str):
        labels = containers.labels(hub_id, owner, "lost")
        return engine.containers.run(
            images.digest(engine, BASE),
            ["sleep", "600"],
            name=containers.container_name(owner, "lost"),
            labels=labels,
            network_mode="none",
            detach=True,
        )

    strays = [stray(ours, "ghost"), stray("another-hub", "elsewhere")]
    try:
        hub.restart()
        hub.wait_for(lambda: "ghost/lost" in hub.log_text(), 30, "the stray's report")
        line = next(line for line in hub.log_text().splitlines() if "ghost/lost" in line)
        assert line.startswith("Atelier: 1 running for instances it does not know")
        assert "atelier-ghost--lost" in line and "elsewhere" not in line
        assert all(engine.api.inspect_container(s.id)["State"]["Running"] for s in strays)
    finally:
        for container in strays:
            container.remove(force=True)


def test_images_build_builds_for_the_engine_and_the_catalog_records_the_digest(hub, engine):
    output = hub.cli("images", "build", BASE)
    assert f"[1/1] {BASE}" in output
    digest = images.digest(engine, BASE)
    assert digest.startswith("sha256:")
    assert hub.atelier("GET", f"/images/{BASE}").json()["digest"] == digest
    assert digest in hub.cli("images", "list")


def test_an_instance_starts_only_from_the_recorded_digest(hub):
    """The image the catalog recorded is gone from the engine (removed, or its tag moved to
    another build): the start is refused, naming it, and nothing runs."""
    store = Store(f"sqlite:///{hub.dir / 'data' / 'atelier.sqlite'}")
    recorded = hub.atelier("GET", f"/images/{BASE}").json()["digest"]
    store.record_digest(BASE, "sha256:" + "0" * 64)
    try:
        token = hub.add_user("carol")
        response = hub.api("POST", "/users/carol/servers/lab", token, json=OPTIONS)
        assert response.status_code == 400, response.text
        assert "which this machine's Docker engine no longer has" in response.json()["message"]
        assert not hub.servers("carol")["lab"]["ready"]
    finally:
        store.record_digest(BASE, recorded)
    started = hub.api("POST", "/users/carol/servers/lab", token, json=OPTIONS)
    assert started.status_code in (201, 202), started.text


def test_notebook_code_in_the_container_reaches_the_atelier_api(alice):
    """The SDK inside the instance, with the instance's own URL and token (host network)."""
    code = "from atelier.sdk import Client; print([i['name'] for i in Client().instances()])"
    listed = alice["client"].ssh("alice+box", f'python -c "{code}"')
    assert (listed.returncode, listed.stdout) == (0, "['box']\n"), listed.stderr


def test_sftp_and_local_forwarding_reach_the_container(hub, alice):
    """What VS Code and PyCharm use besides a shell: SFTP into work/, and `ssh -L` to a
    port inside the instance (its own JupyterLab)."""
    client, directory = alice["client"], alice["directory"]
    (directory / "notes.txt").write_text("sftp works\n")
    batch = directory / "batch"
    batch.write_text(f"put {directory}/notes.txt work/\nget work/notes.txt {directory}/b\n")
    login = ["-P", str(hub.ssh_port), "-b", str(batch), "alice+box@127.0.0.1"]
    sftp = subprocess.run(
        ["sftp", *client.options(), *login],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sftp.returncode == 0, sftp.stderr
    assert (directory / "b").read_text() == "sftp works\n"

    lab = environ_of(hub.lab_pid("alice", "box"))["JUPYTERHUB_SERVICE_URL"]
    local, remote = free_port(), int(lab.rsplit(":", 1)[1].split("/", 1)[0])
    tunnel = client.forward("alice+box", local, remote)
    try:
        wait_for_port(local)
        status = requests.get(f"http://127.0.0.1:{local}/user/alice/box/api", timeout=30)
        assert status.status_code == 200 and "version" in status.json()
    finally:
        tunnel.kill()
