"""A second backend, for tests only: it proves that the seam (atelier.spawner.backend) is
enough to add one without touching a core file.

It is registered as real backends are, as the entry point `test` in the `atelier.backends`
group (the dist-info directory beside this module: tests/backends on sys.path or PYTHONPATH
is its installation), and chosen with `backend: test`.

Its realisation differs from the local backend's in everything but the image environments:

- every instance is a JupyterLab process (`jupyterhub-singleuser` from
  `<envs_dir>/<image>/bin`) run as ONE fixed unprivileged account (`backend_options.account`,
  default `atelier-tb`, which the backend creates): no per-user accounts, no cgroups, no
  seccomp filter, no XFS;
- its work volume is a tmpfs mounted at a root-owned directory
  (`<shared_dir>/testbackend/volumes/<owner digest>/<instance>`), its size enforced by the
  kernel (ENOSPC) and grown online with `mount -o remount,size=`; the mount stays across
  stops, starts and hub restarts, and is unmounted when the instance is deleted;
- its home (HOME and JupyterLab root) is `<shared_dir>/testbackend/homes/<owner digest>/
  <instance>`, made afresh at every start, with `work` linking to the volume;
- its SSH endpoint is a Unix socket root binds in a root-only directory and hands to the
  account (atelier.spawner.local.sshendpoint's helpers, reused), passed to JupyterLab as
  ATELIER_SSH_FD, where atelier.extensions.ssh listens.

It needs root (mount, useradd, setuid), as the e2e tests run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import platform
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, SpawnException, set_user_setuid
from pydantic import BaseModel, ConfigDict, Field
from traitlets import Unicode, default

from atelier.spawner import core
from atelier.spawner.backend import Backend, Capabilities
from atelier.spawner.base import InstanceSpawnerMixin, to_the_end
from atelier.spawner.credentials import deployment_keys
from atelier.spawner.devices import Device, count_by_type, visible_devices_environment
from atelier.spawner.local import sshendpoint

MOUNT, UMOUNT, USERADD = "/usr/bin/mount", "/usr/bin/umount", "/usr/sbin/useradd"
SINGLEUSER = "jupyterhub-singleuser"
MISSING = (
    "the instance's work volume is missing on this machine (its tmpfs is gone, as after a "
    "reboot); delete the instance and create it again"
)


def run(*command: str) -> str:
    """A host tool, by absolute path: its output, or RuntimeError with what it printed."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {(result.stdout + result.stderr).strip()}")
    return result.stdout


