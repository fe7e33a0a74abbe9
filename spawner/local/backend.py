"""The local backend: instances are JupyterLab processes on this machine.

Each runs from its image's Python environment (envs.py), as its owner's own system account
when the hub is root (accounts.py), in a cgroup with the spec's limits (cgroups.py), under a
seccomp filter (seccomp.py), with a fresh home (homes.py) and an XFS work volume (volumes.py);
its SSH endpoint is a Unix socket root binds for it (sshendpoint.py). Training jobs' nodes
(jobs.py) and deployments' replicas (replicas.py) run the same way. The spawner is
spawner.py's `LocalInstanceSpawner`.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
from pathlib import Path

from atelier.spawner import core
from atelier.spawner.backend import Capabilities
from atelier.spawner.devices import Device, count_by_type
from atelier.spawner.identity import system_account_exists
from atelier.spawner.local import accounts, cgroups, envs, snapshots, sshendpoint
from atelier.spawner.local.jobs import LocalJobs
from atelier.spawner.local.machine import MachineBackend
from atelier.spawner.local.replicas import LocalReplicas
from atelier.spawner.local.volumes import LocalVolume


@functools.cache
def env_bytes(env: Path) -> int:
    """An image environment's size (root's tree; counted once per process)."""
    return int(accounts.run("/usr/bin/du", "--summarize", "--bytes", str(env)).split()[0])


class LocalBackend(LocalReplicas, LocalJobs, MachineBackend):
    name = "local"
    spawner_class = "LocalInstanceSpawner"

    def configure_hub(self, c, data_dir: Path) -> None:
        super().configure_hub(c, data_dir)
        c.LocalInstanceSpawner.envs_dir = str(self.settings.resolved_envs_dir)

    def prepare(self) -> None:
        super().prepare()
        if os.geteuid() == 0:
            accounts.ensure_helper_account()

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

    # snapshots ----------------------------------------------------------------------------
    def measure_snapshot(self, plan: core.SnapshotPlan) -> tuple[int, int]:
        """Its base's environment and the home's files: two layers."""
        home, account = self._home_of(plan)
        base = self.settings.resolved_envs_dir / plan.base
        return env_bytes(base) + snapshots.tree_bytes(home, account), 2

    def save_image(self, plan: core.SnapshotPlan, progress) -> str:
        home, account = self._home_of(plan)
        return snapshots.save(home, account, self.snapshots_dir, progress)

    def delete_saved_image(self, image: core.Image) -> None:
        """Its layer, unless another image has the same content."""
        others = {other.digest for other in self.store.images() if other.name != image.name}
        if image.digest and image.digest not in others:
            snapshots.layer_path(self.snapshots_dir, image.digest).unlink(missing_ok=True)

    def sweep_saved_images(self, known: set[str]) -> None:
        snapshots.sweep(self.snapshots_dir, known)

    @property
    def snapshots_dir(self) -> Path:
        return snapshots.snapshots_dir(self.settings.data_dir)

    def _home_of(self, plan: core.SnapshotPlan) -> tuple[Path, str | None]:
        """The running instance's home, and the account that may read it (None: the hub's)."""
        account = self.store.account(plan.owner)
        home = accounts.instance_home(self.shared_dir, account, plan.instance)
        return home, account if os.geteuid() == 0 else None

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
