"""Attacks on save as image that only the Docker backend has: its own registry on loopback.

The registry answers only with a password in the hub's data dir, but instances share the
host's network (containers run as uid 1000 on it) and outlive the hub. A process of uid 1000
on the host's network is what a container's processes are there, so one stands in for an
instance here: no container start is needed. Each test performs one attack; holes are
`xfail(strict=True)` with the hole in their reason.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time

import pytest
import yaml
from dockerhub import DockerHub, registry_port

pytestmark = pytest.mark.e2e
UID = 1000  # DockerSpawner's user in every instance container

# Waits for the hub's own API port to answer (JupyterHub then starts its services, the
# registry first), takes the registry's port and records what every request sends.
SQUAT = r"""
import http.server, json, socket, sys, time
hub_port, port = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 180
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", hub_port), timeout=0.2).close()
        break
    except OSError:
        time.sleep(0.003)


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        record = {"method": self.command, "path": self.path,
                  "authorization": self.headers.get("Authorization")}
        print(json.dumps(record), flush=True)
        self.send_response(200)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


server = None
while server is None and time.monotonic() < deadline:
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError:
        time.sleep(0.003)
print(json.dumps({"bound": server is not None}), flush=True)
server.timeout = 0.5
while time.monotonic() < deadline:
    server.handle_request()
"""


def as_instance() -> None:
    os.setgroups([])
    os.setgid(UID)
    os.setuid(UID)


class SquattedHub(DockerHub):
    """A Docker hub whose registry port a uid-1000 process waits to take as it starts."""

    squatter: subprocess.Popen | None = None

    def launch(self, preexec_fn=None) -> None:
        config = yaml.safe_load(self.config.read_text())
        self.records = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the test
        port = config["backend_options"]["registry_port"]
        SquattedHub.squatter = subprocess.Popen(
            ["/usr/bin/python3", "-c", SQUAT, str(config["hub_port"]), str(port)],
            stdout=self.records,
            stderr=subprocess.DEVNULL,
            preexec_fn=as_instance,
            cwd="/",
        )
        SquattedHub.records_file = self.records
        super().launch(preexec_fn)


def squatter_records() -> list[dict]:
    SquattedHub.records_file.seek(0)
    return [json.loads(line) for line in SquattedHub.records_file.read().splitlines() if line]


def test_a_process_on_the_registrys_port_never_gets_the_registrys_password(envs_dir, docker_engine):
    DockerHub.engine = docker_engine
    SquattedHub.environment = {"DOCKER_HOST": docker_engine.url}
    hub = None
    try:
        with contextlib.suppress(RuntimeError):  # a hub that refuses to start is fine
            hub = SquattedHub(
                envs_dir, backend="docker", backend_options={"registry_port": registry_port()}
            )
        # the Atelier service sweeps the registry as it starts: it finds the port taken
        refused = "is not Atelier's registry (not root's)"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            r.get("authorization") for r in squatter_records()
        ):
            if hub is not None and refused in hub.log_text():
                break
            time.sleep(0.5)
        records = squatter_records()
        password_file = (hub.dir if hub else None) and hub.dir / "data" / "registry" / "password"
        password = password_file.read_text().strip() if password_file else None
    finally:
        if SquattedHub.squatter is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(SquattedHub.squatter.pid, signal.SIGKILL)
            SquattedHub.squatter.wait(10)
        if hub is not None:
            hub.stop()
    sent = [
        base64.b64decode(r["authorization"].split()[1]).decode(errors="replace")
        for r in records
        if (r.get("authorization") or "").startswith("Basic ")
    ]
    leaked = [s for s in sent if password is None or password in s]
    calls = [f"{r['method']} {r['path']}" for r in records if r.get("authorization")]
    assert leaked == [], f"the squatter got the registry's password with {calls}"


# Every call a user's process could make on the registry, without the password.
PROBE = r"""
import json, sys, urllib.error, urllib.request
port, answers = sys.argv[1], {}
calls = [
    ("GET", "/v2/"),
    ("GET", "/v2/_catalog"),
    ("GET", "/v2/atelier-snapshots/bob/secret/tags/list"),
    ("GET", "/v2/atelier-snapshots/bob/secret/manifests/latest"),
    ("POST", "/v2/atelier-snapshots/bob/secret/blobs/uploads/"),
    ("PUT", "/v2/atelier-snapshots/bob/secret/manifests/latest"),
    ("DELETE", "/v2/atelier-snapshots/bob/secret/manifests/sha256:" + "0" * 64),
]
for method, path in calls:
    for auth in (None, "Basic YXRlbGllcjphdGVsaWVy"):  # atelier:atelier, a guess
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                         data=b"{}" if method in ("PUT", "POST") else None)
        if auth:
            request.add_header("Authorization", auth)
        try:
            code = urllib.request.urlopen(request, timeout=10).status
        except urllib.error.HTTPError as error:
            code = error.code
        answers[f"{method} {path} {'guess' if auth else 'none'}"] = code
print(json.dumps(answers))
"""


def test_the_registry_answers_no_call_without_its_password(envs_dir, docker_engine):
    DockerHub.engine = docker_engine
    DockerHub.environment = {"DOCKER_HOST": docker_engine.url}
    port = registry_port()
    hub = DockerHub(envs_dir, backend="docker", backend_options={"registry_port": port})
    try:
        files = hub.dir / "data" / "registry"
        hub.wait_for(lambda: (files / "htpasswd").exists(), 30, "the registry")

        def answers():
            probe = subprocess.run(
                ["/usr/bin/python3", "-c", PROBE, str(port)],
                capture_output=True,
                text=True,
                preexec_fn=as_instance,
                cwd="/",
                timeout=60,
            )
            return json.loads(probe.stdout) if probe.returncode == 0 else None

        got = hub.wait_for(answers, 30, "the registry to answer")
        for path in (files, files / "password", files / "htpasswd", files / "config.yml"):
            assert path.stat().st_uid == 0, path
            assert path.stat().st_mode & 0o077 == 0, path  # root's alone
    finally:
        hub.stop()
    assert {call: code for call, code in got.items() if code != 401} == {}
