"""Idle culling by jupyterhub-idle-culler: an idle instance stops, a busy kernel keeps one alive."""

import asyncio
import json
import time
import uuid

import pytest
import requests
from conftest import BASE, Hub
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

pytestmark = pytest.mark.e2e
OPTIONS = {"image": BASE, "spec": "cpu.2u4g"}


@pytest.fixture(scope="module")
def culling_hub(envs_dir):
    hub = Hub(
        envs_dir, culling={"idle_minutes": 0.2, "every_seconds": 3, "activity_interval_seconds": 3}
    )
    yield hub
    hub.stop()


async def start_busy_cell(hub, user, name, token, code):
    """Start a kernel and run `code` in it; return once the kernel reports busy."""
    base = f"{hub.url}/user/{user}/{name}/api/kernels"
    headers = {"Authorization": f"token {token}"}
    kernel = requests.post(base, headers=headers, json={}, timeout=30).json()["id"]
    url = f"{base.replace('http', 'ws', 1)}/{kernel}/channels"
    socket = await websocket_connect(HTTPRequest(url, headers=headers))
    session = uuid.uuid4().hex
    header = {
        "msg_id": uuid.uuid4().hex,
        "session": session,
        "username": user,
        "msg_type": "execute_request",
        "version": "5.3",
    }
    await socket.write_message(
        json.dumps(
            {
                "header": header,
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                },
            }
        )
    )
    while True:
        message = json.loads(await socket.read_message())
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "busy":
            break
    socket.close()


def test_idle_instance_is_culled_and_busy_kernel_is_not(culling_hub):
    hub = culling_hub
    token = hub.add_user("ivy")
    for name in ("busy", "idle"):
        hub.start("ivy", name, token, OPTIONS)
    asyncio.run(start_busy_cell(hub, "ivy", "busy", token, "import time; time.sleep(600)"))

    hub.wait_for(lambda: not hub.servers("ivy")["idle"]["ready"], timeout=90, what="idle culled")
    assert hub.servers("ivy")["busy"]["ready"], "the instance running a cell was culled"
    assert "Culling server ivy/idle" in hub.log_text()
    query = "/audit?resource=ivy/idle&action=stopNotebook"  # written once the stop completes
    culled = hub.wait_for(lambda: hub.atelier("GET", query).json()["events"], what="audit")
    assert [(e["actor"], e["result"]) for e in culled] == [("service:idle-culler", "success")]
    time.sleep(18)  # well past the idle timeout (12 s), while the cell still runs
    assert hub.servers("ivy")["busy"]["ready"]
