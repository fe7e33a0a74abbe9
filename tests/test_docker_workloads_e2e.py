"""Training jobs and deployments on the Docker backend, for real, on the tests' own engine: a
job of two nodes is two containers of the CPU PyTorch image on the job's own network, confined
as instances are (uid 1000, no capabilities, no new privileges), in the instance's work
volume, forming one torch.distributed group; its containers and network are gone once it
completes, and a stop takes them down mid-run. A deployment's replicas are containers with no
network, reached through the hub with an app key, upgraded under load with no request
failing; a model that puts a link where its socket was reaches nothing through the router.
One hub, one instance."""

from __future__ import annotations

import socket
import threading
import time

import docker
import pytest
from conftest import EXAMPLE, TORCH, WORK, uid_of
from dockerhub import docker_hub
from test_deployments_e2e import Load, change, deployment, events, infer, predictor, put, settled

from atelier.spawner.docker import jobs as docker_jobs
from atelier.spawner.docker import replicas as docker_replicas

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


def deploy(hub, token, name: str, model: str, replicas: int = 1) -> str:
    body = {"name": name, "image": TORCH, "spec": SPEC, "volume": "lab", "model": model,
            "replicas": replicas}  # fmt: skip
    response = hub.atelier("POST", "/deployments", token, json=body)
    assert response.status_code == 201, response.text
    running = settled(hub, token, name)
    assert running["status"] == "running", (running, events(hub, token, name))
    return response.json()["id"]


def replicas_of(engine, id: str) -> list[dict]:
    label = f"{docker_replicas.LABEL_DEPLOYMENT}={id}"
    listed = engine.api.containers(all=True, filters={"label": label})
    return [engine.api.inspect_container(c["Id"]) for c in listed]


def test_replicas_are_containers_without_network_upgraded_under_load(hub, engine, alice):
    predictor(hub, "models/ten", 10)
    predictor(hub, "models/twenty", 20)
    id = deploy(hub, alice, "ten", "models/ten", replicas=2)
    found = replicas_of(engine, id)
    assert len(found) == 2
    for container in found:
        assert container["Config"]["User"] == "1000:1000"
        assert uid_of(container["State"]["Pid"]) == 1000
        host = container["HostConfig"]
        assert host["NetworkMode"] == "none" and host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"] and not host["Privileged"]
        assert container["Config"]["Image"].startswith("sha256:")
    key = hub.atelier("POST", "/deployments/alice/ten/keys", alice).json()["key"]
    assert infer(hub, "ten", "ak_000000000000.wrong", [1.0]).status_code == 401
    answer = infer(hub, "ten", key, [1.0, 2.0])
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == [10.0, 20.0]

    with Load(hub, "ten", key) as load:
        time.sleep(1)
        change(hub, alice, "ten", model="models/twenty")
        hub.wait_for(
            lambda: (
                (d := deployment(hub, alice, "ten"))["serving_version"] == 2
                and len(d["replicas_now"]) == 2
                and d["status"] == "running"
            ),
            120,
            "version 2 to serve alone",
        )
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert load.answers[0] == 10.0 and load.answers[-1] == 20.0
    assert len(replicas_of(engine, id)) == 2  # version 1's are gone
    assert hub.atelier("DELETE", "/deployments/alice/ten", alice).status_code == 204
    assert replicas_of(engine, id) == []
    assert not list((hub.shared_dir / "serving" / "replicas").glob(f"{id}-*"))


SWAPPING = """
import os, threading, time, numpy

SOCKET = "/run/atelier-serving/server.sock"

class Predictor:
    def __init__(self, model_dir):
        self.dir = model_dir
        threading.Thread(target=self.swap, daemon=True).start()

    def swap(self):
        while not os.path.exists(self.dir + "/swap"):
            time.sleep(0.1)
        os.rename(SOCKET, SOCKET + ".real")
        os.symlink({trap!r}, SOCKET)  # a path on the host, where the router runs
        open(self.dir + "/swapped", "w").close()

    def predict(self, inputs):
        return numpy.asarray(inputs["x"])
"""


@pytest.fixture
def trap():
    """A socket of the host's that records who connects to it (as the engine's would)."""
    path = WORK / "trap.sock"
    path.unlink(missing_ok=True)
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(path))
    listening.listen()
    reached: list[bytes] = []

    def accept():
        while True:
            try:
                connection, _ = listening.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                reached.append(connection.recv(4096))

    threading.Thread(target=accept, daemon=True).start()
    yield path, reached
    listening.close()
    path.unlink(missing_ok=True)


def test_a_link_put_in_place_of_the_replicas_socket_reaches_nothing(hub, alice, trap):
    """The attack: the model's own code swaps its socket for a link to a socket of the
    host's; followed, the router (root) would send the caller's request there."""
    path, reached = trap
    put(hub, "models/swap/predictor.py", SWAPPING.format(trap=str(path)))
    deploy(hub, alice, "swap", "models/swap")
    key = hub.atelier("POST", "/deployments/alice/swap/keys", alice).json()["key"]
    put(hub, "models/swap/swap", "")
    swapped = hub.volume("alice", "lab") / "models" / "swap" / "swapped"
    hub.wait_for(swapped.exists, 30, "the model to swap its socket for a link")
    answer = infer(hub, "swap", key, [1.0])
    assert answer.status_code == 503, answer.text
    time.sleep(0.5)
    assert reached == []
    assert hub.atelier("DELETE", "/deployments/alice/swap", alice).status_code == 204
