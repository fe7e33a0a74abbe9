"""Hubs on the Docker backend for the end-to-end tests, on the tests' own engine
(`docker_engine`), and what the Docker test modules share: the engine's client, and Alice's
and Bob's instances, each reachable over SSH."""

from __future__ import annotations

import contextlib

import pytest
from conftest import Hub
from test_ssh_e2e import reachable_over_ssh


class DockerHub(Hub):
    """A hub on the Docker backend, on the tests' own engine (`docker_engine`)."""

    def lab_pid(self, user: str, name: str) -> int:
        container = self.servers(user)[name]["state"]["object_id"]
        with contextlib.closing(self.engine.client()) as client:
            return client.api.inspect_container(container)["State"]["Pid"]


def docker_hub(envs_dir, engine, **overrides) -> DockerHub:
    """A hub on `engine`, whose images `docker_images` built."""
    DockerHub.engine = engine
    DockerHub.environment = {"DOCKER_HOST": engine.url}
    return DockerHub(envs_dir, backend="docker", **overrides)


def container_of(hub, client, user: str, name: str) -> dict:
    """The engine's view of the user's instance `name`."""
    return client.api.inspect_container(hub.servers(user)[name]["state"]["object_id"])


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
