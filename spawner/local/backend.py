"""The local backend: instances are JupyterLab processes on this machine.

Each runs from its image's Python environment (envs.py), as its owner's own system account
when the hub is root (accounts.py), in a cgroup with the spec's limits (cgroups.py), under a
seccomp filter (seccomp.py), with a fresh home (homes.py) and an XFS work volume (volumes.py);
its SSH endpoint is a Unix socket root binds for it (sshendpoint.py). The spawner is
spawner.py's `LocalInstanceSpawner`.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

from atelier.spawner import core
from atelier.spawner.backend import Backend, Capabilities
from atelier.spawner.credentials import deployment_keys
from atelier.spawner.devices import Device, count_by_type
from atelier.spawner.identity import system_account_exists
from atelier.spawner.local import accounts, cgroups, envs, sshendpoint
from atelier.spawner.local.volumes import LocalVolume, VolumeUnavailable


class LocalBackend(Backend):
    name = "local"

    @property
    def shared_dir(self) -> Path:
        return self.settings.resolved_shared_dir

    def configure_hub(self, c, data_dir: Path) -> None:
        c.JupyterHub.spawner_class = "atelier-local"
        c.LocalInstanceSpawner.data_dir = str(data_dir)
        c.LocalInstanceSpawner.shared_dir = str(self.shared_dir)
        c.LocalInstanceSpawner.envs_dir = str(self.settings.resolved_envs_dir)
        if self.settings.ssh.enabled:
            _, client_key = deployment_keys(data_dir)
            c.LocalInstanceSpawner.ssh_gateway_key = client_key.with_suffix(".pub").read_text()

    def prepare(self) -> None:
        try:
            accounts.prepare_shared_dir(self.shared_dir)
        except PermissionError as error:
            raise ValueError(f"shared_dir: {error}") from None

    def capabilities(self, inventory: list[Device]) -> Capabilities:
        return Capabilities(
            accelerators=count_by_type(inventory),
            arch=platform.machine(),
            users_isolated=os.geteuid() == 0,
            volumes_enforced=LocalVolume.enforced(),
            limits_unenforced=tuple(cgroups.Hierarchy.detect().unenforced()),
        )

    # images -------------------------------------------------------------------------------
    def realised_images(self) -> frozenset[str]:
        return envs.built_envs(self.settings.resolved_envs_dir)

    def has_definition(self, image: str) -> bool:
        return envs.has_definition(image)

    def definition_hint(self, image: str) -> str:
        return f"create {envs.requirements_file(image)} (and a Dockerfile beside it) first"

    def build_image(self, image: str, log) -> None:
        envs.build_env(self.settings.resolved_envs_dir, image, log)  # an environment: no digest

    # volumes ------------------------------------------------------------------------------
    def volume(self, owner: str, instance: str) -> LocalVolume:
        """An instance's work volume, under its owner's account."""
        return LocalVolume(self.shared_dir, self.store.claim_account(owner), instance)

    def volume_used_bytes(self, owner: str, instance: str) -> int | None:
        return self.volume(owner, instance).used_bytes()

    def expand_volume(self, owner: str, instance: str, size_gb: int) -> None:
        try:
            self.volume(owner, instance).expand(size_gb)
        except VolumeUnavailable as error:  # lost
            raise core.OptionsError("add_gb", str(error)) from None

    # SSH ----------------------------------------------------------------------------------
    async def connect_ssh(self, owner: str, instance: str) -> tuple[socket.socket, str]:
        """The socket root bound for the instance, answered by the account root gave it."""
        path = accounts.ssh_socket(self.shared_dir, owner, instance)
        return await sshendpoint.connect(path, instance)

    # users --------------------------------------------------------------------------------
    def forget_user(self, owner: str, account: str) -> None:
        if os.geteuid() == 0 and system_account_exists(account):
            accounts.kill_processes(account)
        accounts.remove_account_dirs(self.shared_dir, account)
