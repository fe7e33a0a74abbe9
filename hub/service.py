"""The Atelier service: a hub-managed JupyterHub service at /services/atelier/.

It owns what JupyterHub does not know (catalog, quotas, audit) and gives scripts, widgets
and the CLI one REST API. Callers authenticate with JupyterHub tokens or OAuth; permissions
are JupyterHub RBAC custom scopes. Instance changes go through the hub's own server API with
the service's token, so the hub keeps validating and auditing them in one place.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from jupyterhub.services.auth import (
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from atelier.hub.context import Context

SERVICE = "atelier"
API_PREFIX = f"/services/{SERVICE}/api/v1"
ACCESS_SCOPE = f"access:services!service={SERVICE}"
SCOPES = {
    "custom:atelier:instances:read": "List and show one's own instances",
    "custom:atelier:instances:create": "Create instances",
    "custom:atelier:instances:update": "Start, stop and change instances",
    "custom:atelier:instances:delete": "Delete instances",
    "custom:atelier:images:read": "List the image catalog and specs",
    "custom:atelier:images:admin": "Add, change and delete catalog images and specs",
    "custom:atelier:audit:read": "Read audit events about oneself",
    "custom:atelier:keypairs:manage": "Register, generate, list and delete one's SSH key pairs",
    "custom:atelier:workspaces:admin": "Create, list, change and delete workspaces",
}
USER_SCOPES = [scope for scope in SCOPES if not scope.endswith(":admin")]
FIELD_TYPES = {
    "name": str,
    "owner": str,
    "display_name": str,
    "description": str,
    "status": str,
    "successor": (str, type(None)),
    "accelerator_types": list,
    "disabled": bool,
    "visibility": str,
    "workspace": (str, type(None)),
    "members": list,
    "max_instances": int,
    "public_key": str,
    "generate": bool,
}


class APIError(web.HTTPError):
    """An error answered as {"error": {"code", "message", "field"}}."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(status, message.replace("%", "%%"))
        self.code, self.message, self.field = code, message, field


def not_found(what: str) -> APIError:
    return APIError(404, "not_found", f"no {what}")


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool
    scopes: frozenset[str]
    source_ip: str

    def may(self, scope: str) -> bool:
        """Admins may do everything; others need the scope (a filter keeps it to their own)."""
        return self.admin or any(s == scope or s.startswith(scope + "!") for s in self.scopes)


class HubClient:
    """The hub's REST API, called with the service's token on behalf of a caller."""

    MEMBERSHIP_SECONDS = 5

    def __init__(self, api_url: str, token: str):
        self.api_url, self.token = api_url.rstrip("/"), token
        self.http = AsyncHTTPClient()
        self._memberships: dict[str, tuple[float, frozenset[str]]] = {}

    async def memberships(self, user: str) -> frozenset[str]:
        """The groups (workspaces) of a user, as the hub has them a few seconds ago at most."""
        now = time.monotonic()
        cached = self._memberships.get(user)
        if cached is None or now - cached[0] > self.MEMBERSHIP_SECONDS:
            code, model = await self.request("GET", f"/users/{quote(user)}")
            cached = (now, frozenset(model.get("groups", ())) if code == 200 else frozenset())
            self._memberships[user] = cached
        return cached[1]

    async def request(self, method: str, path: str, caller: Caller | None = None, body=None):
        headers = {"Authorization": f"token {self.token}", "Content-Type": "application/json"}
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
        data = json.loads(response.body) if response.body else None
        return response.code, data

    async def servers(self, owner: str) -> dict | None:
        """An owner's instances (named servers) by name; None when there is no such user."""
        code, user = await self.request("GET", f"/users/{quote(owner)}?include_stopped_servers")
        return None if code == 404 else instances_of(user)

    async def group_members(self, name: str) -> list[str] | None:
        code, group = await self.request("GET", f"/groups/{quote(name)}")
        return None if code == 404 else sorted(group["users"])

    async def set_group(self, name: str, members: list[str] | None, caller: Caller) -> None:
        """Create the group if needed and make its members exactly `members` (None: as they are,
        for example when an OAuth provider's group claims manage them)."""
        self._memberships.clear()
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
        self._memberships.clear()
        await self.request("DELETE", f"/groups/{quote(name)}", caller)

    async def all_servers(self) -> dict[str, dict]:
        """Every user's instances, from one request: {owner: {name: server}}."""
        code, users = await self.request("GET", "/users?include_stopped_servers&limit=10000")
        return {user["name"]: instances_of(user) for user in users}


def instances_of(user: dict) -> dict:
    """The named servers of a hub user model (the default server is not an instance)."""
    return {name: server for name, server in (user.get("servers") or {}).items() if name}


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """JSON in and out, the caller, and errors in one shape."""

    @property
    def context(self) -> Context:
        return self.settings["context"]

    @property
    def hub(self) -> HubClient:
        return self.settings["hub"]

    def get_login_url(self):
        raise APIError(401, "unauthenticated", "sign in or send 'Authorization: token <token>'")

    def check_hub_user(self, model):
        try:
            return super().check_hub_user(model)
        except UserNotAllowed:
            self.not_allowed = True
            raise

    @property
    def caller(self) -> Caller:
        model = self.current_user
        if not model and getattr(self, "not_allowed", False):
            raise APIError(403, "forbidden", f"this needs the scope {ACCESS_SCOPE}")
        if not model:
            raise APIError(401, "unauthenticated", "sign in or send 'Authorization: token <token>'")
        return Caller(
            model["name"],
            bool(model.get("admin")),
            frozenset(model.get("scopes", ())),
            self.request.remote_ip,
        )

    async def workspaces_of(self, caller: Caller) -> frozenset[str]:
        return await self.hub.memberships(caller.name)

    def require(self, scope: str) -> Caller:
        caller = self.caller
        if not caller.may(scope):
            raise APIError(403, "forbidden", f"this needs the scope {scope}")
        return caller

    def body(self, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        """The JSON object sent, refusing unknown and missing fields."""
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise APIError(400, "invalid_json", "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise APIError(400, "invalid_body", "the body must be a JSON object")
        for key in data:
            if key not in allowed:
                raise APIError(
                    400, "unknown_field", f"unknown field; allowed: {', '.join(allowed)}", key
                )
        for key in required:
            if key not in data:
                raise APIError(400, "missing_field", "is required", key)
        for key, value in data.items():
            expected = FIELD_TYPES.get(key)
            if expected is not None and not isinstance(value, expected):
                raise APIError(400, "invalid", f"has the wrong type ({type(value).__name__})", key)
        return data

    def reply(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def allowed_methods(self) -> list[str]:
        return [
            method
            for method in ("GET", "POST", "PATCH", "DELETE")
            if getattr(type(self), method.lower())
            is not getattr(web.RequestHandler, method.lower())
        ]

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None))[1]
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        if isinstance(error, APIError):
            payload = {"code": error.code, "message": error.message, "field": error.field}
        elif isinstance(error, web.HTTPError) and status_code < 500:
            message = error.log_message or self._reason
            payload = {"code": "http_error", "message": message, "field": None}
        else:
            payload = {"code": "internal_error", "message": "internal error", "field": None}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": payload}))

    def audit(
        self,
        caller: Caller,
        action: str,
        kind: str,
        resource: str,
        result: str = "success",
        reason: str = "",
        owner: str = "",
    ):
        self.context.store.record(
            actor=caller.name,
            source_ip=caller.source_ip,
            action=action,
            resource_type=kind,
            resource=resource,
            owner=owner,
            result=result,
            reason=reason,
        )


class NotFoundHandler(BaseHandler):
    def prepare(self):
        raise APIError(404, "not_found", f"no route {self.request.method} {self.request.path}")


def make_app(context: Context, hub: HubClient) -> web.Application:
    from atelier.hub.openapi import OpenAPIHandler
    from atelier.hub.routes import all_routes
    from atelier.hub.routes_people import SSHPage

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE}/").rstrip("/")
    handlers = [(prefix + "/api/v1" + path, handler) for path, handler in all_routes()]
    handlers += [
        (prefix + "/api/v1/openapi.json", OpenAPIHandler),
        (prefix + "/oauth_callback", HubOAuthCallbackHandler),
        (prefix + "/ssh", SSHPage),
        (r".*", NotFoundHandler),
    ]
    return web.Application(
        handlers, context=context, hub=hub, prefix=prefix, cookie_secret=os.urandom(32)
    )


def main() -> None:
    import asyncio
    from urllib.parse import urlparse

    from atelier.hub.hubconfig import settings_from_environment

    async def serve():
        context = Context.from_settings(settings_from_environment())
        hub = HubClient(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
        url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
        make_app(context, hub).listen(url.port, url.hostname)
        retention = timedelta(days=context.settings.audit_retention_days)
        while True:
            context.store.expire_audit(datetime.now(UTC) - retention)
            await asyncio.sleep(3600)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
