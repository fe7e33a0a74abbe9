"""Reaching a replica at the endpoint its backend gave it: "unix:<path>" (a socket in a
directory only root can enter) or "http://<address>:<port>"."""

from __future__ import annotations

import aiohttp

KEEP_ALIVE_SECONDS = 30  # the replica's server keeps idle connections longer (75 s)


def session(endpoint: str, connections: int = 100) -> tuple[aiohttp.ClientSession, str]:
    """A pooled client for one replica, and the URL its paths are joined to."""
    if endpoint.startswith("unix:"):
        connector = aiohttp.UnixConnector(
            path=endpoint[len("unix:") :], limit=connections, keepalive_timeout=KEEP_ALIVE_SECONDS
        )
        base = "http://replica"
    else:
        connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEP_ALIVE_SECONDS)
        base = endpoint.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=None)  # the router's own deadline decides
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False), base


async def ready(endpoint: str, model: str, timeout: float = 2.0) -> bool:
    """Whether the replica's server says its model is ready (OIP v2's model readiness)."""
    client, base = session(endpoint, connections=1)
    try:
        async with client:
            url = f"{base}/v2/models/{model}/ready"
            async with client.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as answer:
                return answer.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
