"""Deployments on the local backend, for real: the example trained by a training job, its
output deployed, called through the hub's address with an app key, upgraded and scaled under
a steady stream of requests with no request failing, a version that never becomes ready
leaving the old one serving, and rollback."""

import json
import os
import subprocess
import threading
import time

import pytest
import requests
from conftest import TORCH, image_envs
from test_jobs_e2e import ended, submit, with_example

pytestmark = pytest.mark.e2e


OIP_CLIENT = """
import asyncio, sys
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def main(base, key):
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    headers = {"Authorization": f"Bearer {key}"}
    assert await client.is_server_ready(base, headers=headers)
    x = InferInput("x", [2, 1], "FP32", [1.0, 2.0])
    answer = await client.infer(base, InferRequest("line", [x]), "line", headers=headers)
    print(*answer.outputs[0].data)
    await client.close()

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def alice(hub):
    token = with_example(hub, "alice", "lab", hub.add_user("alice"))
    response = submit(hub, token, name="fit", processes_per_node=2, args=["--steps=40"])
    assert response.status_code == 201, response.text
    assert ended(hub, token, "fit")["status"] == "completed"
    return token


def deployment(hub, token, name, owner="alice") -> dict:
    return hub.atelier("GET", f"/deployments/{owner}/{name}", token).json()


def settled(hub, token, name, status="running", timeout=120, owner="alice") -> dict:
    """The deployment once it is `status` with nothing to say (or has failed)."""

    def done():
        now = deployment(hub, token, name, owner)
        return now if now["status"] in (status, "failed") and not now["reason"] else None

    try:
        return hub.wait_for(done, timeout, f"deployment {name} {status}")
    except AssertionError:
        said = events(hub, token, name, owner)
        raise AssertionError((deployment(hub, token, name, owner), said)) from None


def events(hub, token, name, owner="alice") -> list[str]:
    response = hub.atelier("GET", f"/deployments/{owner}/{name}/events", token)
    return [event["message"] for event in response.json()["events"]]


def infer(hub, name, key, values, owner="alice", timeout=30) -> requests.Response:
    body = {
        "inputs": [{"name": "x", "shape": [len(values), 1], "datatype": "FP32", "data": values}]
    }
    return requests.post(
        f"{hub.url}/deployments/{owner}/{name}/v2/models/{name}/infer",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout,
    )


def test_a_trained_model_is_served_through_the_hub_with_an_app_key(hub, alice):
    body = {"name": "line", "image": TORCH, "spec": "cpu.2u8g", "job": "fit", "replicas": 2}
    response = hub.atelier("POST", "/deployments", alice, json=body)
    assert response.status_code == 201, response.text
    assert (
        response.json()["model"] == "jobs/fit"
        and response.json()["url"] == "/deployments/alice/line"
    )
    running = settled(hub, alice, "line")
    assert running["status"] == "running", (running, events(hub, alice, "line"))
    key = hub.atelier("POST", "/deployments/alice/line/keys", alice).json()
    assert infer(hub, "line", "ak_000000000000.wrong", [1.0]).status_code == 401
    answer = infer(hub, "line", key["key"], [1.0, 2.0])
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert [round(v) for v in output["data"]] == [5, 8]  # y = 3x + 2, learnt
    ready = requests.get(
        f"{hub.url}/deployments/alice/line/v2/health/ready",
        headers={"Authorization": f"Bearer {key['key']}"},
        timeout=10,
    )
    assert ready.status_code == 200 and ready.json()["ready"] is True
    python = str(image_envs() / TORCH / "bin" / "python")
    base, secret = f"{hub.url}/deployments/alice/line", key["key"]
    said = subprocess.run(  # KServe's own OIP v2 client, unchanged: only the base URL is ours
        [python, "-c", OIP_CLIENT, base, secret], capture_output=True, text=True, timeout=120
    )
    assert said.returncode == 0, said.stderr
    assert [round(float(v)) for v in said.stdout.split()] == [5, 8]


def put(hub, path: str, text: str, user="alice", instance="lab") -> None:
    """A file in the instance's work volume, the user's own as if they had written it."""
    target = hub.volume(user, instance) / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    for made in (target, *target.relative_to(hub.volume(user, instance)).parents):
        os.chown(hub.volume(user, instance) / made, *hub.volume_owner(user))


PREDICTOR = """
import numpy, time

