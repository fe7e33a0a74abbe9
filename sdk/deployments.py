"""The SDK's deployments: serve a model behind the hub's address, change it, roll it back, make
its app keys and ask it for predictions (Open Inference Protocol v2). See `Client`."""

from __future__ import annotations

import http
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

API_SUFFIX = "/services/atelier/api/v1"  # the Atelier API's path on the hub's address


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _error(*args):
    from atelier.sdk import AtelierError  # here: the package imports this module first

    return AtelierError(*args)


def shape_of(value, name: str) -> list[int]:
    """The shape of a nested list of numbers; a ragged one is refused, naming the input."""
    if not isinstance(value, list):
        return []
    shapes = [shape_of(item, name) for item in value]
    if any(shape != shapes[0] for shape in shapes):
        raise _error(0, "invalid", "a ragged list: every row must have the same shape", name)
    return [len(value), *(shapes[0] if shapes else [])]


def flat(value) -> list:
    return [x for item in value for x in flat(item)] if isinstance(value, list) else [value]


def oip_input(name: str, value) -> dict:
    """One OIP v2 input tensor: its shape from the nesting (a number alone: shape [1]), FP32
    if any number is a float, BOOL if all are booleans, else INT64. Anything with `tolist()`
    (a numpy array) is taken as that list."""
    value = value.tolist() if hasattr(value, "tolist") else value
    data = flat(value)
    shape = shape_of(value, name) or [1]
    if not all(isinstance(x, int | float) for x in data):
        raise _error(0, "invalid", "must be a number or a nested list of numbers", name)
    if data and all(isinstance(x, bool) for x in data):
        datatype = "BOOL"
    elif data and all(isinstance(x, int) for x in data):
        datatype = "INT64"
    else:
        datatype = "FP32"
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


