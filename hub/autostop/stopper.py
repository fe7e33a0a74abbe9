"""The auto-stop service: stops each instance its auto-stop hours after it started.

A hub-managed service like jupyterhub-idle-culler: `due_instances` decides, pure; `main`
asks the hub's API who is running and stops those whose time has come.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
from datetime import UTC, datetime
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from atelier.spawner.core import autostop_at

log = logging.getLogger("atelier.autostop")


def parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def due_instances(users: list[dict], now: datetime) -> list[tuple[str, str]]:
    """(user, instance) pairs whose auto-stop time has passed, from GET /users?state=active."""
    due = []
    for user in users:
        for name, server in (user.get("servers") or {}).items():
            hours = (server.get("user_options") or {}).get("autostop_hours")
            stop_at = autostop_at(parse_time(server.get("started")), hours)
            if name and server.get("ready") and stop_at is not None and stop_at <= now:
                due.append((user["name"], name))
    return due


async def stop_due(api_url: str, token: str, now: datetime) -> list[tuple[str, str]]:
    client = AsyncHTTPClient()
    headers = {"Authorization": f"token {token}"}
    response = await client.fetch(HTTPRequest(f"{api_url}/users?state=active", headers=headers))
    due = due_instances(json.loads(response.body), now)
    for user, name in due:
        log.info("Auto-stopping %s:%s: its auto-stop time has passed", user, name)
        await client.fetch(
            HTTPRequest(
                f"{api_url}/users/{quote(user)}/servers/{quote(name)}",
                method="DELETE",
                headers=headers,
            ),
            raise_error=False,
        )
    return due


async def run(every: float) -> None:
    api_url = os.environ["JUPYTERHUB_API_URL"].rstrip("/")
    token = os.environ["JUPYTERHUB_API_TOKEN"]
    while True:
        try:
            await stop_due(api_url, token, datetime.now(UTC))
        except Exception:
            log.exception("Auto-stop check failed; trying again in %s s", every)
        await asyncio.sleep(every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--every", type=float, default=60, help="seconds between checks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[autostop %(asctime)s] %(message)s")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C on `atelier run`: stop quietly
        asyncio.run(run(args.every))
