"""Reaching a replica at the endpoint its backend gave it: "unix:<path>" (a socket in a
directory only root can enter, or only the replica's container mounts) or
"http://<address>:<port>"."""

from __future__ import annotations

import os
import stat

import aiohttp

KEEP_ALIVE_SECONDS = 30  # the replica's server keeps idle connections longer (75 s)


class ReplicaSocket(aiohttp.UnixConnector):
    """Connections to the socket at `path`, opened once without following a link and only
    if it is a socket: a container's user may put a link to any socket of the host's (the
    engine's) where its server's socket belongs. Every connection goes through the opened
    file (/proc/self/fd/N), so nothing put at the path afterwards is reached either."""

    def __init__(self, path: str, **options):
        self.fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not stat.S_ISSOCK(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise ConnectionRefusedError(f"{path} is not a socket")
        try:
            super().__init__(path=f"/proc/self/fd/{self.fd}", **options)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self, **options):
        closing = super().close(**options)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return closing


def session(endpoint: str, connections: int = 100) -> tuple[aiohttp.ClientSession, str]:
    """A pooled client for one replica, and the URL its paths are joined to. Raises OSError
    when the endpoint's socket is not there (or is no socket)."""
    if endpoint.startswith("unix:"):
        path = endpoint[len("unix:") :]
        connector = ReplicaSocket(path, limit=connections, keepalive_timeout=KEEP_ALIVE_SECONDS)
        base = "http://replica"
    else:
        connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEP_ALIVE_SECONDS)
        base = endpoint.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=None)  # the router's own deadline decides
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False), base


async def ready(endpoint: str, model: str, timeout: float = 2.0) -> bool:
    """Whether the replica's server says its model is ready (OIP v2's model readiness)."""
    try:
        client, base = session(endpoint, connections=1)
    except OSError:
        return False
    try:
        async with client:
            url = f"{base}/v2/models/{model}/ready"
            async with client.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as answer:
                return answer.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
