"""What the local backend does to the host: system accounts, instance homes and cgroups."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import re
import signal
import subprocess
import time
from pathlib import Path

ACCOUNT_PREFIX = "atelier-"
ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,22}$")
CGROUP_ROOTS = (
    # (hierarchy, file that marks it, memory limit file): cgroup v1's memory controller, then v2
    (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.limit_in_bytes"),
    (Path("/sys/fs/cgroup"), "cgroup.controllers", "memory.max"),
)


def run(*command: str) -> str:
    """Run a host tool (useradd aside); its output, or RuntimeError with what it printed."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = f"{result.stdout}{result.stderr}".strip()
        raise RuntimeError(f"{' '.join(command)} failed: {output}")
    return result.stdout


def instance_home(data_dir: Path, owner: str, instance: str) -> Path:
    """An instance's directory: its HOME and JupyterLab root, with the volume at work/."""
    return Path(data_dir) / "instances" / owner / instance


def ssh_socket(data_dir: Path, owner: str, instance: str) -> Path:
    """Where an instance's SSH endpoint listens: a short path (Unix sockets allow 107 bytes)."""
    digest = hashlib.sha256(f"{owner}/{instance}".encode()).hexdigest()[:16]
    return Path(data_dir) / "run" / digest / "ssh.sock"


def account_name(hub_user: str) -> str:
    """The system account of a hub user: `atelier-<name>`, hashed when the name cannot be one."""
    if ACCOUNT_NAME.match(hub_user):
        return ACCOUNT_PREFIX + hub_user
    return ACCOUNT_PREFIX + "u" + hashlib.sha256(hub_user.encode()).hexdigest()[:12]


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
    """Create a locked system account without a login password, like The Littlest JupyterHub.

    Its home is `/`: each instance sets HOME to its own directory, and sshd needs a home it
    can enter. It is in the `tty` group where sshd needs that to hand it a terminal.
    """
    groups = ["--groups", "tty"] if pty_needs_tty_group() else []
    try:
        home = pwd.getpwnam(name).pw_dir
        if home != "/" or (groups and name not in grp.getgrnam("tty").gr_mem):
            run("usermod", "--home", "/", *(["--append", *groups] if groups else []), name)
        return
    except KeyError:
        pass
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            *groups,
            "--no-create-home",
            "--home-dir",
            "/",
            "--shell",
            "/bin/bash",
            name,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode not in (0, 9):  # 9: created meanwhile by a concurrent spawn
        raise RuntimeError(f"useradd {name} failed: {result.stderr.strip()}")


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


def memory_cgroup(key: str, limit_bytes: int) -> Path | None:
    """A cgroup capping memory at `limit_bytes`, or None where the kernel does not let us."""
    if os.geteuid() != 0:
        return None
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
    for root, marker, limit_file in CGROUP_ROOTS:
        if not (root / marker).exists():
            continue
        group = root / "atelier" / slug
        try:
            group.mkdir(parents=True, exist_ok=True)
            if marker == "cgroup.controllers":
                (root / "cgroup.subtree_control").write_text("+memory")
                (group.parent / "cgroup.subtree_control").write_text("+memory")
            (group / limit_file).write_text(str(limit_bytes))
            return group
        except OSError:
            continue
    return None


def remove_cgroup(group: Path) -> None:
    """Kill whatever is left in the cgroup (kernels, terminals) and remove it."""
    for _ in range(50):
        try:
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
