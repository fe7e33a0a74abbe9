"""The Docker backend's spawner: each instance is a container from its image's digest.

It realises an `InstancePlan` (the shared part is `InstanceSpawnerMixin`) with DockerSpawner:
mounts the work volume and the endpoint's directory, and creates the container that
containers.py describes, on the host network, its JupyterLab on a free loopback port. A
container is removed when it stops, so everything outside work/ starts afresh each time.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import docker
from dockerspawner import DockerSpawner
from jupyterhub.spawner import SpawnException
from jupyterhub.utils import random_port
from traitlets import Int, Unicode, default

from atelier.spawner import checks, core
from atelier.spawner.base import InstanceSpawnerMixin, to_the_end
from atelier.spawner.credentials import endpoint_environment
from atelier.spawner.docker import containers, endpoint
from atelier.spawner.local.volumes import LocalVolume


def literal(value):
    """`value` with every brace doubled: DockerSpawner renders its create and host options
    as format templates, and a user or instance name must stay what it is."""
    if isinstance(value, str):
        return value.replace("{", "{{").replace("}", "}}")
    if isinstance(value, dict):
        return {literal(key): literal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [literal(item) for item in value]
    return value


class DockerInstanceSpawner(InstanceSpawnerMixin, DockerSpawner):
    """Run Atelier instances as containers."""

    data_dir = Unicode(help="The hub's private data dir (the SSH endpoints' credential key)").tag(
        config=True
    )
    shared_dir = Unicode(help="Volumes and endpoint directories (accounts.py's layout)").tag(
        config=True
    )
    ssh_gateway_key = Unicode(
        help="The SSH gateway's public key, which instance SSH endpoints accept; empty: no SSH"
    ).tag(config=True)
    pids_limit = Int(4096, help="Processes per instance").tag(config=True)

    @default("remove")
    def _remove_default(self):
        return True  # a fresh container each start: only work/ is kept

    @default("network_name")
    def _network_default(self):
        return "host"

    @default("use_internal_ip")
    def _internal_ip_default(self):
        return True

    @default("pull_policy")
    def _pull_default(self):
        return "never"  # images are the catalog's, built by `atelier images build`

    @default("ip")
    def _ip_default(self):
        return "127.0.0.1"

    @default("object_name")
    def _object_name_default(self):
        return containers.container_name(self.user.name, self.name)

    @property
    def account(self) -> str:
        """The hub user's own account name: the key of their volumes' files."""
        return self.store.claim_account(self.user.name)

    @property
    def hub_id(self) -> str:
        return containers.hub_id(self.data_dir)

    @property
    def volume(self) -> LocalVolume:
        return LocalVolume(Path(self.shared_dir), self.account, self.name)

    @property
    def endpoint_dir(self) -> Path:
        return endpoint.endpoint_dir(Path(self.shared_dir), self.account, self.name)

    # the lifecycle --------------------------------------------------------------------------
    async def start_plan(self, plan: core.InstancePlan):
        try:
            digest = await asyncio.to_thread(self.backend.image_to_run, plan.image)
        except core.OptionsError as error:
            raise checks.Refused(error, reason="image") from None
        self._report(55, "Attaching the work volume")
        ids = (containers.UID, containers.GID)
        with self.host_filesystem("work volume"):
            await self.make_volume(self.volume.create)
            mounted = await to_the_end(self.volume.mounted, ids, False)  # the engine binds it
            endpoint_dir = None
            if self.ssh_gateway_key:
                await to_the_end(endpoint.prepare, self.endpoint_dir, *ids)
                endpoint_dir = str(self.endpoint_dir)
        spec = containers.container(
            plan,
            self.held_devices,
            hub=self.hub_id,
            volume=str(mounted),
            endpoint_dir=endpoint_dir,
            pids_limit=self.pids_limit,
        )
        self.image = digest
        self.volumes = spec.volumes
        self.mem_limit = spec.mem_limit
        self.cpu_limit = None  # its quota and period would conflict with nano_cpus
        self.extra_create_kwargs = literal(spec.create_kwargs)  # a user's name is no template
        self.extra_host_config = literal(spec.host_config)
        self.notebook_dir = containers.HOME
        self.port = random_port()  # as LocalProcessSpawner picks one
        self.instance_environment = spec.environment
        if self.ssh_gateway_key:
            self.instance_environment |= endpoint_environment(
                self.data_dir, self.ssh_gateway_key, self.user.name, self.name
            )
        self._report(70, f"Starting JupyterLab on {plan.image.name}")
        await asyncio.to_thread(self._check_name_is_free)
        try:
            return await DockerSpawner.start(self)
        except docker.errors.APIError as error:  # the engine's words are for the operator
            self.log.error("%s: the engine refused the container: %s", self._log_name, error)
            message = (
                "the instance's container could not be started on this machine's Docker "
                "engine; ask the hub's operator (its log says why)"
            )
            raise SpawnException(message, reason="engine", status_code=503) from None

    def _check_name_is_free(self) -> None:
        """DockerSpawner removes a container of the instance's name before it makes one: one
        that Atelier made for this instance (a start cut off), never another."""
        try:
            found = self.client.inspect_container(self.object_name)
        except docker.errors.NotFound:
            return
        mine = containers.labels(self.hub_id, self.user.name, self.name)
        labels = found["Config"]["Labels"] or {}
        if any(labels.get(key) != value for key, value in mine.items()):
            message = (
                f"a container named {self.object_name} that Atelier did not make for this "
                "instance is in the way; ask the hub's operator to remove it"
            )
            raise SpawnException(message, reason="engine", status_code=409)

    async def check_allowed(self, image):
        """The core checked the catalog image; the engine runs the digest start_plan chose."""
        return self.image

    async def get_ip_and_port(self):
        return self.ip, self.port

    def realised(self) -> bool:
        return bool(self.object_id)

    async def release_plan(self) -> None:
        if self.object_id:  # a start that failed after the container was made
            with contextlib.suppress(docker.errors.APIError):
                await self.docker("remove_container", self.object_id, force=True)
            self.object_id = ""
        if not self.store.volume_in_use(self.user.name, self.name):  # else it stays for them
            await asyncio.to_thread(self.volume.detach)
        await asyncio.to_thread(endpoint.remove, self.endpoint_dir)

    async def delete_instance(self) -> bool:
        made = self.volume.exists()
        await asyncio.to_thread(self.volume.delete)
        return made