class DeploymentsMixin:
    """Deployments, as `Client` offers them (it supplies `request`, `_open`, `url`, `user`).
    Set `hub_url` on the client (or pass it to `predict`) where the hub's address cannot be
    told from the API's URL: see `hub_address`."""

    hub_url: str | None = None

    def _deployment_path(self, name: str, owner: str | None) -> str:
        return f"/deployments/{_quote(owner or self.user)}/{_quote(name)}"

    def deployments(self, owner: str | None = None) -> list[dict]:
        """Your deployments, newest first (an admin: everyone's, or `owner`'s)."""
        return self.request("GET", "/deployments", owner=owner)["deployments"]

    def deployment(self, name: str, owner: str | None = None) -> dict:
        """Its `status` (deploying, running, upgrading, failed, stopped; `reason` says why),
        `version` asked for and `serving_version`, `replicas_now`, `metrics` and `url`."""
        return self.request("GET", self._deployment_path(name, owner))

    def create_deployment(
        self,
        name: str,
        *,
        image: str,
        spec: str,
        model: str | None = None,
        volume: str | None = None,
        job: str | None = None,
        replicas: int = 1,
        timeout_seconds: int | None = None,
        environment: dict[str, str] | None = None,
        owner: str | None = None,
        wait: bool = False,
        timeout: float = 900,
    ) -> dict:
        """Serve `model` (a directory on `volume`'s work volume; inside an instance, this
        one's by default) or a completed training `job`'s output. With `wait=True`, the
        deployment once it runs; AtelierError with the reason if it failed."""
        if model is not None:
            volume = volume or os.environ.get("ATELIER_INSTANCE")
        body = {
            "name": name, "image": image, "spec": spec, "model": model, "volume": volume,
            "job": job, "replicas": replicas, "timeout_seconds": timeout_seconds,
            "environment": environment, "owner": owner,
        }  # fmt: skip
        made = self.request(
            "POST", "/deployments", {k: v for k, v in body.items() if v is not None}
        )
        if not wait:
            return made
        return self.wait_for_deployment(made["name"], made["owner"], made["version"], timeout)

    def update_deployment(
        self,
        name: str,
        owner: str | None = None,
        *,
        wait: bool = False,
        timeout: float = 900,
        **changes,
    ) -> dict:
        """Change it (any of model, volume, job, image, spec, environment: a new version
        that rolls out; replicas, timeout_seconds: in place). With `wait=True`, the
        deployment once that version serves; AtelierError with the reason if it failed (the
        version before it goes on serving)."""
        changed = self.request("PATCH", self._deployment_path(name, owner), changes)
        if not wait:
            return changed
        return self.wait_for_deployment(name, changed["owner"], changed["version"], timeout)

    def wait_for_deployment(
        self, name: str, owner: str | None = None, version: int | None = None, timeout: float = 900
    ) -> dict:
        """The deployment once `version` (default: the one asked for now) serves every
        request and it runs; AtelierError (status 0) when that version failed, the
        deployment stopped, or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.deployment(name, owner)
            version = now["version"] if version is None else version
            failed = [
                v["failed"] for v in now["versions"] if v["version"] == version and "failed" in v
            ]
            if now["status"] == "failed" or failed:
                why = now.get("reason") or (failed and failed[0]) or "no reason given"
                raise _error(0, "failed", why, None)
            if now["status"] == "running" and now["serving_version"] == version:
                return now
            if now["status"] == "stopped":
                raise _error(0, "stopped", f"deployment {name} is stopped", None)
            if now["version"] > version:  # someone asked for another version since
                message = f"version {now['version']} of {name} was asked for since {version}"
                raise _error(0, "superseded", message, None)
            if time.monotonic() >= deadline:
                message = f"deployment {name} is still {now['status']} after {timeout:g} s"
                raise _error(0, "timeout", message, None)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def rollback_deployment(self, name: str, owner: str | None = None) -> dict:
        """A new version with the plan of the newest earlier one that served."""
        return self.request("POST", self._deployment_path(name, owner) + "/rollback")

    def stop_deployment(self, name: str, owner: str | None = None) -> dict:
        """Its replicas drain and stop; it keeps its versions, app keys and url."""
        return self.request("POST", self._deployment_path(name, owner) + "/stop")

    def start_deployment(self, name: str, owner: str | None = None) -> dict:
        """Start a stopped or failed deployment again."""
        return self.request("POST", self._deployment_path(name, owner) + "/start")

    def delete_deployment(self, name: str, owner: str | None = None) -> None:
        """Its replicas drain and stop, then it goes with its app keys (the model stays)."""
        self.request("DELETE", self._deployment_path(name, owner))

    def deployment_events(self, name: str, owner: str | None = None) -> list[dict]:
        """What happened to it, oldest first: {"time", "message"}."""
        return self.request("GET", self._deployment_path(name, owner) + "/events")["events"]

    def deployment_logs(
        self, name: str, replica: int | None = None, tail: int | None = None, owner=None
    ) -> str:
        """One replica's log (the newest replica's by default): its last `tail` lines."""
        query = urllib.parse.urlencode(
            {k: v for k, v in {"replica": replica, "tail": tail}.items() if v is not None}
        )
        url = f"{self.url}{self._deployment_path(name, owner)}/logs?{query}"
        request = urllib.request.Request(url, headers={"Authorization": f"token {self.token}"})
        with self._open(request) as response:
            return response.read().decode(errors="replace")

    def create_app_key(self, name: str, owner: str | None = None) -> dict:
        """A new app key: {"prefix", "created", "key"}; `key` is shown this once, never again."""
        return self.request("POST", self._deployment_path(name, owner) + "/keys")

    def app_keys(self, name: str, owner: str | None = None) -> list[dict]:
        """Its app keys by prefix (never the keys themselves)."""
        return self.request("GET", self._deployment_path(name, owner) + "/keys")["keys"]

    def revoke_app_key(self, name: str, prefix: str, owner: str | None = None) -> None:
        """Requests with that key get 401 from then on."""
        self.request("DELETE", f"{self._deployment_path(name, owner)}/keys/{_quote(prefix)}")

    # asking the model -----------------------------------------------------------------------
    def hub_address(self, hub_url: str | None = None) -> str:
        """Where the deployments answer: the hub's address (its proxy), not the API's.

        In order: `hub_url` (the argument, else the client's attribute); the API's URL without
        /services/atelier/api/v1, unless it is an instance's own ($ATELIER_API_URL inside an
        instance: the service's loopback port, which the proxy is not on); $ATELIER_HUB_URL;
        the origin of $JUPYTERHUB_PUBLIC_URL, which JupyterHub gives an instance only where
        the hub sets `public_url`. Nothing else an instance is given names the proxy's port
        (JUPYTERHUB_API_URL is the hub's own, JUPYTERHUB_SERVICE_URL the instance's), so rather
        than guess one this asks for hub_url= or $ATELIER_HUB_URL."""
        if hub_url or self.hub_url:
            return (hub_url or self.hub_url).rstrip("/")
        instance_api = os.environ.get("ATELIER_API_URL", "").rstrip("/")
        inside = "JUPYTERHUB_SERVICE_PREFIX" in os.environ and self.url == instance_api
        if not inside and self.url.endswith(API_SUFFIX):
            return self.url.removesuffix(API_SUFFIX)
        if os.environ.get("ATELIER_HUB_URL"):
            return os.environ["ATELIER_HUB_URL"].rstrip("/")
        public = urllib.parse.urlsplit(os.environ.get("JUPYTERHUB_PUBLIC_URL", ""))
        if public.scheme and public.netloc:
            return f"{public.scheme}://{public.netloc}"
        raise _error(
            0,
            "no_url",
            "the hub's address (as in your browser, e.g. https://hub.example.org) is not known "
            "here: pass hub_url= or set ATELIER_HUB_URL",
            "hub_url",
        )

    def predict(
        self, name: str, inputs, *, key: str, owner: str | None = None, hub_url=None
    ) -> dict:
        """The deployment's answer ({"outputs": [{"name", "shape", "datatype", "data"}]}) to
        `inputs`: {input name: a number or nested list of numbers} (shape from the nesting;
        FP32 for floats, INT64 for whole numbers), or a list of OIP v2 input dicts as is.
        `key` is one of its app keys; see `hub_address` for where it is sent."""
        if isinstance(inputs, dict):
            inputs = [oip_input(str(input_name), v) for input_name, v in inputs.items()]
        return self.infer(name, {"inputs": list(inputs)}, key=key, owner=owner, hub_url=hub_url)

    def infer(self, name: str, body: dict, *, key: str, owner=None, hub_url=None) -> dict:
        """Send a whole OIP v2 request body to the model's /infer; its decoded answer."""
        url = f"{self.hub_address(hub_url)}{self._deployment_path(name, owner)}"
        url += f"/v2/models/{_quote(name)}/infer"
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise refused(error) from None


def refused(error: urllib.error.HTTPError):
    """An AtelierError from the router's refusal ({"error": {"code": 401, "message"}}) or the
    model server's ({"error": "why"}); its code is the HTTP status's name (`unauthorized`)."""
    try:
        detail = json.loads(error.read())["error"]
    except (ValueError, KeyError, TypeError):
        detail = None
    message = detail.get("message") if isinstance(detail, dict) else detail
    try:
        code = http.HTTPStatus(error.code).phrase.lower().replace(" ", "_")
    except ValueError:
        code = "http_error"
    return _error(error.code, code, str(message or error.reason))
