"""Code run in a kernel of a running instance, as its user runs a notebook cell: through the
hub's proxy, over JupyterLab's kernel channels."""

import asyncio
import json
import uuid

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


async def execute(hub, user, name, token, code) -> str:
    """Run `code` in a new kernel of the instance; what it printed."""
    base = f"{hub.url}/user/{user}/{name}/api/kernels"
    headers = {"Authorization": f"token {token}"}
    kernel = requests.post(base, headers=headers, json={}, timeout=30).json()["id"]
    url = f"{base.replace('http', 'ws', 1)}/{kernel}/channels"
    socket = await websocket_connect(HTTPRequest(url, headers=headers))
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "session": uuid.uuid4().hex,
        "username": user,
        "msg_type": "execute_request",
        "version": "5.3",
    }
    content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
    request = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
    await socket.write_message(json.dumps({**request, "channel": "shell"}))
    output = []
    while True:
        message = json.loads(await asyncio.wait_for(socket.read_message(), 60))
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "stream":
            output.append(message["content"]["text"])
        elif message["msg_type"] == "error":
            raise AssertionError("\n".join(message["content"]["traceback"]))
        elif message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            socket.close()
            return "".join(output)


def run_in(hub, user, name, token, code) -> str:
    return asyncio.run(execute(hub, user, name, token, code))
