"""What the local backend does to the host: system accounts and the shared dir's layout.

The shared dir holds what instance accounts must reach: image environments (envs/), instance
homes (homes/<account>/<instance>), volume mount points (mounts/<account>/<instance>), the
backing files of volumes and homes (volumes/<account>/) and SSH endpoint sockets (run/). Every
directory in it is root's except each instance's home (as root, a filesystem of its own
mounted there), so nothing the hub does as root passes through a path component a user can
write. It is apart from the data dir, which is the hub's alone (0700).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import subprocess
import threading
from pathlib import Path


def run(*command: str, env: dict[str, str] | None = None) -> str:
    """Run a host tool (by absolute path); its output, or RuntimeError with what it printed."""
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        output = f"{result.stdout}{result.stderr}".strip()
        raise RuntimeError(f"{' '.join(command)} failed: {output}")
    return result.stdout


SHARED_MODES = {"homes": 0o711, "mounts": 0o711, "volumes": 0o700, "run": 0o711}
USERADD, USERMOD, PKILL = "/usr/sbin/useradd", "/usr/sbin/usermod", "/usr/bin/pkill"
_ACCOUNTS_LOCK = threading.Lock()


def prepare_shared_dir(shared_dir: Path) -> None:
    """Create the shared dir's root-owned tree: instance accounts may pass, not write."""
    shared_dir.mkdir(parents=True, exist_ok=True)
    if shared_dir.lstat().st_uid != os.geteuid():
        raise PermissionError(f"{shared_dir}: must belong to the hub's account, not another")
    shared_dir.chmod(0o711)
    for name, mode in SHARED_MODES.items():
        (shared_dir / name).mkdir(exist_ok=True)
        (shared_dir / name).chmod(mode)


def instance_home(shared_dir: Path, account: str, instance: str) -> Path:
    """An instance's directory: its HOME and JupyterLab root, with work/ linking to its volume
    (atelier.spawner.local.homes makes it afresh at every start)."""
    return Path(shared_dir) / "homes" / account / instance


def mount_point(shared_dir: Path, account: str, instance: str) -> Path:
    """Where an instance's volume is mounted: root's all the way down."""
    return Path(shared_dir) / "mounts" / account / instance


def volumes_dir(shared_dir: Path, account: str) -> Path:
    """Where an account's volume backing files lie (root's alone)."""
    return Path(shared_dir) / "volumes" / account


def ssh_socket(shared_dir: Path, owner: str, instance: str) -> Path:
    """Where an instance's SSH endpoint listens: a short path (Unix sockets allow 107 bytes)."""
    digest = hashlib.sha256(f"{owner}/{instance}".encode()).hexdigest()[:16]
    return Path(shared_dir) / "run" / digest / "ssh.sock"


def kill_processes(account: str) -> None:
    """Kill whatever still runs as a retired account (kernels, terminals left behind)."""
    result = subprocess.run([PKILL, "-KILL", "-u", account], capture_output=True, text=True)
    if result.returncode not in (0, 1):  # 1: nothing ran as it
        raise RuntimeError(f"pkill -u {account} failed: {result.stderr.strip()}")


def remove_account_dirs(shared_dir: Path, account: str) -> None:
    """Remove a retired account's directories from the shared dir, where they are empty."""
    for place in ("homes", "mounts", "volumes"):
        with contextlib.suppress(OSError):
            (Path(shared_dir) / place / account).rmdir()


def hub_account() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def pty_needs_tty_group(mounts: str | None = None) -> bool:
    """Whether new terminals belong to the user's own group (devpts mounted without gid=5):
    then a non-root sshd must chown them to `tty`, which only members of `tty` may do."""
    mounts = Path("/proc/mounts").read_text() if mounts is None else mounts
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[1] == "/dev/pts" and fields[2] == "devpts":
            return "gid=" not in fields[3]
    return False


def ensure_account(name: str) -> None:
    """Create the locked system account a hub user claimed (no login password), like The
    Littlest JupyterHub; one at a time, so a name that turns up meanwhile is someone else's.

    Its home is `/`: each instance sets HOME to its own directory, and sshd needs a home it
    can enter. It is in the `tty` group where sshd needs that to hand it a terminal.
    """
    groups = ["--groups", "tty"] if pty_needs_tty_group() else []
    with _ACCOUNTS_LOCK:
        try:
            home = pwd.getpwnam(name).pw_dir
            if home != "/" or (groups and name not in grp.getgrnam("tty").gr_mem):
                run(USERMOD, "--home", "/", *(["--append", *groups] if groups else []), name)
            return
        except KeyError:
            pass
        run(
            USERADD,
            "--system",
            "--user-group",
            *groups,
            "--no-create-home",
            "--home-dir",
            "/",
            "--shell",
            "/bin/bash",
            name,
        )


HELPER = "atelier-helper"  # the real and saved ids of the hub's tools run for an account


def ensure_helper_account() -> None:
    """The locked account no instance runs as, whose ids the hub's tools keep while they act
    as an instance's account (atelier.spawner.local.snapshots.as_account)."""
    with _ACCOUNTS_LOCK:
        try:
            pwd.getpwnam(HELPER)
        except KeyError:
            command = [USERADD, "--system", "--user-group", "--no-create-home", "--home-dir", "/"]
            run(*command, "--shell", "/usr/sbin/nologin", HELPER)


def prepare_private_dir(home: Path, account: str | None) -> None:
    """Create a directory private to an account (0700); its parents only traversable."""
    home.parent.mkdir(parents=True, exist_ok=True)
    for parent in (home.parent, home.parent.parent):
        parent.chmod(0o711)
    home.mkdir(mode=0o700, exist_ok=True)
    home.chmod(0o700)
    if account is not None:
        entry = pwd.getpwnam(account)
        os.chown(home, entry.pw_uid, entry.pw_gid)
