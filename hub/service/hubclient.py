"""The hub's REST API as the Atelier service calls it: with the service's token, for a caller,
with a short-lived cache of user models that every poll shares."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from atelier.hub.service.base import APIError, Caller


class HubClient:
    """The hub's REST API, called with the service's token on behalf of a caller."""

    FRESH_SECONDS = 1.0  # a user model this young is answered as it is
    STALE_SECONDS = 5.0  # up to this old, too, while a fresh one is fetched in the background

    def __init__(self, api_url: str, token: str):
        self.api_url, self.token = api_url.rstrip("/"), token
        self.http = AsyncHTTPClient()
        self._users: dict[str, tuple[float, dict | None]] = {}
        self._fetching: dict[str, asyncio.Future] = {}
        self._generation = 0  # counts the changes made through this service

    async def user(self, name: str) -> dict | None:
        """A hub user's model with stopped servers; None when there is none.

        Reads are served from a short-lived copy so that many callers polling do not each
        cost a hub request; changes made through this service are seen at once.
        """
        cached = self._users.get(name)
        age = time.monotonic() - cached[0] if cached else None
        if age is not None and age <= self.STALE_SECONDS:
            if age > self.FRESH_SECONDS:
                self._fetch(name)
            return cached[1]
        return await self._fetch(name)

    def _fetch(self, name: str) -> asyncio.Future:
        """One hub request per user at a time, however many callers wait for it."""
        if name not in self._fetching:
            self._fetching[name] = asyncio.ensure_future(self._fetch_user(name))
        return self._fetching[name]

    async def _fetch_user(self, name: str) -> dict | None:
        started, generation = time.monotonic(), self._generation
        try:
            code, model = await self.request("GET", f"/users/{quote(name)}?include_stopped_servers")
        finally:
            if self._fetching.get(name) is asyncio.current_task():
                del self._fetching[name]
        model = model if code == 200 else None
        if generation == self._generation:  # nothing changed meanwhile through this service
            self._users[name] = (started, model)
        return model

    async def memberships(self, user: str) -> frozenset[str]:
        """The groups (workspaces) of a user."""
        return frozenset(((await self.user(user)) or {}).get("groups", ()))

    async def request(self, method: str, path: str, caller: Caller | None = None, body=None):
        headers = {"Authorization": f"token {self.token}", "Content-Type": "application/json"}
        if method != "GET":
            self._forget_users()
        if caller is not None:
            headers["X-Atelier-Actor"] = caller.name
            headers["X-Atelier-Source-IP"] = caller.source_ip
        response = await self.http.fetch(
            HTTPRequest(
                self.api_url + path,
                method=method,
                headers=headers,
                body=None if body is None else json.dumps(body),
                allow_nonstandard_methods=True,
                request_timeout=120,
            ),
            raise_error=False,
        )
        if method != "GET":
            self._forget_users()  # again: a read made during the change may predate it
        data = json.loads(response.body) if response.body else None
        return response.code, data

    def _forget_users(self) -> None:
        """Whatever a change touches is read afresh."""
        self._generation += 1
        self._users.clear()
        self._fetching.clear()

    async def servers(self, owner: str) -> dict | None:
        """An owner's instances (named servers) by name; None when there is no such user."""
        user = await self.user(owner)
        return None if user is None else instances_of(user)

    async def group_members(self, name: str) -> list[str] | None:
        code, group = await self.request("GET", f"/groups/{quote(name)}")
        return None if code == 404 else sorted(group["users"])

    async def set_group(self, name: str, members: list[str] | None, caller: Caller) -> None:
        """Create the group if needed and make its members exactly `members` (None: as they are,
        for example when an OAuth provider's group claims manage them)."""
        current = await self.group_members(name)
        if current is None:
            await self.request("POST", f"/groups/{quote(name)}", caller, {"users": []})
            current = []
        if members is None:
            return
        for method, users in (
            ("POST", sorted(set(members) - set(current))),
            ("DELETE", sorted(set(current) - set(members))),
        ):
            if users:
                code, data = await self.request(
                    method, f"/groups/{quote(name)}/users", caller, {"users": users}
                )
                if code >= 400:
                    raise APIError(400, "invalid", data.get("message", "refused"), "members")

    async def delete_group(self, name: str, caller: Caller) -> None:
        await self.request("DELETE", f"/groups/{quote(name)}", caller)

    async def all_servers(self) -> dict[str, dict]:
        """Every user's instances, from one request: {owner: {name: server}}."""
        code, users = await self.request("GET", "/users?include_stopped_servers&limit=10000")
        return {user["name"]: instances_of(user) for user in users}


def instances_of(user: dict) -> dict:
    """The named servers of a hub user model (the default server is not an instance)."""
    return {name: server for name, server in (user.get("servers") or {}).items() if name}
