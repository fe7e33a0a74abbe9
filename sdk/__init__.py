"""The Atelier SDK: the Atelier REST API from Python, with no setup inside an instance.

    from atelier.sdk import Client
    client = Client()                       # inside an instance: URL and token from the env
    client.create_instance("exp-2", image="pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64",
                           spec="cpu.2u8g", tags={"project": "vision"})
    [i["name"] for i in client.instances()]
    client.save_image(name="my-env", wait=True)  # save this instance as the image <you>/my-env
    client.create_deployment("line", image="...", spec="cpu.2u8g", job="fit", wait=True)
    client.predict("line", {"x": [[1.0], [2.0]]}, key=client.create_app_key("line")["key"])

Outside an instance pass `url` (".../services/atelier/api/v1") and `token`, or set
ATELIER_API_URL (or JUPYTERHUB_API_URL) and JUPYTERHUB_API_TOKEN. Only the standard library
is used, so it works in every image.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

from atelier.sdk.deployments import DeploymentsMixin
from atelier.sdk.jobs import JobsMixin

__all__ = ["AtelierError", "Client"]


class AtelierError(Exception):
    """A refused request: HTTP status, error code, message and the field at fault. A save
    that failed or did not end in time has status 0 and its `operation`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        operation: dict | None = None,
    ):
        super().__init__(f"{status} {code}: {field + ': ' if field else ''}{message}")
        self.status, self.code, self.message, self.field = status, code, message, field
        self.operation = operation


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _image_path(name: str) -> str:
    """/images/<name>, or a snapshot's /images/<owner>/<name>: the one '/' stays a '/'."""
    return "/images/" + "/".join(_quote(part) for part in name.split("/", 1))


def api_url_from_environment() -> str:
    if os.environ.get("ATELIER_API_URL"):
        return os.environ["ATELIER_API_URL"]
    hub = os.environ.get("JUPYTERHUB_API_URL")
    if not hub:
        raise AtelierError(0, "no_url", "set ATELIER_API_URL or JUPYTERHUB_API_URL, or pass url=")
    return hub.rstrip("/").removesuffix("/hub/api") + "/services/atelier/api/v1"


