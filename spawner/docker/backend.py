"""The Docker backend: each instance is a container (DockerSpawner) on the engine at
DOCKER_HOST (default: the local socket).

Images are OCI images built from images/<name>/Dockerfile (images.py) and started by
digest; a container runs as the images' non-root user with no capabilities, no new
privileges, a pids limit and the spec's CPU and memory enforced by the engine
(containers.py). Its work volume is the local backend's XFS volume, mounted into it; its SSH
endpoint is a socket in a directory of its own, verified by who listens (endpoint.py). The
spawner is spawner.py's `DockerInstanceSpawner`. Saved images are commits of containers in an
OCI registry, started by digest (snapshots.py); unless `backend_options.registry` names one,
the hub runs its own (registry.py). Training jobs run a container per node (jobs.py),
deployments a container per replica (replicas.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
import platform
import socket
import time
from pathlib import Path

import docker
from pydantic import BaseModel, ConfigDict, Field, field_validator

from atelier.spawner import core
from atelier.spawner.backend import Capabilities, EndpointUnavailable
from atelier.spawner.devices import Device, count_by_type
from atelier.spawner.docker import containers, endpoint, images, registry, snapshots
from atelier.spawner.docker.jobs import DockerJobs
from atelier.spawner.docker.replicas import (
    LABEL_DEPLOYMENT,
    LABEL_REPLICA,
    DockerReplicas,
    socket_dir,
)
from atelier.spawner.local import accounts
from atelier.spawner.local.machine import MachineBackend
from atelier.spawner.local.volumes import LocalVolume

IMAGES_FRESH_S = 2.0  # how long the engine's list of images is taken as it is
PORT_FREE_S = 10.0  # how long a start waits for the last hub's registry to let go of its port


class DockerOptions(BaseModel):
    """`backend_options:` of `backend: docker`."""

    model_config = ConfigDict(extra="forbid")
    pids_limit: int = Field(4096, ge=64, description="Processes per instance")
    registry: str | None = Field(
        None,
        description="host[:port][/path] of the OCI registry that keeps saved images (it must "
        "allow deletes); none: Atelier runs its own on 127.0.0.1:registry_port",
    )
    registry_port: int = Field(5000, ge=1, le=65535, description="Atelier's own registry's port")

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        if value is not None:
            registry.parse_location(value)
        return value


class DockerBackend(DockerReplicas, DockerJobs, MachineBackend):
    name = "docker"
    spawner_class = "DockerInstanceSpawner"
    Options = DockerOptions

    def __init__(self, settings, store):
        super().__init__(settings, store)
        self._images: tuple[float, dict[str, str]] = (0.0, {})

    @functools.cached_property
    def engine(self) -> docker.DockerClient:
        """The engine at DOCKER_HOST, as DockerSpawner's own client finds it."""
        return docker.from_env(timeout=60)

    @property
    def cache_dir(self) -> Path:
        return self.settings.data_dir.absolute() / "cache"

    @functools.cached_property
    def image_registry(self) -> registry.Registry:
        if self.options.registry is not None:
            return registry.Registry(*registry.parse_location(self.options.registry))
        files = registry.Files(self.settings.data_dir.absolute() / "registry")
        return registry.Registry(f"127.0.0.1:{self.options.registry_port}", "", files.password)

    @functools.cached_property
    def snapshotter(self) -> snapshots.Snapshots:
        slow = docker.from_env(timeout=snapshots.SAVE_TIMEOUT_S)
        return snapshots.Snapshots(self.engine, slow, self.hub_id, self.image_registry)

    def configure_hub(self, c, data_dir: Path) -> None:
        super().configure_hub(c, data_dir)
        c.DockerInstanceSpawner.pids_limit = self.options.pids_limit

    def services(self, data_dir: Path) -> list[dict]:
        """Atelier's own registry, unless the options name another."""
        if self.options.registry is not None:
            return []
        module = "atelier.spawner.docker.registry"
        return [
            {
                "name": "registry",
                "command": [module, str(data_dir / "registry"), self.image_registry.host],
            }
        ]

    def prepare(self) -> None:
        super().prepare()
        engine = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if not engine.startswith("unix://"):
            raise ValueError(
                f"backend: docker: DOCKER_HOST must be the engine's unix:// socket on this "
                f"machine, got {engine!r} (containers share the host's network: an engine on a "
                "TCP port would answer every instance)"
            )
        try:
            self.engine.ping()
        except docker.errors.DockerException as error:
            raise ValueError(
                f"backend: docker: no Docker engine answers at DOCKER_HOST "
                f"({error}); start dockerd or set DOCKER_HOST"
            ) from None
        if self.options.registry is None:
            self.check_own_registry()

    def check_own_registry(self) -> None:
        """Its program is installed, and its port is free (the last hub's registry, which
        ends with that hub, may take a moment)."""
        if not os.access(registry.REGISTRY, os.X_OK):
            raise ValueError(
                f"backend: docker: saved images need an OCI registry: install Debian's "
                f"docker-registry ({registry.REGISTRY}) or set backend_options.registry"
            )
        deadline = time.monotonic() + PORT_FREE_S
        while not registry.port_is_free(self.image_registry.host):
            if time.monotonic() > deadline:
                raise ValueError(
                    f"backend_options.registry_port: {self.image_registry.host} is in use (by "
                    "Debian's own docker-registry service? `systemctl disable --now "
                    "docker-registry`); free it or choose another port for Atelier's registry"
                )
            time.sleep(0.2)

    def environment(self) -> dict[str, str]:
        """The hub's services (the SSH gateway) reach the engine the hub reaches."""
        return {"DOCKER_HOST": os.environ["DOCKER_HOST"]} if "DOCKER_HOST" in os.environ else {}

    def capabilities(self, inventory: list[Device]) -> Capabilities:
        return Capabilities(
            accelerators=count_by_type(inventory),
            arch=platform.machine(),
            users_isolated=True,
            volumes_enforced=LocalVolume.enforced(),
        )

    # images -------------------------------------------------------------------------------
    def image_digests(self) -> dict[str, str]:
        """Catalog image -> digest of every image the engine has, read at most every
        IMAGES_FRESH_S (pages and API answers ask for it)."""
        read, digests = self._images
        if time.monotonic() - read > IMAGES_FRESH_S:
            digests = images.built(self.engine)
            self._images = (time.monotonic(), digests)
        return digests

    def image_to_run(self, image: core.Image) -> str:
        """The digest an instance of `image` starts from: the one the catalog recorded at
        its build, which the engine must still have (a tag moved since is not followed);
        else the engine's `atelier/<name>`; a snapshot's `<repository>@<digest>`, pulled
        when the engine lacks it. Raises `core.OptionsError`. Blocking."""
        if image.base is not None:
            return self.snapshotter.to_run(image)
        digest = image.digest or self.image_digests().get(image.name)
        if digest is None:
            raise core.OptionsError("image", f"{image.name} is not built on this machine")
        try:
            self.engine.images.get(digest)
        except docker.errors.ImageNotFound:
            message = (
                f"{image.name} was built as {digest}, which this machine's Docker engine no "
                f"longer has; an admin rebuilds it with `atelier images build {image.name}`"
            )
            raise core.OptionsError("image", message) from None
        return digest

    def realised_images(self) -> frozenset[str]:
        return frozenset(self.image_digests())

    def has_definition(self, image: str) -> bool:
        return images.has_definition(image)

    def definition_hint(self, image: str) -> str:
        return f"create {images.IMAGES_DIR / image / 'Dockerfile'} first"

    def build_image(self, image: str, log) -> str:
        digest = images.build(self.engine, image, self.cache_dir, log)
        self._images = (0.0, {})
        return digest

    # snapshots ----------------------------------------------------------------------------
    def running_container(self, plan: core.SnapshotPlan) -> dict:
        found = self.container_of(plan.owner, plan.instance)
        if found is None:
            message = f"{plan.owner}/{plan.instance} has no running container"
            raise core.OptionsError("instance", message, "conflict")
        return found

    def measure_snapshot(self, plan: core.SnapshotPlan) -> tuple[int, int]:
        return self.snapshotter.measure(plan, self.running_container(plan))

    def save_image(self, plan: core.SnapshotPlan, progress) -> str:
        try:
            container = self.running_container(plan)
        except core.OptionsError as error:
            raise RuntimeError(error.message) from None
        return self.snapshotter.save(plan, container, progress)

    def delete_saved_image(self, image: core.Image) -> None:
        self.snapshotter.delete(image)

    def sweep_saved_images(self, known: set[str]) -> None:
        self.snapshotter.sweep(known)

    # containers ---------------------------------------------------------------------------
    def container_of(self, owner: str, instance: str) -> dict | None:
        """The engine's view of the instance's running container, or None. Blocking."""
        name = containers.container_name(owner, instance)
        try:
            found = self.engine.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        labels = found["Config"]["Labels"] or {}
        mine = containers.labels(self.hub_id, owner, instance).items() <= labels.items()
        return found if mine and found["State"]["Running"] else None

    @property
    def hub_id(self) -> str:
        return containers.hub_id(str(self.settings.data_dir.absolute()))

    def containers_labelled(self, **more: str) -> list[dict]:
        """This hub's containers (running or not) with these labels too. Blocking."""
        wanted = {containers.LABEL_HUB: self.hub_id, **more}
        filters = {"label": [f"{key}={value}" for key, value in wanted.items()]}
        return self.engine.api.containers(all=True, filters=filters)

    def strays(self, known: set[tuple[str, str]]) -> list[str]:
        """Atelier's containers whose instance the store no longer knows (deleted while the
        hub was down, say): `atelier run` reports them."""
        found = []
        for listing in self.containers_labelled():
            labels = listing["Labels"]
            if containers.LABEL_INSTANCE not in labels:  # a job's node, a replica
                continue
            owner, instance = labels[containers.LABEL_OWNER], labels[containers.LABEL_INSTANCE]
            if (owner, instance) not in known:
                found.append(f"{listing['Names'][0].lstrip('/')} ({owner}/{instance})")
        return sorted(found)

    # SSH ----------------------------------------------------------------------------------
    async def connect_ssh(self, owner: str, instance: str) -> tuple[socket.socket, str]:
        account = self.store.account(owner)
        running = await asyncio.to_thread(self.container_of, owner, instance)
        if account is None or running is None:
            raise EndpointUnavailable(f"instance {instance} is not running")
        directory = endpoint.endpoint_dir(self.shared_dir, account, instance)
        sock = await endpoint.connect(directory, running["State"]["Pid"], instance)
        return sock, containers.USER

    # users --------------------------------------------------------------------------------
    def forget_user(self, owner: str, account: str) -> None:
        for found in self.containers_labelled(**{containers.LABEL_OWNER: owner}):
            self.engine.api.remove_container(found["Id"], force=True)
            labels = found["Labels"]
            if LABEL_DEPLOYMENT in labels:  # a replica's: its socket's tmpfs goes too
                id, number = labels[LABEL_DEPLOYMENT], labels[LABEL_REPLICA]
                endpoint.remove(socket_dir(self.shared_dir, id, number))
        endpoint.remove(endpoint.endpoints_dir(self.shared_dir, account))
        accounts.remove_account_dirs(self.shared_dir, account)
