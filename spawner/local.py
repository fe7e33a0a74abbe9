"""The local backend: each instance is a JupyterLab process from its image's environment.

It realises an `InstancePlan`: allocates devices, prepares the instance directory, limits
memory, CPU time, processes and device access with cgroups where the kernel allows it, and
(when the hub runs as root) runs the server as the hub user's own system account.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
from functools import cache
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SpawnException, set_user_setuid
from traitlets import Bool, Dict, List, Unicode, default

from atelier.spawner import accounts, audit, cgroups, checks, core, seccomp, sshendpoint
from atelier.spawner.devices import (
    Allocator,
    Device,
    DevicesUnavailable,
    count_by_type,
    visible_devices_environment,
)
from atelier.spawner.envs import built_envs, env_python_bin
from atelier.spawner.homes import InstanceHome
from atelier.spawner.volumes import LocalVolume, VolumeUnavailable


@cache
def shared_store(url: str):
    """One store per URL and process, shared by every spawner and the hub's handlers."""
    from atelier.hub.store import Store

    return Store(url)


@cache
def shared_allocator(inventory: tuple[Device, ...]) -> Allocator:
    """One allocator per inventory and process: the hub's single view of held devices."""
    return Allocator(list(inventory))


def local_catalog(store, allocator: Allocator, envs_dir: Path) -> core.Catalog:
    """The catalog as this machine can run it: its accelerators, architecture and built
    image environments."""
    return store.catalog(
        count_by_type(allocator.inventory), platform.machine(), built_envs(envs_dir)
    )


