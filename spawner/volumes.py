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
import subprocess
from dataclasses import dataclass
from pathlib import Path

from atelier.spawner.core import OptionsError

GB = 1024**3


@dataclass(frozen=True)
class VolumeLimits:
    default_gb: int = 5
    min_gb: int = 1
    max_gb: int = 4096
    step_max_gb: int = 100
    quota_gb: int = 200  # all of one user's volumes


def check_size(size_gb: object, limits: VolumeLimits) -> int:
    if isinstance(size_gb, bool) or not isinstance(size_gb, int):
        raise OptionsError("volume_gb", "must be a whole number of GB")
    if not limits.min_gb <= size_gb <= limits.max_gb:
        raise OptionsError(
            "volume_gb", f"must be from {limits.min_gb} to {limits.max_gb} GB, got {size_gb}"
        )
    return size_gb


def check_expand(
    current_gb: int, add_gb: object, used_by_owner_gb: int, limits: VolumeLimits
) -> int:
    """The new size after adding `add_gb`; volumes grow in steps and never shrink."""
    if isinstance(add_gb, bool) or not isinstance(add_gb, int):
        raise OptionsError("add_gb", "must be a whole number of GB")
    if add_gb < 1:
        raise OptionsError("add_gb", f"volumes never shrink; add at least 1 GB, got {add_gb}")
    if add_gb > limits.step_max_gb:
        raise OptionsError("add_gb", f"at most {limits.step_max_gb} GB per expansion, got {add_gb}")
    if current_gb + add_gb > limits.max_gb:
        raise OptionsError(
            "add_gb",
            f"a volume holds at most {limits.max_gb} GB; it has {current_gb}, "
            f"so at most {limits.max_gb - current_gb} more",
        )
    check_quota(used_by_owner_gb + add_gb, limits, "add_gb")
    return current_gb + add_gb


def check_quota(total_gb: int, limits: VolumeLimits, field: str) -> None:
    if total_gb > limits.quota_gb:
        raise OptionsError(
            field, f"your volumes would hold {total_gb} GB; the quota is {limits.quota_gb} GB"
        )


class VolumeMissing(RuntimeError):
    """A volume the store knows has no backing file: never replace it with an empty one."""


class LocalVolume:
    """One instance's work volume on this machine."""

    def __init__(self, data_dir: Path, owner: str, instance: str):
        self.base = Path(data_dir) / "volumes" / owner
        self.image = self.base / f"{instance}.xfs"
        self.directory = self.base / instance  # the unenforced fallback

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

    def attach(self, mount_point: Path, account: str | None) -> None:
        """Mount (or link) the volume at `mount_point`, owned by the instance's account."""
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
            run("mount", "-o", "loop,nosuid,nodev", str(self.image), str(mount_point))
            run("xfs_growfs", str(mount_point))  # take up an expansion made while stopped
        if account is not None:
            shutil.chown(mount_point, account, account)
        mount_point.chmod(0o700)

    def detach(self, mount_point: Path) -> None:
        if os.path.ismount(mount_point):
            run("umount", str(mount_point))

    def expand(self, size_gb: int, mount_point: Path) -> None:
        """Grow to `size_gb`: at once while mounted, at the next attach otherwise."""
        if not self.enforced():
            return
        with open(self.image, "r+b") as sparse:
            sparse.truncate(size_gb * GB)
        if os.path.ismount(mount_point):
            device = run("losetup", "-j", str(self.image)).split(":", 1)[0]
            run("losetup", "-c", device)
            run("xfs_growfs", str(mount_point))

    def used_bytes(self, mount_point: Path) -> int | None:
        """Bytes in use, when it can be read now (mounted, or the fallback directory)."""
        if os.path.ismount(mount_point):
            stats = os.statvfs(mount_point)
            return (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        if self.directory.is_dir():
            return sum(f.stat().st_size for f in self.directory.rglob("*") if f.is_file())
        return None

    def delete(self, mount_point: Path) -> None:
        self.detach(mount_point)
        self.image.unlink(missing_ok=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout
