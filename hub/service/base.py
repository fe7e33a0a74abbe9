"""The Atelier service: a hub-managed JupyterHub service at /services/atelier/.

It owns what JupyterHub does not know (catalog, quotas, audit) and gives scripts, widgets
and the CLI one REST API. Callers authenticate with JupyterHub tokens or OAuth; permissions
are JupyterHub RBAC custom scopes. Instance changes go through the hub's own server API with
the service's token, so the hub keeps validating and auditing them in one place.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jupyterhub.services.auth import (
    HubOAuthenticated,
    UserNotAllowed,
)
from tornado import web

from atelier.hub.context import Context
from atelier.spawner import core
from atelier.spawner.core import audit

if TYPE_CHECKING:
    from atelier.hub.service.hubclient import HubClient

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
    "custom:atelier:images:save": "Save one's instances as images; share and delete those",
    "custom:atelier:jobs:read": "List and show one's own training jobs, their logs and metrics",
    "custom:atelier:jobs:manage": "Submit, stop, resume and delete one's training jobs",
    "custom:atelier:deployments:read": "List and show one's deployments, their logs and metrics",
    "custom:atelier:deployments:manage": "Deploy, upgrade, stop and delete one's models; app keys",
    "custom:atelier:audit:read": "Read audit events about oneself",
    "custom:atelier:keypairs:manage": "Register, generate, list and delete one's SSH key pairs",
    "custom:atelier:workspaces:admin": "Create, list, change and delete workspaces",
}
USER_SCOPES = [scope for scope in SCOPES if not scope.endswith(":admin")]
ADMIN_SCOPES = frozenset(scope for scope in SCOPES if scope.endswith(":admin"))
HUB_ADMIN = "admin:users"  # unfiltered: in JupyterHub's admin role, which only admins hold
MAX_BODY_BYTES = 1 << 20  # the largest request body the API takes (more: 413)
READ_LIMIT_BYTES = 4 << 20  # the most the server reads of one: past it, it cuts the connection
AUTH_CACHE_SECONDS = 5  # a revoked token or a demoted admin loses access this soon
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")  # never in a name; NUL: PostgreSQL refuses
FIELD_TYPES = {
    "name": str,
    "owner": (str, type(None)),
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

    @classmethod
    def refusal(cls, error: core.OptionsError, status: int = 400) -> APIError:
        """A core refusal answered with its own code, message and field."""
        return cls(status, **error.to_json())


def not_found(what: str) -> APIError:
    return APIError(404, "not_found", f"no {what}")


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool
    scopes: frozenset[str]
    source_ip: str

    @property
    def acts_for_everyone(self) -> bool:
        """An admin whose token carries JupyterHub's unfiltered admin scope: they see and act
        on every user's resources (as far as the token's scopes go) and hold Atelier's admin
        scopes. The admin flag alone is not enough: JupyterHub reports it to every token of
        an admin, however narrow (their instances' server tokens too). JupyterHub grants and
        strips its admin role wherever admins are made or demoted (admin_users, the admin
        page and API, OAuth admin groups), so nothing else needs to be kept in step."""
        return self.admin and HUB_ADMIN in self.scopes

    def may(self, scope: str) -> bool:
        """The token's scopes decide, for admins too. Only unfiltered scopes count: Atelier
        grants its scopes unfiltered (user role, server tokens, OAuth), and a filtered one
        (`scope!user=x`, from a hand-made token) would be widened past its filter by
        counting it whole."""
        return scope in self.scopes or (self.acts_for_everyone and scope in ADMIN_SCOPES)


class Recent:
    """Answers of repeated reads, kept for `seconds`: many users polling the catalog or their
    instances cost one store query a second, not one each. Cleared by any change made through
    the service, so its own writes are read back at once."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._values: dict = {}

    def get(self, key, read):
        now = time.monotonic()
        hit = self._values.get(key)
        if hit is None or now - hit[0] > self.seconds:
            hit = (now, read())
            self._values[key] = hit
        return hit[1]

    def clear(self) -> None:
        self._values.clear()


def holds_nul(value) -> bool:
    """Whether a JSON value holds NUL anywhere (keys too): PostgreSQL stores no NUL."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(holds_nul(key) or holds_nul(item) for key, item in value.items())
    return isinstance(value, list) and any(map(holds_nul, value))


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    """JSON in and out, the caller, and errors in one shape."""

    async def prepare(self):
        """Refuse a body over the limit (the server reads up to READ_LIMIT_BYTES, so that one
        a little too large gets this answer, not a cut connection), then identify the caller
        without blocking: JupyterHub's synchronous lookup waits for a helper thread on every
        request, which stalls every other request meanwhile."""
        if len(self.request.body) > MAX_BODY_BYTES:
            raise APIError(
                413, "too_large", f"the request body may be at most {MAX_BODY_BYTES} bytes"
            )
        self.check_arguments()
        model = await self.hub_auth.get_user(self, sync=False)
        try:
            self._hub_auth_user_cache = self.check_hub_user(model) if model else None
        except UserNotAllowed:
            self._hub_auth_user_cache = None

    def check_arguments(self) -> None:
        """The path's names and the query's values hold no control characters: none is in
        any name, and PostgreSQL refuses NUL in a query outright (a 500, not an answer)."""
        method = getattr(self, self.request.method.lower(), None)
        names = list(inspect.signature(method).parameters) if method else []
        fields = [*zip(names, self.path_args, strict=False), *self.path_kwargs.items()]
        for name, values in self.request.query_arguments.items():
            fields += [(name, value.decode("utf-8", "replace")) for value in values]
        for field, value in fields:
            if CONTROL_CHARACTERS.search(value):
                raise APIError(400, "invalid", "may not contain control characters", field)

    def on_finish(self):
        if self.request.method != "GET":
            self.recent.clear()  # after the change, so no read made during it lingers

    @property
    def recent(self) -> Recent:
        return self.settings["recent"]

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
            if self.request.method != "GET":  # a refused change is audited too
                noun = scope.split(":")[2]
                self.audit(
                    caller,
                    audit.Action.ACCESS_DENIED,
                    self.request.path,
                    "failure",
                    scope,
                    resource_type=noun,
                )
            raise APIError(403, "forbidden", f"this needs the scope {scope}")
        return caller

    def body(self, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        """The JSON object sent, refusing unknown and missing fields."""
        try:
            data = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):  # RecursionError: nested too deep
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
            if holds_nul(value):
                raise APIError(400, "invalid", "may not contain NUL characters", key)
        return data

    def int_argument(self, name: str, default: int | None, low: int, high: int) -> int | None:
        """A whole-number query argument from `low` to `high` (absent: `default`)."""
        text = self.get_argument(name, None)
        if text is None:
            return default
        number = core.whole_number(text, high)
        if number is None or number < low:
            raise APIError(400, "invalid", f"must be a whole number from {low} to {high}", name)
        return number

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
        action: audit.Action,
        resource: str,
        result: str = "success",
        reason: str = "",
        owner: str = "",
        resource_type: str | None = None,
    ) -> None:
        event = audit.event(
            action,
            actor=caller.name,
            source_ip=caller.source_ip,
            resource=resource,
            owner=owner,
            result=result,
            reason=reason,
            resource_type=resource_type,
        )
        self.context.store.record(**event)


class NotFoundHandler(BaseHandler):
    def prepare(self):
        raise APIError(404, "not_found", f"no route {self.request.method} {self.request.path}")
