"""A container's SSH endpoint as the root gateway sees it.

Each instance gets a directory of its own on the host (`<shared dir>/endpoints/<account>/
<instance>`, under root-only parents): a tiny tmpfs (room for a socket, not for data, so it
counts against no disk), mounted into its container alone; JupyterLab binds the endpoint's
socket there (atelier.extensions.ssh). The container's user can put anything in
that directory, so the gateway trusts no path in it: it connects, then asks the kernel who
listens (SO_PEERCRED) and accepts only a process inside that instance's container (the
container's PID namespace, as the engine names its init process). A link to another
instance's socket is thus refused, whoever made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
from pathlib import Path

from atelier.spawner.backend import EndpointRefused, EndpointUnavailable
from atelier.spawner.local.accounts import run
from atelier.spawner.local.sshendpoint import PEER_CREDENTIALS
from atelier.spawner.local.volumes import MOUNT, UMOUNT

SOCKET = "endpoint"
TMPFS_BYTES = 64 * 1024  # a socket takes no room: this bounds what else a user puts there
TMPFS_FLAGS = "nosuid,nodev,noexec"


def endpoints_dir(shared_dir: Path, account: str) -> Path:
    return Path(shared_dir) / "endpoints" / account


def endpoint_dir(shared_dir: Path, account: str, instance: str) -> Path:
    return endpoints_dir(shared_dir, account) / instance


def prepare(directory: Path, uid: int, gid: int) -> None:
    """A fresh tmpfs for the endpoint, the container user's, under root-only parents; what
    a previous run left there (whatever it is) goes first."""
    for parent in (directory.parent.parent, directory.parent):
        parent.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(parent)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise RuntimeError(f"{parent} is not a directory of the hub's")
        parent.chmod(0o700)
    remove(directory)
    directory.mkdir(mode=0o700)
    options = f"size={TMPFS_BYTES},nr_inodes=16,mode=0700,uid={uid},gid={gid},{TMPFS_FLAGS}"
    run(MOUNT, "-t", "tmpfs", "-o", options, "atelier-endpoint", str(directory))


def remove(directory: Path) -> None:
    """Unmount what is mounted at or below the directory, then remove it without
    following anything in it."""
    for mount in mounts_at_or_below(directory):
        try:
            run(UMOUNT, str(mount))
        except RuntimeError:  # still held (a container being removed): gone when let go
            run(UMOUNT, "--lazy", str(mount))
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(directory).st_mode):
            shutil.rmtree(directory)
        else:
            directory.unlink()


def mounts_at_or_below(directory: Path) -> list[Path]:
    """Mount points at `directory` or below it, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if point.is_relative_to(directory):
            found.append(point)
    return sorted(found, key=lambda point: len(point.parts), reverse=True)


def same_pid_namespace(pid: int, other: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino == os.stat(f"/proc/{other}/ns/pid").st_ino
    except FileNotFoundError:
        return False


async def connect(directory: Path, container_pid: int, instance: str) -> socket.socket:
    """A connection to the endpoint in `directory`, answered from inside the container whose
    init is `container_pid`; `EndpointRefused` when it is answered from anywhere else,
    `EndpointUnavailable` when nothing listens."""
    path = directory / SOCKET
    sock = socket.socket(socket.AF_UNIX)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, str(path))
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEER_CREDENTIALS.size)
    except OSError:
        sock.close()
        raise EndpointUnavailable(f"instance {instance} is not running") from None
    peer, _, _ = PEER_CREDENTIALS.unpack(credentials)
    if peer == 0 or not same_pid_namespace(peer, container_pid):
        sock.close()
        raise EndpointRefused(f"endpoint of {instance} is answered from outside its container")
    return sock
