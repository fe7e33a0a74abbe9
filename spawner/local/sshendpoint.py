"""An instance's SSH endpoint as root sees it: the socket it listens on, and who may answer.

The gateway runs as root and logs in as whoever answers the endpoint's socket, so nothing an
instance can write may decide where that socket leads. Root binds the socket itself, in a
directory only root can enter, hands it to the instance's account, and passes it to the
JupyterLab process, which listens on it (atelier.extensions.ssh) and so never needs its path.
Before connecting, the gateway checks the socket is still that one; after, that the account
that listens owns it. Each connection then presents a credential of its one instance, which
no other endpoint takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import stat
import struct
from pathlib import Path

from jupyterhub.spawner import SpawnException

from atelier.spawner.backend import EndpointRefused, EndpointUnavailable
from atelier.spawner.credentials import endpoint_environment

PEER_CREDENTIALS = struct.Struct("3i")  # SO_PEERCRED: pid, uid, gid


class NotTheInstancesOwn(Exception):
    """The endpoint's socket, or whoever answers it, is not what root made for the instance."""


def trusted_directories(directory: Path) -> None:
    """Every component of `directory`: a real directory that only root (or this process's
    own account, when it is not root) can change; sticky ones as /tmp only their entries'
    owners."""
    trusted = {0, os.geteuid()}
    for part in (directory, *directory.parents):
        info = os.lstat(part)
        writable_by_others = info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in trusted or writable_by_others:
            raise NotTheInstancesOwn(f"{part} is not a directory that only root can change")


def bind(path: Path, account: str | None) -> socket.socket:
    """The endpoint's socket, bound (not listening) in a directory only root can enter, and
    handed to `account` (None: this process's own): the instance listens on it."""
    directory = path.parent
    directory.parent.mkdir(mode=0o711, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode):
            directory.unlink()
        elif info.st_uid != os.geteuid():
            shutil.rmtree(directory)  # the older layout, owned by the instance: root's now
    directory.mkdir(mode=0o700, exist_ok=True)
    directory.chmod(0o700)
    trusted_directories(directory)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(path))
        if account is not None:
            entry = pwd.getpwnam(account)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o600)
    except BaseException:
        listener.close()
        raise
    return listener


def owner_of(path: Path) -> int:
    """The uid root gave the endpoint's socket; NotTheInstancesOwn where it is not a real
    socket in root's directories, FileNotFoundError where there is none."""
    info = os.lstat(path)
    if not stat.S_ISSOCK(info.st_mode):
        raise NotTheInstancesOwn(f"endpoint {path} is not a socket")
    trusted_directories(path.parent)
    return info.st_uid


def check_peer(sock: socket.socket, path: Path, owner: int) -> int:
    """The uid listening on a connected endpoint: the socket's owner, never root."""
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEER_CREDENTIALS.size)
    _, uid, _ = PEER_CREDENTIALS.unpack(credentials)
    if uid != owner or uid == 0:
        raise NotTheInstancesOwn(f"endpoint {path} is answered by uid {uid}, not its owner")
    return uid


async def connect(path: Path, instance: str) -> tuple[socket.socket, str]:
    """A connection to the endpoint root bound at `path`, answered by the account root gave
    it, and that account's name; `EndpointRefused` when either is not what root made,
    `EndpointUnavailable` when nothing listens."""
    sock = socket.socket(socket.AF_UNIX)
    sock.setblocking(False)
    try:
        owner_uid = owner_of(path)
        await asyncio.get_running_loop().sock_connect(sock, str(path))
        account = pwd.getpwuid(check_peer(sock, path, owner_uid)).pw_name
    except (NotTheInstancesOwn, KeyError) as error:  # KeyError: a uid without an account
        sock.close()
        raise EndpointRefused(str(error)) from None
    except OSError:
        sock.close()
        raise EndpointUnavailable(f"instance {instance} is not running") from None
    return sock, account


@contextlib.contextmanager
def passed_to(spawner, path: Path, account: str | None):
    """Bind the instance's endpoint at `path` and pass it to the process `spawner` (a
    LocalProcessSpawner) starts, which listens on it (atelier.extensions.ssh); yields the
    environment the endpoint needs. The hub's copy of the socket closes after."""
    if not spawner.ssh_gateway_key:
        yield {}
        return
    try:
        listener = bind(path, account)
    except NotTheInstancesOwn as error:
        raise SpawnException(f"SSH endpoint: {error}", reason="ssh") from None
    popen_kwargs = spawner.popen_kwargs
    with listener:
        spawner.popen_kwargs = {**popen_kwargs, "pass_fds": (listener.fileno(),)}
        try:
            yield {
                "ATELIER_SSH_FD": str(listener.fileno()),
                **endpoint_environment(
                    spawner.data_dir, spawner.ssh_gateway_key, spawner.user.name, spawner.name
                ),
            }
        finally:
            spawner.popen_kwargs = popen_kwargs
