"""Instances outlive the hub: stopped (SIGTERM, from a script) or killed (`kill -9`), the hub
comes back and picks up its running instances; its services and proxy do not linger."""

import signal
import time
from pathlib import Path

import pytest
import requests
from conftest import BASE, FAKE_GPU, Hub
from test_ssh_e2e import Client

pytestmark = pytest.mark.e2e
USER = "olive"
LOGIN = f"{USER}+lab"


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ScriptedHub(Hub):
    """`atelier run &` in a script: SIGINT is ignored, by the hub and every child of it."""

    def launch(self) -> None:
        super().launch(preexec_fn=ignore_sigint)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def services_of(hub: Hub) -> list[int]:
    """The hub's managed services (Atelier service, auto-stop, SSH gateway, idle culler) and
    its proxy."""
    services = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if parent == hub.process.pid and b"atelier.hub.app.managed" in command:
            services.append(int(entry.name))
    assert len(services) == 4, services
    return [*services, int((hub.dir / "data" / "proxy.pid").read_text())]


def gpu_instance(hub: Hub, token: str, name: str, spec: str) -> requests.Response:
    options = {"image": FAKE_GPU, "spec": spec}
    return hub.api("POST", f"/users/{USER}/servers/{name}", token, json=options)


def assert_picked_up(hub: Hub, token: str, client: Client, pid: int) -> None:
    """The restarted hub serves the same running instance: JupyterLab through the proxy,
    SSH through the gateway onto its work volume, and its GPU still held."""
    assert hub.servers(USER)["lab"]["ready"] and hub.servers(USER)["lab"]["state"]["pid"] == pid
    status = f"{hub.url}/user/{USER}/lab/api/status"
    headers = {"Authorization": f"token {token}"}
    hub.wait_for(
        lambda: requests.get(status, headers=headers, timeout=10).status_code == 200,
        30,
        "JupyterLab through the new proxy",
    )
    hub.wait_for(lambda: client.ssh(LOGIN, "true").returncode == 0, 30, "the new SSH gateway")
    mounted = client.ssh(LOGIN, "findmnt", "-n", "-o", "FSTYPE", "-T", "work")
    assert mounted.stdout.strip() == "xfs", mounted.stderr
    refused = gpu_instance(hub, token, "more", "gpu.2xa100.16u128g")
    assert refused.status_code == 400 and "1 is free" in refused.json()["message"]


def test_instances_outlive_the_hub_stopped_from_a_script_or_killed(envs_dir, tmp_path):
    hub = ScriptedHub(envs_dir, culling={"idle_minutes": 60})
    try:
        token = hub.add_user(USER)
        client = Client(hub, tmp_path, "laptop")
        key = hub.atelier(
            "POST", "/keypairs", token, json={"name": "laptop", "public_key": client.public}
        )
        assert key.status_code == 201, key.text
        assert gpu_instance(hub, token, "lab", "gpu.1xa100.8u64g").status_code in (201, 202)
        hub.wait_for(lambda: hub.servers(USER)["lab"]["ready"], what="lab ready")
        pid = hub.servers(USER)["lab"]["state"]["pid"]
        access = {"enabled": True, "keypairs": [key.json()["id"]], "allowed_cidrs": ["127.0.0.0/8"]}
        assert hub.atelier("PATCH", f"/instances/{USER}/lab", token, json={"ssh": access}).ok
        assert client.ssh(LOGIN, "true").returncode == 0

        # SIGTERM, with SIGINT ignored: the hub stops in time and takes its processes along
        services = services_of(hub)
        assert hub.halt() < 15
        assert alive(pid)
        assert not [p for p in services if alive(p)]
        hub.launch()
        hub.wait_for(hub.sign_in, 60, "the hub to start again")
        assert_picked_up(hub, token, client, pid)

        # kill -9: the services end with the hub; the proxy goes on serving until the next
        # hub replaces it
        *services, proxy = services_of(hub)
        hub.halt(kill=True)
        hub.wait_for(lambda: not [p for p in services if alive(p)], 5, "services to end")
        assert alive(pid) and alive(proxy)
        hub.launch()
        hub.wait_for(hub.sign_in, 60, "the hub to start again")
        assert not alive(proxy)
        assert_picked_up(hub, token, client, pid)

        # and the picked-up instance stops for good, releasing its GPU
        assert hub.api("DELETE", f"/users/{USER}/servers/lab", token).status_code in (202, 204)
        hub.wait_for(lambda: not hub.servers(USER)["lab"]["ready"], what="lab stopped")
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(pid)
        assert gpu_instance(hub, token, "more", "gpu.2xa100.16u128g").status_code in (201, 202)
    finally:
        hub.stop()


class StoppingHub(ScriptedHub):
    run_options = ("--stop-instances-on-exit",)


def test_the_operator_may_have_instances_stop_with_the_hub(envs_dir):
    hub = StoppingHub(envs_dir)
    try:
        token = hub.add_user(USER)
        pid = hub.start(USER, "lab", token, {"image": BASE, "spec": "cpu.2u4g"})
        hub.halt()  # as long as stopping the instance takes
        assert not alive(pid)
    finally:
        hub.stop()
