"""The bare JupyterHub the spawn benchmark compares Atelier with: SimpleLocalProcessSpawner
and the same JupyterLab environment, or plain DockerSpawner on the same engine and image
(host network, as its documentation says to run it there)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests
from conftest import BASE, ROOT, WORK, Hub, free_port

SPAWN_TIMEOUT_S = 300  # a create that is not ready by then failed
COMMON_CONFIG = """
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = ["{root}/node_modules/.bin/configurable-http-proxy"]
c.JupyterHub.db_url = "sqlite:///{dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{dir}/cookie_secret"
c.JupyterHub.allow_named_servers = True
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Spawner.default_url = "/lab"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens"]}}]
"""
LOCAL_CONFIG = """
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{dir}/home/{{username}}"
c.Spawner.cmd = ["{env}/bin/jupyterhub-singleuser"]
c.Spawner.args = {args}
"""
DOCKER_CONFIG = """
import socket

from dockerspawner import DockerSpawner


class HostNetworkDockerSpawner(DockerSpawner):
    async def start(self):
        with socket.socket() as sock:  # a free loopback port for this start's JupyterLab
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        return await super().start()

    async def get_ip_and_port(self):
        return "127.0.0.1", self.port


c.JupyterHub.spawner_class = HostNetworkDockerSpawner
c.DockerSpawner.image = "{image}"
c.DockerSpawner.pull_policy = "never"
c.DockerSpawner.network_name = "host"
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.ip = "127.0.0.1"
c.DockerSpawner.remove = True
c.DockerSpawner.extra_create_kwargs = {{"user": "1000"}}
c.DockerSpawner.cmd = ["jupyterhub-singleuser"]
c.Spawner.start_timeout = {timeout}
c.Spawner.http_timeout = {timeout}
"""


class BareHub:
    """A plain JupyterHub: SimpleLocalProcessSpawner and the same JupyterLab environment, or
    (with `engine`) plain DockerSpawner on that engine with the same image."""

    def __init__(self, envs: Path | None = None, engine=None, image: str = ""):
        self.dir = WORK / f"bare-{secrets.token_hex(4)}"
        self.dir.mkdir()
        self.port, self.admin_token = free_port(), secrets.token_hex(16)
        config = self.dir / "jupyterhub_config.py"
        common = COMMON_CONFIG.format(
            port=self.port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
            root=ROOT,
            dir=self.dir,
            token=self.admin_token,
        )
        environment = dict(os.environ)
        if engine is None:
            args = ["--allow-root"] if os.geteuid() == 0 else []
            spawner = LOCAL_CONFIG.format(dir=self.dir, env=envs / BASE, args=args)
        else:
            spawner = DOCKER_CONFIG.format(image=image, timeout=SPAWN_TIMEOUT_S)
            environment["DOCKER_HOST"] = engine.url
        config.write_text(common + spawner)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.dir / "hub.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=self.dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.3)
        log = self.log_text()
        self.stop()
        raise RuntimeError(f"the bare hub did not start:\n{log[-3000:]}")

    api = Hub.api
    add_user = Hub.add_user
    wait_for = Hub.wait_for
    stop_instances = Hub.stop_instances

    def log_text(self) -> str:
        return (self.dir / "hub.log").read_text(errors="replace")

    def stop(self) -> None:
        """Stop every instance, then the hub."""
        if self.process.poll() is None:
            self.stop_instances()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        if not os.environ.get("ATELIER_KEEP_TEST_HUBS"):  # as Hub.stop: keep it for debugging
            shutil.rmtree(self.dir, ignore_errors=True)
