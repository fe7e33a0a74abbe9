"""Hubs on the Docker backend for the end-to-end tests, on the tests' own engine
(`docker_engine`), and what the Docker test modules share: the engine's client, and Alice's
and Bob's instances, each reachable over SSH."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

import pytest
from conftest import TORCH, WORK, Hub
from test_ssh_e2e import reachable_over_ssh


class DockerHub(Hub):
    """A hub on the Docker backend, on the tests' own engine (`docker_engine`)."""

    def volume_owner(self, user: str) -> tuple[int, int]:
        return 1000, 1000  # the images' user, whoever the hub user is

    def lab_pid(self, user: str, name: str) -> int:
        container = self.servers(user)[name]["state"]["object_id"]
        with contextlib.closing(self.engine.client()) as client:
            return client.api.inspect_container(container)["State"]["Pid"]


def registry_port() -> int:
    """A free port below the ephemeral range, so that no connection takes it as its own
    before the hub starts (the hub refuses to start when its registry's port is taken)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(10000, low)
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port))
            return port


def docker_hub(envs_dir, engine, **overrides) -> DockerHub:
    """A hub on `engine`, whose images `docker_images` built, its registry on a free port."""
    DockerHub.engine = engine
    DockerHub.environment = {"DOCKER_HOST": engine.url}
    options = {"registry_port": registry_port(), **overrides.pop("backend_options", {})}
    return DockerHub(envs_dir, backend="docker", backend_options=options, **overrides)


def container_of(hub, client, user: str, name: str) -> dict:
    """The engine's view of the user's instance `name`."""
    return client.api.inspect_container(hub.servers(user)[name]["state"]["object_id"])


@pytest.fixture(scope="session")
def docker_torch_image(docker_engine, docker_images) -> None:
    """The CPU PyTorch image built in the tests' engine too, on the base `docker_images` built
    (kept in the engine's data root for later runs)."""
    from atelier.spawner.docker import images

    with contextlib.closing(docker_engine.client()) as client:
        images.build(client, TORCH, WORK / "docker-cache", print)


@pytest.fixture(scope="module")
def engine(docker_engine):
    with contextlib.closing(docker_engine.client()) as client:
        yield client


@pytest.fixture(scope="module")
def alice(hub, tmp_path_factory):
    return reachable_over_ssh(hub, "alice", "box", tmp_path_factory.mktemp("alice"))


@pytest.fixture(scope="module")
def bob(hub, tmp_path_factory):
    return reachable_over_ssh(hub, "bob", "box", tmp_path_factory.mktemp("bob"))
