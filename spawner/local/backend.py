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

from atelier.spawner.backend import Capabilities
from atelier.spawner.devices import Device, count_by_type
from atelier.spawner.identity import system_account_exists
from atelier.spawner.local import accounts, cgroups, envs, sshendpoint
from atelier.spawner.local.machine import MachineBackend
from atelier.spawner.local.volumes import LocalVolume


class LocalBackend(MachineBackend):
    name = "local"
    spawner_class = "LocalInstanceSpawner"

    def configure_hub(self, c, data_dir: Path) -> None:
        super().configure_hub(c, data_dir)
        c.LocalInstanceSpawner.envs_dir = str(self.settings.resolved_envs_dir)

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
