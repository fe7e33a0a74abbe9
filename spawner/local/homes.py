"""Instance homes: the instance's disk outside work/, its ephemeral storage.

Only the work volume persists, as in a managed notebook's container: whatever else a run
writes (files, dotfiles, `pip install --user`) is gone at the next start, and it is bounded
by `limits.ephemeral_storage_gb`. As root the home is a new XFS filesystem in a sparse file
(`<shared dir>/volumes/<account>/<instance>.home.xfs`, root's alone) loop-mounted at the
home's root-owned mount point: made with mkfs at every start, it holds nothing of the last
run without root ever walking what the user left there, and writing past its size fails
with ENOSPC without touching work/ or the host's disk. Stopping kills what still uses it
(the user's other instances run as the same account), unmounts it and drops the file; a
file whose loop device outlived that (mounted elsewhere still) is kept, and the next start
refused, so no stop/start ever leaks a second one. Without root the home is a plain
directory, emptied at start, its size not limited.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from atelier.spawner.local.accounts import instance_home, prepare_private_dir, volumes_dir
from atelier.spawner.local.volumes import (
    FilesystemInUse,
    LocalVolume,
    account_ids,
    give_root,
    loop_devices,
    loop_mount,
    make_filesystem,
    unmount,
)

_LOCKS: dict[Path, threading.Lock] = {}  # one per home: a cancelled start releases in a thread
_LOCKS_GUARD = threading.Lock()


class InstanceHome:
    """One instance's home on this machine: its HOME and JupyterLab root."""

    def __init__(self, shared_dir: Path, account: str, instance: str):
        self.path = instance_home(shared_dir, account, instance)
        self.image = volumes_dir(shared_dir, account) / f"{instance}.home.xfs"

    enforced = staticmethod(LocalVolume.enforced)  # the same tools and rights as volumes

    def reset(self, size_gb: int, account: str | None) -> None:
        """Give a starting instance an empty home of `size_gb`, the account's (None: the
        hub's own), 0700."""
        with self._lock():
            if not self.enforced():  # emptied: fd-based on Linux, rmtree follows no link
                shutil.rmtree(self.path, ignore_errors=True)
                prepare_private_dir(self.path, account)
                return
            self._release()  # a run the hub never saw stop (it was down) left it mounted
            if self.image.exists():
                raise FilesystemInUse(
                    "the instance's previous home is still in use outside it "
                    "(mounted elsewhere); end what holds it, or ask the operator, then start again"
                )
            self._make_mount_point()
            self.image.parent.mkdir(parents=True, exist_ok=True)
            self.image.parent.chmod(0o700)
            make_filesystem(self.image, size_gb)
            try:
                loop_mount(self.image, self.path)
                give_root(self.path, account_ids(account))
            except BaseException:
                self._release()
                raise

    def _lock(self) -> threading.Lock:
        with _LOCKS_GUARD:
            return _LOCKS.setdefault(self.image, threading.Lock())

    def _make_mount_point(self) -> None:
        """An empty root-owned directory, 0700 while nothing is mounted on it. A home from
        before homes were filesystems is the user's: removed without following its links."""
        if self.path.exists() and (self.path.lstat().st_uid != 0 or os.listdir(self.path)):
            shutil.rmtree(self.path)
        prepare_private_dir(self.path, None)

    def release(self) -> None:
        """Unmount it and drop its file (stop, delete): nothing in it is ever used again."""
        with self._lock():
            if self.enforced():
                self._release()

    def _release(self) -> None:
        unmount(self.path, self.image)
        if not loop_devices(self.image):  # else kept: the next start sees it is held
            self.image.unlink(missing_ok=True)
