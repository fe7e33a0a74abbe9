"""The deployments' router forwarding to a replica's Unix socket, without a hub: a replica whose
server binds its socket anew is reached again at the next request (not refused for good), and
an answer larger than the router keeps is a 502, not the router's memory."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from atelier.hub.router import server

KEY = ("ann", "line")
PATH = "v2/models/line/infer"


async def replica(path, body: bytes) -> web.AppRunner:
    async def infer(request):
        return web.Response(body=body)

    app = web.Application()
    app.router.add_post(f"/{PATH}", infer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    return runner


def router_to(path) -> server.Router:
    router = server.Router(store=None)
    router.routes = {KEY: {"id": "d1", "endpoints": [f"unix:{path}"], "timeout": 5}}
    return router


async def forward(router: server.Router) -> web.Response:
    request = make_mocked_request("POST", f"/deployments/ann/line/{PATH}")
    return await router.forward(KEY, request, PATH, b"{}")


async def test_a_replica_whose_socket_is_bound_anew_is_reached_again(tmp_path):
    path = tmp_path / "server.sock"
    first = await replica(path, b"first")
    router = router_to(path)
    try:
        assert (await forward(router)).body == b"first"
        await first.cleanup()
        path.unlink(missing_ok=True)
        second = await replica(path, b"second")
        with pytest.raises(server.NoReplica):  # its kept client reached the old socket
            await forward(router)
        assert (await forward(router)).body == b"second"  # opened again
        await second.cleanup()
    finally:
        for client, _ in router.clients.values():
            await client.close()


async def test_an_answer_over_the_limit_is_a_502(tmp_path, monkeypatch):
    monkeypatch.setattr(server, "MAX_BODY_BYTES", 1 << 20)
    path = tmp_path / "server.sock"
    runner = await replica(path, b"x" * ((1 << 20) + 1))
    router = router_to(path)
    try:
        answer = await forward(router)
        assert answer.status == 502 and b"over 1048576 bytes" in answer.body
        monkeypatch.setattr(server, "MAX_BODY_BYTES", 2 << 20)
        assert len((await forward(router)).body) == (1 << 20) + 1
    finally:
        await runner.cleanup()
        for client, _ in router.clients.values():
            await client.close()
