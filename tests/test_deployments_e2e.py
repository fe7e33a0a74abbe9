"""Deployments on the local backend, for real: the example trained by a training job, its
output deployed, called through the hub's address with an app key, upgraded and scaled under
a steady stream of requests with no request failing, a version that never becomes ready
leaving the old one serving, and rollback."""

import threading
import time

import pytest
import requests
from conftest import TORCH
from test_jobs_e2e import ended, submit, with_example

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def alice(hub):
    token = with_example(hub, "alice", "lab", hub.add_user("alice"))
    response = submit(hub, token, name="fit", processes_per_node=2, args=["--steps=40"])
    assert response.status_code == 201, response.text
    assert ended(hub, token, "fit")["status"] == "completed"
    return token


def deployment(hub, token, name, owner="alice") -> dict:
    return hub.atelier("GET", f"/deployments/{owner}/{name}", token).json()


def settled(hub, token, name, status="running", timeout=120) -> dict:
    def done():
        now = deployment(hub, token, name)
        return now if now["status"] == status and not now["reason"] or now["status"] == "failed" else None

    return hub.wait_for(done, timeout, f"deployment {name} {status}")


def events(hub, token, name) -> list[str]:
    response = hub.atelier("GET", f"/deployments/alice/{name}/events", token)
    return [event["message"] for event in response.json()["events"]]


def infer(hub, name, key, values, owner="alice", timeout=30) -> requests.Response:
    body = {"inputs": [{"name": "x", "shape": [len(values), 1], "datatype": "FP32", "data": values}]}
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
    assert response.json()["model"] == "jobs/fit" and response.json()["url"] == "/deployments/alice/line"
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
