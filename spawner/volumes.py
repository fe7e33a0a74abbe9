"""Work volumes: the pure rules every backend shares, and the local backend's realisation.

On the local backend, as root, a volume is an XFS filesystem in a sparse file
(`<data dir>/volumes/<user>/<instance>.xfs`) loop-mounted at the instance's `work/`, so its
size is enforced (ENOSPC) and it grows online with xfs_growfs. (XFS rather than ext4: growing
a mounted ext4 needs CAP_SYS_RESOURCE, which containers often lack.) Without root it is a
plain directory whose size is only measured.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from atelier.spawner.accounts import instance_home, run

GB = 1024**3


class VolumeMissing(RuntimeError):
    """A volume the store knows has no backing file: never replace it with an empty one."""


class LocalVolume:
    """One instance's work volume on this machine."""

    def __init__(self, data_dir: Path, owner: str, instance: str):
        self.base = Path(data_dir) / "volumes" / owner
        self.image = self.base / f"{instance}.xfs"
        self.directory = self.base / instance  # the unenforced fallback
        self.mount = instance_home(data_dir, owner, instance) / "work"

    @staticmethod
    def enforced() -> bool:
        return os.geteuid() == 0 and shutil.which("mkfs.xfs") is not None

    def exists(self) -> bool:
        return self.image.exists() or self.directory.is_dir()

    def create(self, size_gb: int) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o700)
        if not self.enforced():
            self.directory.mkdir(exist_ok=True)
            return
        with open(self.image, "wb") as sparse:
            sparse.truncate(size_gb * GB)
        run("mkfs.xfs", "-q", "-f", str(self.image))

    def attach(self, account: str | None) -> None:
        """Mount (or link) the volume at the instance's work/, owned by its account."""
        mount_point = self.mount
        if not self.exists():
            raise VolumeMissing(
                f"the work volume is missing (expected {self.image}); "
                "it is not recreated empty: restore it or delete the instance"
            )
        if not self.enforced():
            if not mount_point.is_symlink():
                mount_point.symlink_to(self.directory)
            return
        mount_point.mkdir(exist_ok=True)
        if not os.path.ismount(mount_point):
            device = self._loop_device()
            try:
                run("mount", "-o", "nosuid,nodev", device, str(mount_point))
            except RuntimeError:
                run("losetup", "-d", device)
                raise
            run("xfs_growfs", str(mount_point))  # take up an expansion made while stopped
        if account is not None:
            shutil.chown(mount_point, account, account)
        mount_point.chmod(0o700)

    def _loop_device(self) -> str:
        """A loop device over the image; direct I/O spares the page cache a second copy."""
        try:
            return run("losetup", "--find", "--show", "--direct-io=on", str(self.image)).strip()
        except RuntimeError:  # a backing filesystem without O_DIRECT
            return run("losetup", "--find", "--show", str(self.image)).strip()

    def _devices(self) -> list[str]:
        listing = run("losetup", "-j", str(self.image)) if self.image.exists() else ""
        return [line.split(":", 1)[0] for line in listing.splitlines() if line]

    def detach(self) -> None:
        mount_point = self.mount
        if os.path.ismount(mount_point):
            try:
                run("umount", str(mount_point))
            except RuntimeError:  # still busy: detach now, free when the last user lets go
                run("umount", "--lazy", str(mount_point))
        for device in self._devices():
            run("losetup", "-d", device)  # released at once, or when the lazy unmount ends

    def expand(self, size_gb: int) -> None:
        """Grow to `size_gb`: at once while mounted, at the next attach otherwise."""
        if not self.enforced():
            return
        with open(self.image, "r+b") as sparse:
            sparse.truncate(size_gb * GB)
        if os.path.ismount(self.mount):
            for device in self._devices():
                run("losetup", "-c", device)
            run("xfs_growfs", str(self.mount))

    def used_bytes(self) -> int | None:
        """Bytes in use, when it can be read now (mounted, or the fallback directory)."""
        if os.path.ismount(self.mount):
            stats = os.statvfs(self.mount)
            return (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        if self.directory.is_dir():
            return sum(f.stat().st_size for f in self.directory.rglob("*") if f.is_file())
        return None

    def delete(self) -> None:
        self.detach()
        self.image.unlink(missing_ok=True)
        shutil.rmtree(self.directory, ignore_errors=True)