def ensure_account(name: str) -> pwd.struct_passwd:
    """The one locked system account every instance runs as (made once). Its shell is bash
    (sshd runs the endpoint's session with it), its home `/` (HOME is the instance's)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    with contextlib.suppress(RuntimeError):  # made meanwhile by another process: looked up
        run(USERADD, "--system", "--user-group", "--no-create-home", "--home-dir", "/",
            "--shell", "/bin/bash", name)  # fmt: skip
    return pwd.getpwnam(name)


class Layout:
    """Where one instance's things lie under the shared dir: root's all the way down, but
    for the home itself and the volume's root once mounted (the account's)."""

    MODES = {"": 0o711, "homes": 0o711, "volumes": 0o711, "run": 0o711}

    def __init__(self, shared_dir: Path, owner: str, instance: str):
        self.root = Path(shared_dir) / "testbackend"
        owner_key = hashlib.sha256(owner.encode()).hexdigest()[:16]  # any hub user name
        self.owner_homes = self.root / "homes" / owner_key
        self.owner_volumes = self.root / "volumes" / owner_key
        self.home = self.owner_homes / instance
        self.volume = self.owner_volumes / instance
        digest = hashlib.sha256(f"{owner}/{instance}".encode()).hexdigest()[:16]
        self.ssh_socket = self.root / "run" / digest / "ssh.sock"

    def prepare_root(self) -> None:
        for name, mode in self.MODES.items():
            path = self.root / name
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(mode)

    def prepare(self) -> None:
        self.prepare_root()
        for path in (self.owner_homes, self.owner_volumes):
            path.mkdir(mode=0o711, exist_ok=True)
            path.chmod(0o711)


class TmpfsVolume:
    """An instance's work volume: a tmpfs of `size_gb` at the layout's root-owned path."""

    def __init__(self, layout: Layout):
        self.path = layout.volume

    def exists(self) -> bool:
        return os.path.ismount(self.path)

    def create(self, size_gb: int, account: pwd.struct_passwd) -> None:
        if self.exists():
            raise RuntimeError(f"{self.path} is mounted already though no volume is recorded")
        self.path.mkdir(mode=0o700, exist_ok=True)
        options = f"size={size_gb}g,mode=0700,uid={account.pw_uid},gid={account.pw_gid}"
        run(MOUNT, "-t", "tmpfs", "-o", f"nosuid,nodev,{options}", "atelier-work", str(self.path))

    def expand(self, size_gb: int) -> None:
        """Online: tmpfs takes a new size while mounted, its files kept."""
        if not self.exists():
            raise core.OptionsError("add_gb", MISSING)
        run(MOUNT, "-o", f"remount,size={size_gb}g", str(self.path))

    def used_bytes(self) -> int | None:
        if not self.exists():
            return None
        stats = os.statvfs(self.path)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

    def delete(self) -> None:
        """Unmount (lazily where something still holds it: nothing reaches it by path
        again) and remove the mount point."""
        if self.exists():
            try:
                run(UMOUNT, str(self.path))
            except RuntimeError:
                run(UMOUNT, "--lazy", str(self.path))
        with contextlib.suppress(FileNotFoundError):
            self.path.rmdir()


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account: str = Field("atelier-tb", pattern=r"^[a-z][a-z0-9_-]{0,30}$")


class ProcessBackend(Backend):
    name = "test"
    Options = Options

    @property
    def shared_dir(self) -> Path:
        return self.settings.resolved_shared_dir

    @property
    def envs_dir(self) -> Path:
        return self.settings.resolved_envs_dir

    def layout(self, owner: str, instance: str) -> Layout:
        return Layout(self.shared_dir, owner, instance)

    # the hub ----------------------------------------------------------------------------
    def configure_hub(self, c, data_dir: Path) -> None:
        c.JupyterHub.spawner_class = ProcessSpawner
        c.ProcessSpawner.data_dir = str(data_dir)
        c.ProcessSpawner.shared_dir = str(self.shared_dir)
        c.ProcessSpawner.envs_dir = str(self.envs_dir)
        c.ProcessSpawner.account = self.options.account
        if self.settings.ssh.enabled:
            _, client_key = deployment_keys(data_dir)
            c.ProcessSpawner.ssh_gateway_key = client_key.with_suffix(".pub").read_text()

    def prepare(self) -> None:
        if os.geteuid() != 0:
            raise ValueError("backend: the test backend runs as root (it mounts tmpfs)")
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        if self.shared_dir.lstat().st_uid != 0:
            raise ValueError(f"shared_dir: {self.shared_dir} must belong to root")
        self.shared_dir.chmod(0o711)
        Layout(self.shared_dir, "", "").prepare_root()
        ensure_account(self.options.account)

    # what it can run ----------------------------------------------------------------------
    def capabilities(self, inventory: list[Device]) -> Capabilities:
        return Capabilities(
            accelerators=count_by_type(inventory),
            arch=platform.machine(),
            users_isolated=False,  # one account for everyone's instances
            volumes_enforced=True,
            limits_unenforced=("memory", "CPU time", "processes"),
        )

    def realised_images(self) -> frozenset[str]:
        if not self.envs_dir.is_dir():
            return frozenset()
        return frozenset(
            env.name for env in self.envs_dir.iterdir() if (env / "bin" / SINGLEUSER).exists()
        )

    # images -----------------------------------------------------------------------------
    def has_definition(self, image: str) -> bool:
        return (self.envs_dir / image / "bin" / SINGLEUSER).exists()

    def definition_hint(self, image: str) -> str:
        return f"put an environment with {SINGLEUSER} at {self.envs_dir / image}"

    def build_image(self, image: str, log) -> None:
        if not self.has_definition(image):
            raise RuntimeError(f"the test backend builds nothing: {self.definition_hint(image)}")
        log(f"{image}: the environment is there")

    # volumes ----------------------------------------------------------------------------
    def volume_used_bytes(self, owner: str, instance: str) -> int | None:
        return TmpfsVolume(self.layout(owner, instance)).used_bytes()

    def expand_volume(self, owner: str, instance: str, size_gb: int) -> None:
        TmpfsVolume(self.layout(owner, instance)).expand(size_gb)

    # SSH --------------------------------------------------------------------------------
    async def connect_ssh(self, owner: str, instance: str) -> tuple[socket.socket, str]:
        return await sshendpoint.connect(self.layout(owner, instance).ssh_socket, instance)

    # users --------------------------------------------------------------------------------
    def forget_user(self, owner: str, account: str) -> None:
        """Whatever of the user's instances is left: their volumes, homes and directories."""
        layout = self.layout(owner, "-")
        if layout.owner_volumes.is_dir():
            for mount in layout.owner_volumes.iterdir():
                TmpfsVolume(Layout(self.shared_dir, owner, mount.name)).delete()
            with contextlib.suppress(OSError):
                layout.owner_volumes.rmdir()
        shutil.rmtree(layout.owner_homes, ignore_errors=True)