class LocalInstanceSpawner(LocalProcessSpawner):
    """Run Atelier instances as local JupyterLab processes."""

    data_dir = Unicode(help="The hub's private data dir (the SSH endpoints' credential key)").tag(
        config=True
    )
    shared_dir = Unicode(
        help="What instance accounts reach: homes, volumes, SSH sockets (accounts.py's layout)"
    ).tag(config=True)
    envs_dir = Unicode(help="Where the local image environments are built").tag(config=True)
    store_url = Unicode(help="SQLAlchemy URL of Atelier's store (catalog)").tag(config=True)
    limits = Dict(help="Limits, as atelier.yaml's `limits` block").tag(config=True)
    devices = List(help="The accelerator inventory: [{kind, type, index}, ...]").tag(config=True)
    ssh_gateway_key = Unicode(
        help="The SSH gateway's public key, which instance SSH endpoints accept; empty: no SSH"
    ).tag(config=True)
    isolate_users = Bool(
        help="Run each hub user's instances as their own system account (needs root)"
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._events: list[dict] = []
        self.held_devices: list[Device] = []
        self.account = ""
        self.volume_to_make: int | None = None  # GB this start holds for a volume not yet made

    @default("isolate_users")
    def _isolate_default(self):
        return os.geteuid() == 0

    @default("env_keep")
    def _env_keep_default(self):
        return ["LANG", "LC_ALL"]

    # the pieces every backend shares --------------------------------------------------------
    @property
    def store(self):
        return shared_store(self.store_url)

    @property
    def allocator(self) -> Allocator:
        return shared_allocator(tuple(Device(**d) for d in self.devices))

    @property
    def core_limits(self) -> core.Limits:
        return core.Limits(**self.limits)

    def catalog(self) -> core.Catalog:
        return local_catalog(self.store, self.allocator, Path(self.envs_dir))

    def check(self) -> core.InstancePlan:
        """The check every door runs, once more here: the last line, whichever door it was.
        An instance that has started before (it has a volume) keeps its image."""
        started_before = self.store.volume_size(self.user.name, self.name) is not None
        return checks.check_instance(
            self.user,
            self.name,
            self.user_options,
            current_image=self.user_options.get("image") if started_before else None,
            catalog=self.catalog(),
            store=self.store,
            allocator=self.allocator,
            limits=self.core_limits,
        )

    @property
    def holder(self) -> str:
        return f"{self.user.name}:{self.name}"

    # the options form ---------------------------------------------------------------------------
    def _options_form_default(self):
        from atelier.hub.pages import render_options_form

        return render_options_form

    # the lifecycle ------------------------------------------------------------------------------
    def _report(self, progress: int, message: str) -> None:
        self.log.info("%s: %s", self._log_name, message)
        self._events.append({"progress": progress, "message": message})

    async def progress(self):
        sent = 0
        while True:
            for event in self._events[sent:]:
                yield event
                sent += 1
            await asyncio.sleep(0.2)

    @property
    def user_account(self) -> str:
        """The hub user's own account name (claimed on first use): the key of their
        directories, and who their instances run as where users are isolated."""
        return self.store.claim_account(self.user.name)

    @property
    def home(self) -> Path:
        return accounts.instance_home(Path(self.shared_dir), self.user_account, self.name)

    async def start(self):
        """Start the instance; why it failed, if it does, is kept in the store (the instance
        shows as failed, also after a hub restart) until a start succeeds or it is stopped."""
        self.store.set_failure(self.user.name, self.name, None)
        try:
            return await self._start()
        except Exception as error:
            self._record_failure(getattr(error, "log_message", None) or str(error))
            raise

    def _record_failure(self, reason: str) -> None:
        self.log.warning("%s failed: %s", self._log_name, reason)
        self.store.set_failure(self.user.name, self.name, reason)

    async def _start(self):
        self._events = []
        self._report(10, "Planning the instance")
        try:
            plan = self.check()
            self.volume_to_make = self.store.reserve_volume(
                self.user.name, self.name, plan.volume_gb, self.core_limits
            )
        except core.OptionsError as error:  # DevicesUnavailable too
            raise checks.Refused(error) from None

        try:  # from here on, any failure gives back what this start holds
            self.store.instance_created(self.user.name, self.name)
            self._report(25, f"Allocating devices for {plan.spec.name}")
            try:
                held = self.allocator.acquire(
                    self.holder, plan.spec.name, plan.accelerator_type, plan.accelerator_count
                )
            except DevicesUnavailable as error:
                raise checks.Refused(error, reason="devices") from None
            self.held_devices = held
            self._report(45, "Preparing a fresh home")
            self.account = await self._prepare_account()
            owner = self.account if self.isolate_users else None
            size_gb = self.core_limits.ephemeral_storage_gb
            with self._host_filesystem("home"):
                await asyncio.to_thread(self.instance_home.reset, size_gb, owner)
            self._report(55, "Attaching the work volume")
            with self._host_filesystem("work volume"):
                self._attach_volume()
            self._create_cgroups(plan, held)

            self._report(70, f"Starting JupyterLab on {plan.image.name}")
            bin_dir = env_python_bin(Path(self.envs_dir), plan.image.name)
            self.cmd = [str(bin_dir / "jupyterhub-singleuser")]
            self.notebook_dir = str(self.home)
            with self._ssh_endpoint() as ssh_environment:
                self._plan_environment = {
                    **plan.environment,
                    **visible_devices_environment(held),
                    "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
                    "VIRTUAL_ENV": str(bin_dir.parent),
                    "SHELL": "/bin/bash",
                    **ssh_environment,
                }
                return await super().start()
        except BaseException:
            await self._release()
            raise

    @property
    def ssh_socket(self) -> Path:
        return accounts.ssh_socket(Path(self.shared_dir), self.user.name, self.name)

    @contextlib.contextmanager
    def _ssh_endpoint(self):
        """The SSH endpoint's socket, bound by root (atelier.spawner.sshendpoint) and passed to
        JupyterLab, which listens on it (atelier.extensions.ssh); yields the settings the
        endpoint needs from the environment. The hub's copy of the socket closes after."""
        if not self.ssh_gateway_key:
            yield {}
            return
        from atelier.hub.keypairs import deployment_keys

        account = self.account if self.isolate_users else None
        try:
            listener = sshendpoint.bind(self.ssh_socket, account)
        except sshendpoint.NotTheInstancesOwn as error:
            raise SpawnException(f"SSH endpoint: {error}", reason="ssh") from None
        key = sshendpoint.credentials_key(deployment_keys(Path(self.data_dir))[0].parent)
        credential = sshendpoint.credential(key, self.user.name, self.name)
        popen_kwargs = self.popen_kwargs
        with listener:
            self.popen_kwargs = {**popen_kwargs, "pass_fds": (listener.fileno(),)}
            try:
                yield {
                    "ATELIER_SSH_FD": str(listener.fileno()),
                    "ATELIER_SSH_GATEWAY_KEY": self.ssh_gateway_key,
                    "ATELIER_SSH_CREDENTIAL": credential,
                }
            finally:
                self.popen_kwargs = popen_kwargs

    @property
    def instance_home(self) -> InstanceHome:
        return InstanceHome(Path(self.shared_dir), self.user_account, self.name)

    @property
    def volume(self) -> LocalVolume:
        return LocalVolume(Path(self.shared_dir), self.user_account, self.name)

    @contextlib.contextmanager
    def _host_filesystem(self, what: str):
        """A home or volume that cannot be had: the user reads why in one line; a host
        tool's output (host paths) is for the operator's log only."""
        try:
            yield
        except VolumeUnavailable as error:
            raise SpawnException(str(error), reason="volume", status_code=400) from None
        except (OSError, RuntimeError) as error:
            self.log.error("%s: preparing the %s failed: %s", self._log_name, what, error)
            message = (
                f"the instance's {what} could not be prepared on this machine; "
                "ask the hub's operator (its log says why)"
            )
            raise SpawnException(message, reason="host", status_code=503) from None

    def _attach_volume(self) -> None:
        """Make the work volume while it is only reserved, then attach it (work/ links to
        it). A volume made before is never made again: lost, attaching it is refused."""
        if self.volume_to_make is not None:
            self.volume.create(self.volume_to_make)
            self.store.volume_made(self.user.name, self.name)
            self.volume_to_make = None
            self._audit_volume(audit.Action.CREATE_VOLUME)
        self.volume.attach(self.account if self.isolate_users else None)

    def _release_reservation(self) -> None:
        """A start that failed before making the volume it reserved gives the quota back."""
        if self.volume_to_make is not None:
            self.store.release_volume(self.user.name, self.name)
            self.volume_to_make = None

    def _audit_volume(self, action: audit.Action) -> None:
        """Recorded as caused by the request that started or deleted the instance."""
        actor, source_ip = checks.requester.get() or (self.user.name, "")
        event = audit.event(
            action,
            actor=actor,
            source_ip=source_ip,
            resource=f"{self.user.name}/{self.name}",
            owner=self.user.name,
        )
        self.store.record(**event)

    async def delete_forever(self):
        """The instance is deleted: so is its work volume, and its directory. (The default
        server, which JupyterHub deletes with its user, is never an instance.)"""
        if not self.name:
            return
        made = self.volume.exists()
        await asyncio.to_thread(self._delete_files)
        self.store.forget_volume(self.user.name, self.name)
        if made:  # an instance that never started had no volume to delete
            self._audit_volume(audit.Action.DELETE_VOLUME)

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

    def get_env(self):
        env = super().get_env()
        env.update(getattr(self, "_plan_environment", {}))
        return env

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

    async def poll(self):
        had_process = bool(self.pid)
        status = await super().poll()
        if status is not None:
            # dead while starting, or while running without anyone stopping it
            if had_process and (self._waiting_for_response or not self._stop_pending):
                when = "during start-up" if self._waiting_for_response else "unexpectedly"
                self._record_failure(f"JupyterLab exited {when} (exit status {status})")
            await self._release()
        return status

    async def stop(self, now=False):
        if self._waiting_for_response:  # the hub gave up waiting for it to answer
            self._record_failure(f"JupyterLab did not answer within {self.http_timeout} seconds")
        await super().stop(now=now)
        await self._release()

    async def _release(self) -> None:
        self._release_reservation()
        self.allocator.release(self.holder)
        self.held_devices = []
        groups = cgroups.Hierarchy.detect().groups(self.cgroup_name)
        await asyncio.to_thread(cgroups.remove, groups)
        await asyncio.to_thread(self.volume.detach)  # kills what still uses it: not on the loop
        await asyncio.to_thread(self.instance_home.release)

    # hub restarts ---------------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.pid:
            state["devices"] = [d.to_json() for d in self.held_devices]
            state["account"] = self.account
        return state

    def load_state(self, state):
        super().load_state(state)
        self.held_devices = [Device(**d) for d in state.get("devices", [])]
        self.account = state.get("account", "")
        if self.pid and self.held_devices:
            self.allocator.restore(self.holder, self.held_devices)

    def clear_state(self):
        super().clear_state()
        self.held_devices = []