class Predictor:
    def __init__(self, model_dir):
        {load}

    def predict(self, inputs):
        time.sleep({seconds})
        return {{"y": numpy.asarray(inputs["x"]) * {factor}}}
"""


def predictor(hub, path: str, factor: float, seconds: float = 0, load="pass", **where) -> None:
    text = PREDICTOR.format(factor=factor, seconds=seconds, load=load)
    put(hub, f"{path}/predictor.py", text, **where)


class Load:
    """Requests one after the other from two clients until stopped: every answer counted."""

    def __init__(self, hub, name: str, key: str):
        self.hub, self.name, self.key = hub, name, key
        self.answers: list[float] = []
        self.failures: list[str] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self.fire) for _ in range(2)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def fire(self):
        while not self.done.is_set():
            try:
                answer = infer(self.hub, self.name, self.key, [1.0])
            except requests.RequestException as error:
                self.failures.append(repr(error))
                continue
            if answer.status_code != 200:
                self.failures.append(f"{answer.status_code} {answer.text[:300]}")
            else:
                self.answers.append(answer.json()["outputs"][0]["data"][0])

    def __exit__(self, *exc):
        self.done.set()
        for thread in self.threads:
            thread.join()


@pytest.fixture(scope="module")
def served(hub, alice):
    """A deployment of a predictor answering 10x, with an app key."""
    predictor(hub, "models/ten", 10)
    body = {
        "name": "ten",
        "image": TORCH,
        "spec": "cpu.2u8g",
        "volume": "lab",
        "model": "models/ten",
    }
    assert hub.atelier("POST", "/deployments", alice, json=body).status_code == 201
    assert settled(hub, alice, "ten")["status"] == "running", events(hub, alice, "ten")
    return hub.atelier("POST", "/deployments/alice/ten/keys", alice).json()["key"]


def change(hub, token, name, **fields) -> dict:
    response = hub.atelier("PATCH", f"/deployments/alice/{name}", token, json=fields)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_upgrade_and_scaling_under_load_fail_no_request(hub, alice, served):
    predictor(hub, "models/twenty", 20)
    with Load(hub, "ten", served) as load:
        time.sleep(1)
        assert change(hub, alice, "ten", model="models/twenty")["version"] == 2
        upgraded = hub.wait_for(
            lambda: (
                (d := deployment(hub, alice, "ten"))["serving_version"] == 2
                and d["status"] == "running"
                and len(d["replicas_now"]) == 1
                and d
            ),
            120,
            "version 2 to serve alone",
        )
        change(hub, alice, "ten", replicas=3)
        hub.wait_for(lambda: len(ready_replicas(hub, alice, "ten")) == 3, 120, "3 replicas")
        change(hub, alice, "ten", replicas=1)
        hub.wait_for(lambda: len(deployment(hub, alice, "ten")["replicas_now"]) == 1, 60, "1")
        time.sleep(1)
    assert load.failures == [], (load.failures[:5], router_log(hub))
    assert len(load.answers) > 50
    metrics = hub.wait_for(  # the router's counts reach the store every 2 s
        lambda: (
            (m := deployment(hub, alice, "ten")["metrics"])["requests"] >= len(load.answers) and m
        ),
        10,
        "the request metrics",
    )
    assert (
        metrics["errors"] == 0 and 0 < metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p99"]
    )
    assert load.answers[0] == 10.0 and load.answers[-1] == 20.0
    switch = load.answers.index(20.0)
    assert set(load.answers[switch:]) == {20.0}  # the traffic moved once, for every request
    assert upgraded["versions"][-1]["model"] == "models/twenty"
    said = events(hub, alice, "ten")
    assert "version 2 serves every request" in said, said


def router_log(hub) -> list[str]:
    return [line for line in hub.log_text().splitlines() if "atelier.hub.router" in line][-20:]


def ready_replicas(hub, token, name) -> list[dict]:
    return [r for r in deployment(hub, token, name)["replicas_now"] if r["phase"] == "ready"]


def test_a_version_that_never_gets_ready_leaves_the_old_one_serving(hub, alice, served):
    predictor(hub, "models/broken", 30, load="raise RuntimeError('weights are missing')")
    before = deployment(hub, alice, "ten")
    with Load(hub, "ten", served) as load:
        change(hub, alice, "ten", model="models/broken")
        failed = hub.wait_for(
            lambda: (d := deployment(hub, alice, "ten"))["reason"] and d, 120, "the failure"
        )
    assert load.failures == [], (load.failures[:5], router_log(hub))
    assert set(load.answers) == {before["versions"][-1] and 20.0}
    assert failed["status"] == "running" and failed["serving_version"] == before["version"]
    assert "weights are missing" in failed["reason"], failed["reason"]
    assert failed["versions"][-1]["failed"]


def test_rollback_serves_the_version_before(hub, alice, served):
    response = hub.atelier("POST", "/deployments/alice/ten/rollback", alice)
    assert response.status_code == 202, response.text
    settled(hub, alice, "ten")
    hub.wait_for(
        lambda: infer(hub, "ten", served, [1.0]).json()["outputs"][0]["data"] == [10.0],
        60,
        "version 1's answers",
    )


def test_an_instance_whose_volume_serves_a_deployment_is_not_deleted(hub, alice, served):
    remove = {"remove": True, "confirm": "delete-volume"}
    response = hub.api("DELETE", "/users/alice/servers/lab", alice, json=remove)
    assert response.status_code == 409, response.text
    assert "deployment" in response.json()["message"]
    assert hub.servers("alice")["lab"]["ready"] and hub.volume("alice", "lab").is_dir()
    assert infer(hub, "ten", served, [1.0]).status_code == 200


def test_a_request_past_the_timeout_gets_504(hub, alice):
    predictor(hub, "models/slow", 1, seconds=5)
    body = {
        "name": "slow",
        "image": TORCH,
        "spec": "cpu.2u8g",
        "volume": "lab",
        "model": "models/slow",
        "timeout_seconds": 1,
    }
    assert hub.atelier("POST", "/deployments", alice, json=body).status_code == 201
    settled(hub, alice, "slow")
    key = hub.atelier("POST", "/deployments/alice/slow/keys", alice).json()["key"]
    started = time.monotonic()
    answer = infer(hub, "slow", key, [1.0])
    assert answer.status_code == 504 and "within 1 s" in answer.text
    assert time.monotonic() - started < 4


def test_batch_inference_runs_the_model_over_a_directory_as_a_job(hub, alice):
    for i in range(24):
        body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [float(i)]}]}
        put(hub, f"batch/in/{i:02}.json", json.dumps(body))
    put(hub, "batch/in/broken.json", "{not json")
    body = {
        "name": "score", "image": TORCH, "spec": "cpu.2u8g", "volume": "lab",
        "batch": {"model": "jobs/fit"}, "inputs": ["batch/in"], "output": "batch/out",
        "processes_per_node": 2,
    }  # fmt: skip
    response = hub.atelier("POST", "/jobs", alice, json=body)
    assert response.status_code == 201, response.text
    done = ended(hub, alice, "score")
    logged = hub.atelier("GET", "/jobs/alice/score/logs", alice).text
    assert done["status"] == "completed", (done, logged)
    assert "batch done: 24 answered, 1 failed" in logged
    out = hub.volume("alice", "lab") / "batch/out"
    assert json.loads((out / "summary.json").read_text()) == {"done": 24, "failed": 1, "total": 25}
    answer = json.loads((out / "07.json").read_text())
    assert round(answer["outputs"][0]["data"][0]) == 3 * 7 + 2
    assert "JSONDecodeError" in (out / "broken.error.txt").read_text()
    series = hub.atelier("GET", "/jobs/alice/score/metrics", alice).json()["series"]
    assert series["done"][-1][1] == 24 and series["total"][-1][1] == 25
    assert (out / "07.json").stat().st_uid == hub.volume_owner("alice")[0]  # the owner's files
