"""The deployments' router: the hub's address answers `/deployments/<owner>/<name>/v2/...`
here (configurable-http-proxy's extra route to `router_port`, served by the Atelier service's
process beside its API and supervisors), so any Open Inference Protocol v2 client reaches
a deployment at one stable URL, whichever replicas serve it.

A request must carry an app key of that deployment (`Authorization: Bearer <key>`); without
one it gets 401 and reaches no replica. It goes to the ready replica of the serving version
with the fewest requests open (core.rollout decides which those are; the store says, read
again every REFRESH_SECONDS); a replica that refuses or drops the connection before answering
(it is stopping) is skipped and the request tried on another. A request past the
deployment's timeout gets 504. Counts, errors and a latency histogram go to the store every
FLUSH_SECONDS.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random
import time

import aiohttp
from aiohttp import web

from atelier.hub.router import upstream
from atelier.hub.store.store import Store
from atelier.spawner.core import deployments, rollout

log = logging.getLogger(__name__)
REFRESH_SECONDS = 0.5
FLUSH_SECONDS = 2.0
TRIES = 3  # replicas one request may be tried on
MAX_BODY_BYTES = 64 << 20
# not passed on: hop-by-hop headers, the caller's credentials, what aiohttp sets itself
DROPPED = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te"}
DROPPED |= {"trailer", "transfer-encoding", "upgrade", "authorization", "cookie", "host"}
DROPPED |= {"content-length", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"}
DROPPED |= {"x-forwarded-port", "date", "server"}


class NoReplica(Exception):
    """No ready replica took the request."""


def refusal(status: int, message: str, **headers) -> web.Response:
    body = json.dumps({"error": {"code": status, "message": message}})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def unauthorised() -> web.Response:
    return refusal(
        401,
        "send an app key of this deployment: Authorization: Bearer <key>",
        **{"WWW-Authenticate": 'Bearer realm="deployment"'},
    )


class Router:
    def __init__(self, store: Store):
        self.store = store
        self.routes: dict[tuple[str, str], dict] = {}
        self.keys: dict[str, tuple[str, str]] = {}
        self.clients: dict[str, tuple[aiohttp.ClientSession, str]] = {}
        self.open: collections.Counter[str] = collections.Counter()  # endpoint -> requests
        self.counts: dict[str, list] = {}  # deployment -> [requests, errors, histogram]
        self.read_as_of = 0.0  # when the newest read of the table began
        self.reading: asyncio.Future | None = None  # the table's read for an unknown request

    async def refresh(self) -> None:
        began = time.monotonic()
        routes, self.keys = await asyncio.to_thread(self.store.routing)
        self.routes, self.read_as_of = routes, max(self.read_as_of, began)
        live = {endpoint for route in routes.values() for endpoint in route["endpoints"]}
        for endpoint in set(self.clients) - live:
            if not self.open[endpoint]:
                client, _ = self.clients.pop(endpoint)
                await client.close()

    async def keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("reading the routing table failed")

    async def flush(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            counts, self.counts = self.counts, {}
            if counts:
                try:
                    await asyncio.to_thread(self.store.add_request_metrics, counts)
                except Exception:  # noqa: BLE001 - these counts are lost, not the router
                    log.exception("writing request metrics failed")

    def count(self, id: str, status: int, seconds: float) -> None:
        entry = self.counts.setdefault(id, [0, 0, collections.Counter()])
        entry[0] += 1
        entry[1] += status >= 500
        entry[2][rollout.latency_bucket(seconds)] += 1

    async def authorised(self, request: web.Request, key: tuple[str, str]) -> dict | None:
        """The deployment's route, when the request carries one of its app keys."""
        presented = deployments.key_prefix(request.headers.get("Authorization"))
        if presented is None:
            return None
        prefix, secret = presented
        if prefix not in self.keys or key not in self.routes:
            await self.read_again()
        route, entry = self.routes.get(key), self.keys.get(prefix)
        if route is None or entry is None or entry[0] != route["id"]:
            log.info(
                "refused %s for %s/%s: %s",
                prefix,
                *key,
                "unknown" if route is None or entry is None else "another's",
            )
            return None
        if not deployments.key_matches(secret, entry[1]):
            log.info("refused %s for %s/%s: wrong secret", prefix, *key)
            return None
        return route

    async def read_again(self) -> None:
        """The table read again for a request it does not know (a key made a moment ago):
        it waits for a read that began after it came, one at a time, shared by every
        request waiting then."""
        came = time.monotonic()
        while self.read_as_of < came:
            if self.reading is None or self.reading.done():
                self.reading = asyncio.ensure_future(self.refresh())
            await asyncio.shield(self.reading)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        owner, name = request.match_info["owner"], request.match_info["name"]
        route = await self.authorised(request, (owner, name))
        if route is None:
            return unauthorised()
        path = request.match_info["path"]
        if not path.startswith("v2"):
            return refusal(404, "a deployment answers the Open Inference Protocol v2: /v2/...")
        started = time.perf_counter()
        body = await request.read()
        try:
            async with asyncio.timeout(route["timeout"]):
                response = await self.forward((owner, name), request, path, body)
        except TimeoutError:
            response = refusal(504, f"the model did not answer within {route['timeout']} s")
        except NoReplica:  # or the deployment or the key is gone since the table was read
            await self.read_again()
            if await self.authorised(request, (owner, name)) is None:
                return unauthorised()
            response = refusal(503, "no replica of this deployment is ready; try again shortly")
        self.count(route["id"], response.status, time.perf_counter() - started)
        return response

    async def forward(self, key, request: web.Request, path: str, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        headers.setdefault("Accept-Encoding", "identity")  # aiohttp's default asks for gzip
        tried: set[str] = set()  # not tried again
        stale: set[str] = set()  # dropped once: tried again, on a new connection
        for _ in range(TRIES):
            route = self.routes.get(key) or {"endpoints": []}
            endpoints = [e for e in route["endpoints"] if e not in tried]
            if not endpoints:
                break
            endpoint = min(endpoints, key=lambda e: (self.open[e], random.random()))
            if endpoint not in self.clients:
                try:
                    self.clients[endpoint] = upstream.session(endpoint)
                except OSError:  # its socket is not there (or is no socket)
                    tried.add(endpoint)
                    continue
            client, base = self.clients[endpoint]
            self.open[endpoint] += 1
            try:
                async with client.request(
                    request.method,
                    f"{base}/{path}",
                    params=request.query,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                ) as answer:
                    payload = await bounded(answer.content)
                    if payload is None:
                        return refusal(502, f"the model's answer is over {MAX_BODY_BYTES} bytes")
                    kept = {k: v for k, v in answer.headers.items() if k.lower() not in DROPPED}
                    return web.Response(status=answer.status, body=payload, headers=kept)
            except aiohttp.ServerDisconnectedError:  # a kept connection it had just closed
                if endpoint in stale:
                    tried.add(endpoint)
                stale.add(endpoint)
            except aiohttp.ClientConnectorError:  # refused: its socket may be bound anew
                tried.add(endpoint)
                if self.open[endpoint] == 1:  # no other request holds its client
                    await self.clients.pop(endpoint)[0].close()  # the next one opens it again
            except aiohttp.ClientConnectionError:  # dropped before an answer
                tried.add(endpoint)
            finally:
                self.open[endpoint] -= 1
        raise NoReplica


async def bounded(content: aiohttp.StreamReader) -> bytes | None:
    """A replica's whole answer, or None past MAX_BODY_BYTES (the router's memory is every
    deployment's)."""
    payload = bytearray()
    async for chunk in content.iter_any():
        payload += chunk
        if len(payload) > MAX_BODY_BYTES:
            return None
    return bytes(payload)


async def serve(port: int, store: Store) -> None:
    """The router on loopback `port`, on the running loop (the Atelier service's), for good."""
    router = Router(store)
    await router.refresh()
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_route("*", "/deployments/{owner}/{name}/{path:.*}", router.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.gather(router.keep_fresh(), router.flush())
