"""The local backend's spawner: each instance is a JupyterLab process from its image's
environment.

It realises an `InstancePlan` (the shared part is `InstanceSpawnerMixin`): prepares a fresh
home and attaches the work volume, limits memory, CPU time, processes and device access with
cgroups where the kernel allows it, and (when the hub runs as root) runs the server as the hub
user's own system account under a seccomp filter.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SpawnException, set_user_setuid
from traitlets import Bool, Unicode, default

from atelier.spawner import checks, core
from atelier.spawner.base import InstanceSpawnerMixin, to_the_end
from atelier.spawner.devices import Device, visible_devices_environment
from atelier.spawner.local import accounts, cgroups, seccomp, snapshots, sshendpoint
from atelier.spawner.local.envs import env_python_bin
from atelier.spawner.local.homes import InstanceHome
from atelier.spawner.local.volumes import LocalVolume


class LocalInstanceSpawner(InstanceSpawnerMixin, LocalProcessSpawner):
    """Run Atelier instances as local JupyterLab processes."""

    data_dir = Unicode(help="The hub's private data dir (the SSH endpoints' credential key)").tag(
        config=True
    )
    shared_dir = Unicode(
        help="What instance accounts reach: homes, volumes, SSH sockets (accounts.py's layout)"
    ).tag(config=True)
    envs_dir = Unicode(help="Where the local image environments are built").tag(config=True)
    ssh_gateway_key = Unicode(
        help="The SSH gateway's public key, which instance SSH endpoints accept; empty: no SSH"
    ).tag(config=True)
    isolate_users = Bool(
        help="Run each hub user's instances as their own system account (needs root)"
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.account = ""

    @default("isolate_users")
    def _isolate_default(self):
        return os.geteuid() == 0

    @default("env_keep")
    def _env_keep_default(self):
        return ["LANG", "LC_ALL"]

    @property
    def user_account(self) -> str:
        """The hub user's own account name (claimed on first use): the key of their
        directories, and who their instances run as where users are isolated."""
        return self.store.claim_account(self.user.name)

    @property
    def home(self) -> Path:
        return accounts.instance_home(Path(self.shared_dir), self.user_account, self.name)

    @property
    def instance_home(self) -> InstanceHome:
        return InstanceHome(Path(self.shared_dir), self.user_account, self.name)

    @property
    def volume(self) -> LocalVolume:
        return LocalVolume(Path(self.shared_dir), self.user_account, self.name)

    @property
    def ssh_socket(self) -> Path:
        return accounts.ssh_socket(Path(self.shared_dir), self.user.name, self.name)

    # the lifecycle ------------------------------------------------------------------------------
    async def start_plan(self, plan: core.InstancePlan):
        self._report(45, "Preparing a fresh home")
        self.account = await self._prepare_account()
        owner = self.account if self.isolate_users else None
        size_gb = self.context.limits.ephemeral_storage_gb
        with self.host_filesystem("home"):
            await to_the_end(self.instance_home.reset, size_gb, owner)
        if plan.image.base is not None:
            await self._restore_snapshot(plan.image, owner)
        self._report(55, "Attaching the work volume")
        with self.host_filesystem("work volume"):
            await self.make_volume(self.volume.create)
            await to_the_end(self.volume.attach, owner)
        await to_the_end(self._create_cgroups, plan, self.held_devices)

        self._report(70, f"Starting JupyterLab on {plan.image.name}")
        bin_dir = env_python_bin(Path(self.envs_dir), plan.image.base or plan.image.name)
        self.cmd = [str(bin_dir / "jupyterhub-singleuser")]
        self.notebook_dir = str(self.home)
        with sshendpoint.passed_to(self, self.ssh_socket, owner) as ssh_environment:
            self.instance_environment = {
                **plan.environment,
                **visible_devices_environment(self.held_devices),
                "PATH": f"{self.home}/.local/bin:{bin_dir}:/usr/local/bin:/usr/bin:/bin",
                "VIRTUAL_ENV": str(bin_dir.parent),
                "SHELL": "/bin/bash",
                **ssh_environment,
            }
            return await LocalProcessSpawner.start(self)

    async def _restore_snapshot(self, image: core.Image, owner: str | None) -> None:
        """A snapshot's home, checked against its digest before it is unpacked."""
        self._report(50, f"Restoring what {image.name} keeps")
        try:
            directory = snapshots.snapshots_dir(Path(self.data_dir))
            await to_the_end(snapshots.restore, image, directory, self.home, owner)
        except core.OptionsError as error:
            raise checks.Refused(error, reason="image") from None
        except (OSError, RuntimeError) as error:
            self.log.error("%s: restoring %s failed: %s", self._log_name, image.name, error)
            raise SpawnException(
                f"the content of {image.name} could not be restored; ask the hub's operator",
                reason="image",
                status_code=503,
            ) from None

    async def delete_instance(self) -> bool:
        made = self.volume.exists()
        await asyncio.to_thread(self._delete_files)
        return made

    def _delete_files(self) -> None:
        self.volume.delete()
        self.instance_home.release()
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(self.ssh_socket.parent, ignore_errors=True)

    async def _prepare_account(self) -> str:
        if not self.isolate_users:
            return accounts.hub_account()
        name = self.user_account
        await asyncio.to_thread(accounts.ensure_account, name)
        return name

    def user_env(self, env):
        env["USER"] = self.account
        env["HOME"] = str(self.home)
        return env

    @property
    def cgroup_name(self) -> str:
        """The instance's own cgroup: from the hub user's account (one per user, even when
        instances run as the hub's account) and the instance name, so never shared."""
        return cgroups.group_name(self.user_account, self.name)

    def _create_cgroups(self, plan: core.InstancePlan, held: list[Device]) -> None:
        limits = cgroups.Limits(memory_bytes=plan.spec.memory_gb * 1024**3, cpu=plan.spec.cpu)
        rules = cgroups.device_rules(held, cgroups.read_device_nodes())
        cgroups.Hierarchy.detect().create(self.cgroup_name, limits, rules)

    def make_preexec_fn(self, name):
        setuid = set_user_setuid(self.account, chdir=False) if self.isolate_users else None
        procs = [g / "cgroup.procs" for g in cgroups.Hierarchy.detect().groups(self.cgroup_name)]
        home = str(self.home)
        confine = seccomp.loader(platform.machine())

        def preexec():
            for group_procs in procs:  # in every controller's group before dropping root
                group_procs.write_text(str(os.getpid()))
            confine()  # no namespaces for it and its children; as root: no no_new_privs
            if setuid is not None:
                setuid()
            os.umask(0o022)  # the hub's own umask (077) is for its private state
            os.chdir(home)

        return preexec

    def realised(self) -> bool:
        return bool(self.pid)

    async def release_plan(self) -> None:
        groups = cgroups.Hierarchy.detect().groups(self.cgroup_name)
        await asyncio.to_thread(cgroups.remove, groups)
        if not self.store.volume_in_use(self.user.name, self.name):  # else it stays for them
            await asyncio.to_thread(self.volume.detach)  # kills what still uses it: off the loop
        await asyncio.to_thread(self.instance_home.release)

    # hub restarts ---------------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.pid:
            state["account"] = self.account
        return state

    def load_state(self, state):
        super().load_state(state)
        self.account = state.get("account", "")
