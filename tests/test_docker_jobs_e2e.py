"""Training jobs on the Docker backend, for real, on the tests' own engine: a job of two nodes
is two containers of the CPU PyTorch image on the job's own network, confined as instances
are (uid 1000, no capabilities, no new privileges), in the instance's work volume, forming one
torch.distributed group; its containers and network are gone once it completes, and a stop
takes them down mid-run. One hub, one instance."""

from __future__ import annotations

import time

import docker
import pytest
from conftest import EXAMPLE, TORCH, uid_of
from dockerhub import docker_hub

from atelier.spawner.docker import jobs as docker_jobs

pytestmark = pytest.mark.e2e
SPEC = "cpu.2u4g"


@pytest.fixture(scope="module")
def hub(envs_dir, docker_engine, docker_torch_image):
    hub = docker_hub(envs_dir, docker_engine)
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def alice(hub):
    token = hub.add_user("alice")
    hub.start("alice", "lab", token, {"image": TORCH, "spec": SPEC})
    hub.upload("alice", "lab", EXAMPLE, "train.py")
    return token


def submit(hub, token, name: str, args: list[str]) -> str:
    body = {
        "name": name,
        "image": TORCH,
        "spec": SPEC,
        "volume": "lab",
        "script": "train.py",
        "nodes": 2,
        "processes_per_node": 1,
        "args": args,
    }
    response = hub.atelier("POST", "/jobs", token, json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def job(hub, token, name: str) -> dict:
    return hub.atelier("GET", f"/jobs/alice/{name}", token).json()


def ended(hub, token, name: str, timeout: float = 120) -> dict:
    def finished():
        now = job(hub, token, name)
        return now if now["status"] in ("completed", "failed", "stopped") else None

    return hub.wait_for(finished, timeout, f"job {name} to end")


def log(hub, token, name: str, rank: int) -> str:
    return hub.atelier("GET", f"/jobs/alice/{name}/logs", token, params={"rank": rank}).text


def nodes_of(engine, id: str) -> list[dict]:
    """The job's containers, running or not."""
    return engine.api.containers(all=True, filters={"label": f"{docker_jobs.LABEL_JOB}={id}"})


def networks_of(engine, id: str) -> list[str]:
    names = [n["Name"] for n in engine.api.networks(names=[docker_jobs.network_name(id)])]
    return [name for name in names if name == docker_jobs.network_name(id)]


def running_nodes(engine, id: str) -> list[dict] | None:
    try:
        found = [engine.api.inspect_container(c["Id"]) for c in nodes_of(engine, id)]
    except docker.errors.NotFound:  # an attempt's container removed between list and look
        return None
    return found if len(found) == 2 and all(c["State"]["Running"] for c in found) else None


def test_two_containers_form_one_group_confined_and_are_gone_after(hub, engine, alice):
    started = time.monotonic()
    id = submit(hub, alice, "ddp", ["--steps=40", "--step-seconds=0.1"])
    nodes = hub.wait_for(lambda: running_nodes(engine, id), 60, "both nodes' containers")
    assert sorted(c["Name"] for c in nodes) == [f"/atelier-job-{id}-a1-n{n}" for n in (0, 1)]
    for container in nodes:
        assert container["Config"]["User"] == "1000:1000"
        assert uid_of(container["State"]["Pid"]) == 1000  # as the host sees it
        host = container["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and not host["Privileged"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["NetworkMode"] == f"atelier-job-{id}" and host["NanoCpus"] == 2 * 10**9
        assert host["Memory"] == 4 * 1024**3
        assert container["Config"]["Image"].startswith("sha256:")  # by digest
    assert engine.api.inspect_network(f"atelier-job-{id}")["Internal"]
    usage = hub.atelier("GET", "/jobs/alice/ddp/metrics", alice).json()["usage"]
    assert usage["memory_bytes"] > 0 and usage["cpu_seconds"] > 0, usage  # the engine's stats

    done = ended(hub, alice, "ddp")
    assert done["status"] == "completed", (done, log(hub, alice, "ddp", 0))
    for rank in (0, 1):
        assert "all_reduce world_size=2 sum=3.0" in log(hub, alice, "ddp", rank)
    metrics = hub.atelier("GET", "/jobs/alice/ddp/metrics", alice).json()
    assert [step for step, _ in metrics["series"]["loss"]][:3] == [1, 2, 3], metrics
    output = hub.volume("alice", "lab") / "jobs" / "ddp"
    assert any(output.rglob("*")), "the job wrote nothing to its output on the volume"
    assert nodes_of(engine, id) == [] and networks_of(engine, id) == []
    print(f"submitted to completed: {time.monotonic() - started:.1f} s")


def test_a_stop_takes_its_containers_and_network_down_mid_run(hub, engine, alice):
    id = submit(hub, alice, "long", ["--steps=1000", "--step-seconds=0.1"])
    hub.wait_for(lambda: running_nodes(engine, id), 60, "both nodes' containers")
    started = time.monotonic()
    assert hub.atelier("POST", "/jobs/alice/long/stop", alice).status_code == 202
    assert ended(hub, alice, "long", 60)["status"] == "stopped"
    assert nodes_of(engine, id) == [] and networks_of(engine, id) == []
    print(f"stop to stopped: {time.monotonic() - started:.1f} s")