class ProcessSpawner(InstanceSpawnerMixin, LocalProcessSpawner):
    """Instances as JupyterLab processes of one fixed account, volumes as tmpfs mounts."""

    data_dir = Unicode(help="The hub's private data dir (the endpoints' credential key)").tag(
        config=True
    )
    shared_dir = Unicode(help="Where homes, volumes and SSH sockets lie").tag(config=True)
    envs_dir = Unicode(help="The image environments").tag(config=True)
    account = Unicode("atelier-tb", help="The account every instance runs as").tag(config=True)
    ssh_gateway_key = Unicode(help="The SSH gateway's public key; empty: no SSH").tag(config=True)

    @default("env_keep")
    def _env_keep_default(self):
        return ["LANG", "LC_ALL"]  # nothing of the hub's environment (PYTHONPATH included)

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.shared_dir), self.user.name, self.name)

    @property
    def volume(self) -> TmpfsVolume:
        return TmpfsVolume(self.layout)

    # the lifecycle ------------------------------------------------------------------------
    async def start_plan(self, plan: core.InstancePlan):
        layout = self.layout
        self._report(45, "Preparing the instance's directory")
        try:
            entry = await asyncio.to_thread(ensure_account, self.account)
            await asyncio.to_thread(layout.prepare)
            self._report(55, "Mounting the work volume")
            await self.make_volume(lambda size_gb: self.volume.create(size_gb, entry))
        except RuntimeError as error:
            self.log.error("%s: the host refused: %s", self._log_name, error)
            raise SpawnException(
                "the instance's work volume could not be prepared on this machine",
                reason="host",
                status_code=503,
            ) from None
        if not self.volume.exists():
            raise SpawnException(MISSING, reason="volume", status_code=400)
        await to_the_end(self._fresh_home, entry)

        self._report(70, f"Starting JupyterLab on {plan.image.name}")
        bin_dir = Path(self.envs_dir) / plan.image.name / "bin"
        self.cmd = [str(bin_dir / SINGLEUSER)]
        self.notebook_dir = str(layout.home)
        with sshendpoint.passed_to(self, self.layout.ssh_socket, self.account) as ssh_environment:
            self.instance_environment = {
                **plan.environment,
                **visible_devices_environment(self.held_devices),
                "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
                "VIRTUAL_ENV": str(bin_dir.parent),
                "SHELL": "/bin/bash",
                **ssh_environment,
            }
            return await LocalProcessSpawner.start(self)

    def _fresh_home(self, entry: pwd.struct_passwd) -> None:
        """An empty home, the account's (0700), with work/ linking to the volume. rmtree
        follows no link the instance left."""
        home = self.layout.home
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(mode=0o700)
        (home / "work").symlink_to(self.layout.volume)
        os.lchown(home / "work", entry.pw_uid, entry.pw_gid)
        os.chown(home, entry.pw_uid, entry.pw_gid)

    def user_env(self, env):
        env["USER"] = self.account
        env["HOME"] = str(self.layout.home)
        return env

    def make_preexec_fn(self, name):
        setuid = set_user_setuid(self.account, chdir=False)
        home = str(self.layout.home)

        def preexec():
            setuid()
            os.umask(0o022)
            os.chdir(home)

        return preexec

    def realised(self) -> bool:
        return bool(self.pid)

    async def release_plan(self) -> None:
        """The volume stays mounted (it is kept while stopped); the SSH socket goes."""
        await asyncio.to_thread(shutil.rmtree, self.layout.ssh_socket.parent, ignore_errors=True)

    async def delete_instance(self) -> bool:
        volume = self.volume
        had = volume.exists()
        await asyncio.to_thread(volume.delete)
        await asyncio.to_thread(shutil.rmtree, self.layout.home, ignore_errors=True)
        return had