class Client(JobsMixin, DeploymentsMixin):
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 120):
        self.url = (url or api_url_from_environment()).rstrip("/")
        self.token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self.timeout = timeout
        self._user = os.environ.get("JUPYTERHUB_USER")

    def request(self, method: str, path: str, body: dict | None = None, **query):
        query = {k: v for k, v in query.items() if v is not None}
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with self._open(request) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def _open(self, request: urllib.request.Request):
        """The response, or the refusal as an AtelierError."""
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            try:
                detail = json.loads(error.read())["error"]
            except (ValueError, KeyError):
                detail = {"code": "http_error", "message": error.reason}
            code, message, field = detail["code"], detail["message"], detail.get("field")
            raise AtelierError(error.code, code, message, field) from None

    @property
    def user(self) -> str:
        """Who this client acts as."""
        if self._user is None:
            self._user = self.quotas()["user"]
        return self._user

    def _instance_path(self, name: str, owner: str | None) -> str:
        return f"/instances/{_quote(owner or self.user)}/{_quote(name)}"

    # instances
    def instances(self, owner: str | None = None) -> list[dict]:
        """Each instance as `instance` shows it."""
        return self.request("GET", "/instances", owner=owner)["instances"]

    def instance(self, name: str, owner: str | None = None) -> dict:
        """Its `status` (creating, running, stopping, stopped or failed; a failed one's
        `reason` says why), options, volume and SSH settings."""
        return self.request("GET", self._instance_path(name, owner))

    def create_instance(self, name: str, image: str, spec: str, **options) -> dict:
        """Create and start; options: tags, autostop_hours, owner (admins)."""
        body = {"name": name, "image": image, "spec": spec, **options}
        return self.request("POST", "/instances", body)

    def update_instance(self, name: str, owner: str | None = None, **changes) -> dict:
        return self.request("PATCH", self._instance_path(name, owner), changes)

    def start_instance(self, name: str, owner: str | None = None) -> dict:
        return self.request("POST", self._instance_path(name, owner) + "/start")

    def stop_instance(self, name: str, owner: str | None = None) -> dict:
        return self.request("POST", self._instance_path(name, owner) + "/stop")

    def delete_instance(self, name: str, owner: str | None = None, *, delete_volume: bool) -> None:
        """Delete an instance; its work volume goes too, so say so: `delete_volume=True`."""
        confirm = "delete-volume" if delete_volume else None
        self.request("DELETE", self._instance_path(name, owner), confirm=confirm)

    def expand_volume(self, name: str, add_gb: int, owner: str | None = None) -> dict:
        return self.request(
            "POST", self._instance_path(name, owner) + "/volume/expand", {"add_gb": add_gb}
        )

    # catalog
    def images(self, offered: bool = False) -> list[dict]:
        """The catalog as you see it; `offered`: only what can start here now."""
        return self.request("GET", "/images", offered=1 if offered else None)["images"]

    def image(self, name: str) -> dict:
        """A catalog image, or a snapshot by its full name `<owner>/<name>`."""
        return self.request("GET", _image_path(name))

    def add_image(self, name: str, **fields) -> dict:
        return self.request("POST", "/images", {"name": name, **fields})

    def update_image(self, name: str, **changes) -> dict:
        """Admins: any field. A snapshot's owner: display_name, description, visibility
        ("private" or "shared") and workspace (one of theirs)."""
        return self.request("PATCH", _image_path(name), changes)

    def delete_image(self, name: str) -> None:
        """Admins: any image. A snapshot's owner: their snapshot, and its content with it."""
        self.request("DELETE", _image_path(name))

    def specs(self, available: bool = False) -> list[dict]:
        """Every spec; `available`: only the enabled ones this hub has the devices for."""
        return self.request("GET", "/specs", available=1 if available else None)["specs"]

    def add_spec(self, name: str, **fields) -> dict:
        return self.request("POST", "/specs", {"name": name, **fields})

    def update_spec(self, name: str, **changes) -> dict:
        return self.request("PATCH", f"/specs/{_quote(name)}", changes)

    def delete_spec(self, name: str) -> None:
        self.request("DELETE", f"/specs/{_quote(name)}")

    # save as image, and the operations that follow it
    def save_image(
        self,
        instance: str | None = None,
        name: str | None = None,
        *,
        owner: str | None = None,
        display_name: str | None = None,
        description: str | None = None,
        wait: bool = False,
        timeout: float = 3600,
    ) -> dict:
        """Save a running instance as the private image `<owner>/<name>`; `instance=None`
        (inside an instance): this one. Answers its operation at once (`status` running,
        `phase`, `percent`); with `wait=True`, the operation once it succeeded, or raises
        AtelierError naming why it failed. Refusals (a stopped instance, a name taken, a
        save already running, an image over limits.snapshot_size_gb) raise AtelierError."""
        if not name:
            raise AtelierError(0, "invalid", "name the image to make: name=...", "name")
        instance = instance or os.environ.get("JUPYTERHUB_SERVER_NAME")
        if not instance:
            raise AtelierError(
                0, "invalid", "name the instance to save (outside an instance)", "instance"
            )
        body = {"name": name, "display_name": display_name, "description": description}
        body = {key: value for key, value in body.items() if value is not None}
        operation = self.request("POST", self._instance_path(instance, owner) + "/images", body)
        return self.wait_for_operation(operation["id"], timeout) if wait else operation

    def operations(self) -> list[dict]:
        """Your operations (saves), newest first."""
        return self.request("GET", "/operations")["operations"]

    def operation(self, id: str) -> dict:
        """One operation: status (running, succeeded, failed), phase (measuring, saving,
        verifying, done), done_bytes, total_bytes, percent, reason, target (the image)."""
        return self.request("GET", f"/operations/{_quote(id)}")

    def wait_for_operation(
        self, id: str, timeout: float = 3600, every: float = 1.0, progress=None
    ) -> dict:
        """The operation once it succeeded; AtelierError when it failed (its reason) or is
        still running after `timeout` seconds. `progress(operation)` sees every poll."""
        deadline = time.monotonic() + timeout
        while True:
            operation = self.operation(id)
            if progress is not None:
                progress(operation)
            if operation["status"] == "succeeded":
                return operation
            if operation["status"] == "failed":
                reason = operation.get("reason") or "no reason given"
                raise AtelierError(0, "failed", reason, None, operation)
            if time.monotonic() >= deadline:
                message = (
                    f"operation {id} is still running ({operation['phase']}, "
                    f"{operation['percent']}%) after {timeout:g} s"
                )
                raise AtelierError(0, "timeout", message, None, operation)
            time.sleep(min(every, max(0.0, deadline - time.monotonic())))

    def share_image(self, name: str, workspace: str) -> dict:
        """Share your snapshot (`name` or `<you>/name`) with a workspace you are in."""
        return self.update_image(self._snapshot(name), visibility="shared", workspace=workspace)

    def unshare_image(self, name: str) -> dict:
        """Make your snapshot private again."""
        return self.update_image(self._snapshot(name), visibility="private", workspace=None)

    def _snapshot(self, name: str) -> str:
        return name if "/" in name else f"{self.user}/{name}"

    # SSH key pairs
    def keypairs(self) -> list[dict]:
        return self.request("GET", "/keypairs")["keypairs"]

    def add_keypair(self, name: str, public_key: str) -> dict:
        return self.request("POST", "/keypairs", {"name": name, "public_key": public_key})

    def generate_keypair(self, name: str) -> dict:
        """A new ed25519 pair; the answer's `private_key` is shown this once, never again."""
        return self.request("POST", "/keypairs", {"name": name, "generate": True})

    def delete_keypair(self, key_id: str) -> None:
        self.request("DELETE", f"/keypairs/{_quote(key_id)}")

    # usage and history
    def quotas(self) -> dict:
        return self.request("GET", "/quotas")

    def audit(self, **filters) -> dict:
        """Filters: user, resource_type, resource, action, since, until, limit, offset."""
        return self.request("GET", "/audit", **filters)
