"""Save as image from inside the instance: jupyter-server handlers that save *this* instance
through the Atelier API, for a notebook or a JupyterLab panel.

Routes, under the server's base URL (`/user/<owner>/<instance>/`):

    POST atelier/images           {"name": "my-env", "display_name"?, "description"?}
        -> 202 and the save's operation: {"id", "kind": "saveImage", "status": "running",
           "phase", "percent", "target": "<owner>/my-env", ...}
    GET  atelier/operations       -> {"operations": [...]}: this instance's saves, newest first
    GET  atelier/operations/<id>  -> one operation; poll it until `status` is `succeeded`
                                     (the image is in the catalog) or `failed` (`reason`)

Only the instance's owner reaches them, signed in as for JupyterLab itself (the browser's
session, whose POSTs carry the `X-XSRFToken` header as JupyterLab's own API calls do), or with
`Authorization: token <a token of theirs>`. The handlers call the Atelier API with this
server's own token (JUPYTERHUB_API_TOKEN) at ATELIER_API_URL, so the API runs its one check
and audit; its refusals (400 invalid or too_large, 404, 409 not running, name taken, already
saving) come back as they are: their status and `{"error": {"code", "message", "field"}}`.

From a JupyterLab panel (the page's `_xsrf` cookie is JupyterLab's own):

    fetch(`${baseUrl}atelier/images`, {method: "POST", body: JSON.stringify({name: "my-env"}),
           headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf}})

From a notebook, the SDK does the same without this extension:
`atelier.sdk.Client().save_image(name="my-env", wait=True)`.

Runs inside images with Python 3.9: no newer syntax.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

try:  # jupyter-server 2: the authorizer decides too (JupyterHub's checks access:servers)
    from jupyter_server.auth.decorator import authorized
except ImportError:  # pragma: no cover - jupyter-server 1

    def authorized(method):
        return method


TIMEOUT_SECONDS = 120  # a save answers once the instance is measured (its home's size)


def _api_url() -> str:
    from atelier.sdk import api_url_from_environment

    return api_url_from_environment().rstrip("/")


class AtelierAPIHandler(APIHandler):
    """Forwards one call of the Atelier API for this instance, as this server."""

    auth_resource = "atelier"

    @property
    def owner(self) -> str:
        return os.environ.get("JUPYTERHUB_USER", "")

    @property
    def instance(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVER_NAME", "")

    def refuse(self, status: int, code: str, message: str, field: str | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"code": code, "message": message, "field": field}}))

    def owner_only(self) -> bool:
        """JupyterHub may let others use this server (an admin, a share): saving it as the
        owner's image stays the owner's decision."""
        if self.current_user.username == self.owner:
            return True
        self.refuse(403, "forbidden", f"only {self.owner} saves this instance as an image")
        return False

    async def forward(self, method: str, path: str, body: bytes | None = None):
        """Call the Atelier API; returns (status, parsed JSON answer), or answers 502 and
        returns None when it cannot be reached or answers something else than JSON."""
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        try:
            url = _api_url() + path
        except Exception as error:  # noqa: BLE001 - AtelierError: no URL in the environment
            self.refuse(503, "unavailable", str(getattr(error, "message", error)))
            return None
        request = HTTPRequest(
            url,
            method=method,
            body=body,
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            request_timeout=TIMEOUT_SECONDS,
        )
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        try:
            answer = json.loads(response.body) if response.body else None
        except ValueError:
            answer = None
        if response.code == 599 or (answer is None and response.code != 204):
            reason = response.error or response.reason
            self.log.warning("Atelier: the Atelier API at %s: %s", url, reason)
            self.refuse(502, "unreachable", f"the Atelier API did not answer ({reason})")
            return None
        return response.code, answer

    def pass_on(self, status: int, answer) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(answer))


class SaveImageHandler(AtelierAPIHandler):
    @web.authenticated
    @authorized
    async def post(self):
        if not self.owner_only():
            return
        path = f"/instances/{quote(self.owner, safe='')}/{quote(self.instance, safe='')}/images"
        answered = await self.forward("POST", path, self.request.body or b"{}")
        if answered is not None:
            self.pass_on(*answered)


class OperationsHandler(AtelierAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        if not self.owner_only():
            return
        answered = await self.forward("GET", "/operations")
        if answered is None:
            return
        status, answer = answered
        if status == 200:
            mine = f"{self.owner}/{self.instance}"
            answer = {"operations": [o for o in answer["operations"] if o["resource"] == mine]}
        self.pass_on(status, answer)


class OperationHandler(AtelierAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, id):
        if not self.owner_only():
            return
        answered = await self.forward("GET", f"/operations/{quote(id, safe='')}")
        if answered is not None:
            self.pass_on(*answered)


def handlers(base_url: str) -> list:
    return [
        (url_path_join(base_url, "atelier/images"), SaveImageHandler),
        (url_path_join(base_url, "atelier/operations"), OperationsHandler),
        (url_path_join(base_url, r"atelier/operations/([^/]+)"), OperationHandler),
    ]


def load(server_app) -> None:
    web_app = server_app.web_app
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    server_app.log.info("Atelier: save as image at %satelier/images", web_app.settings["base_url"])
