"""Work volumes: the pure rules every backend shares, and the local backend's realisation.

On the local backend, as root, a volume is an XFS filesystem in a sparse file
(`<shared dir>/volumes/<account>/<instance>.xfs`) loop-mounted at a root-owned mount point
(`<shared dir>/mounts/<account>/<instance>`), so its size is enforced (ENOSPC) and it grows
online with xfs_growfs. (XFS rather than ext4: growing a mounted ext4 needs CAP_SYS_RESOURCE,
which containers often lack.) The instance's home links `work` to it. Without root it is a
plain directory whose size is only measured. Root acts only on paths that are root's all the
way down, and on the user's home only through calls that follow nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import shutil
import signal
import time
from pathlib import Path

from atelier.spawner.core import VolumeUnavailable
from atelier.spawner.local.accounts import instance_home, mount_point, run, volumes_dir

GB = 1024**3
LOSETUP, MKFS_XFS, XFS_GROWFS = "/usr/sbin/losetup", "/usr/sbin/mkfs.xfs", "/usr/sbin/xfs_growfs"
MOUNT, UMOUNT = "/usr/bin/mount", "/usr/bin/umount"
DIRECTORY_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
log = logging.getLogger(__name__)


class FilesystemInUse(VolumeUnavailable):
    """A filesystem's loop device outlived its unmount (it is mounted elsewhere still)."""


class VolumeMissing(VolumeUnavailable):
    """A volume the store knows has no backing file: never replace it with an empty one."""


class LocalVolume:
    """One instance's work volume on this machine."""

    def __init__(self, shared_dir: Path, account: str, instance: str):
        self.base = volumes_dir(shared_dir, account)
        self.image = self.base / f"{instance}.xfs"
        self.directory = self.base / instance  # the unenforced fallback
        self.mount = mount_point(shared_dir, account, instance)
        self.home = instance_home(shared_dir, account, instance)

    @staticmethod
    def enforced() -> bool:
        return os.geteuid() == 0 and os.access(MKFS_XFS, os.X_OK)

    def exists(self) -> bool:
        return self.image.exists() or self.directory.is_dir()

    def create(self, size_gb: int) -> None:
        """Make a new volume; a backing file already there (the store lost its record of it)
        is someone's data: refused, never formatted over."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o700)
        if not self.enforced():
            self.directory.mkdir(exist_ok=True)
            return
        try:
            make_filesystem(self.image, size_gb)
        except FileExistsError:
            raise VolumeUnavailable(
                f"a work volume file is already there ({self.image}) though none is recorded; "
                "it is not formatted over: restore the store's record or move the file away"
            ) from None

    def attach(self, account: str | None) -> None:
        """Mount the volume (as root), owned by the instance's account, and link work/ to it."""
        link_work(self.home, self.mounted(account_ids(account)))

    def mounted(self, owner: tuple[int, int] | None, traversable: bool = True) -> Path:
        """The volume's root, mounted (as root) and handed to `owner` (uid, gid; None: this
        process's own): what a home links to (its account passes through the parent
        directory: `traversable`), or a container binds (the engine, root, alone does)."""
        self._check_exists()
        if not self.enforced():
            return self.directory
        self._mount(owner, 0o711 if traversable else 0o700)
        return self.mount

    def _check_exists(self) -> None:
        if not self.exists():
            log.warning("work volume %s is missing", self.image)  # the path: operators only
            raise VolumeMissing(
                "the work volume is missing on this machine; "
                "it is not recreated empty: restore it or delete the instance"
            )

    def _mount(self, owner: tuple[int, int] | None, parent_mode: int) -> None:
        self.mount.mkdir(parents=True, exist_ok=True)
        self.mount.parent.chmod(parent_mode)
        if not os.path.ismount(self.mount):
            loop_mount(self.image, self.mount)
            run(XFS_GROWFS, str(self.mount))  # take up an expansion made while stopped
        give_root(self.mount, owner)

    def detach(self) -> None:
        """Unmount the root-owned mount point (never a path in the user's home)."""
        unmount(self.mount, self.image)

    def expand(self, size_gb: int) -> None:
        """Grow to `size_gb`: at once while mounted, at the next attach otherwise. A growth
        that fails before the filesystem took it up gives the file its old size back, so
        the volume stays the size the store keeps."""
        self._check_exists()
        if not self.enforced():
            return
        before = self.image.stat().st_size
        try:
            os.truncate(self.image, size_gb * GB)
            if os.path.ismount(self.mount):
                for device in loop_devices(self.image):
                    run(LOSETUP, "-c", device)
                run(XFS_GROWFS, str(self.mount))
        except (OSError, RuntimeError):
            if not self._filesystem_exceeds(before):
                os.truncate(self.image, before)
            raise

    def _filesystem_exceeds(self, size: int) -> bool:
        """Whether the mounted filesystem has grown past `size` bytes (shrinking the file
        under it would lose data)."""
        if not os.path.ismount(self.mount):
            return False
        stats = os.statvfs(self.mount)
        return stats.f_blocks * stats.f_frsize > size

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
        if self.mount.is_dir() and not os.path.ismount(self.mount):
            self.mount.rmdir()


def make_filesystem(image: Path, size_gb: int) -> None:
    """A new XFS filesystem in a new sparse file; a file already there is never formatted
    over (FileExistsError). mkfs on a sparse file writes only metadata: milliseconds."""
    with open(image, "xb") as sparse:
        sparse.truncate(size_gb * GB)
    try:
        run(MKFS_XFS, "-q", "-f", "-K", str(image))  # -K: nothing to discard in a new file
    except BaseException:
        image.unlink()  # this call made it: nothing in it to keep
        raise


def loop_mount(image: Path, mount: Path) -> None:
    """Mount a filesystem file at a root-owned directory, through a loop device."""
    try:  # direct I/O spares the page cache a second copy
        device = run(LOSETUP, "--find", "--show", "--direct-io=on", str(image)).strip()
    except RuntimeError:  # a backing filesystem without O_DIRECT
        device = run(LOSETUP, "--find", "--show", str(image)).strip()
    try:
        run(MOUNT, "-o", "nosuid,nodev", device, str(mount))
    except RuntimeError:
        run(LOSETUP, "-d", device)
        raise


def account_ids(account: str | None) -> tuple[int, int] | None:
    if account is None:
        return None
    entry = pwd.getpwnam(account)
    return entry.pw_uid, entry.pw_gid


def give_root(mount: Path, owner: tuple[int, int] | None) -> None:
    """Hand the mounted filesystem's root (never a link) to `owner` (uid, gid), 0700."""
    root = os.open(mount, DIRECTORY_NOFOLLOW)
    try:
        if owner is not None:
            os.fchown(root, *owner)
        os.fchmod(root, 0o700)
    finally:
        os.close(root)


def loop_devices(image: Path) -> list[str]:
    listing = run(LOSETUP, "-j", str(image)) if image.exists() else ""
    return [line.split(":", 1)[0] for line in listing.splitlines() if line]


def unmount(mount: Path, image: Path) -> None:
    """Unmount a root-owned mount point and free the image's loop devices. The processes
    still using the filesystem are killed first: the owner's own (all of a user's instances
    run as one account), reaching into an instance that is stopping; left alive they would
    keep its loop device, and its file's disk, past every quota."""
    if os.path.ismount(mount):
        kill_users(os.stat(mount).st_dev)
        try:
            run(UMOUNT, str(mount))
        except RuntimeError:  # entered again meanwhile: detach now, free when they let go
            run(UMOUNT, "--lazy", str(mount))
    for device in loop_devices(image):
        run(LOSETUP, "-d", device)  # released at once, or when its last mount ends


def kill_users(device: int, patience_s: float = 5.0) -> None:
    """SIGKILL every process whose cwd, root, open files or mapped files lie on the
    filesystem `device`, until none is left (or `patience_s` is over). Each process is held
    by a pidfd while it is judged, so a pid reused meanwhile is never signalled."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        found = False
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                process = os.pidfd_open(int(entry.name))
            except ProcessLookupError:
                continue
            try:
                if uses_filesystem(entry.path, device):
                    signal.pidfd_send_signal(process, signal.SIGKILL)
                    found = True
            except ProcessLookupError:
                pass
            finally:
                os.close(process)
        if not found:
            return
        time.sleep(0.05)


def uses_filesystem(proc: str, device: int) -> bool:
    """Whether the process at `proc` (/proc/<pid>) has anything on the filesystem `device`."""
    try:
        links = ["cwd", "root", *(f"fd/{fd}" for fd in os.listdir(f"{proc}/fd"))]
        for link in links:
            try:
                if os.stat(f"{proc}/{link}").st_dev == device:
                    return True
            except (FileNotFoundError, PermissionError):  # closed meanwhile; not ours to see
                continue
        mapped = f"{os.major(device):02x}:{os.minor(device):02x}"
        with open(f"{proc}/maps") as maps:
            return any(line.split()[3] == mapped for line in maps)
    except (FileNotFoundError, ProcessLookupError, PermissionError):  # exited; not ours to see
        return False


def link_work(home: Path, volume_root: Path) -> None:
    """Make `work` in the instance's home a link to its volume. The home is the user's: a
    link they put there is replaced (unlinking follows nothing); anything else stays, and
    the volume is not attached."""
    directory = os.open(home, DIRECTORY_NOFOLLOW)
    try:
        try:
            if os.readlink("work", dir_fd=directory) == str(volume_root):
                return
            os.unlink("work", dir_fd=directory)
        except FileNotFoundError:
            pass
        try:
            os.symlink(volume_root, "work", dir_fd=directory)
        except FileExistsError:  # made meanwhile by the user's own processes
            raise OSError(errno.EINVAL, "not a link") from None
    except OSError as error:
        if error.errno != errno.EINVAL:  # EINVAL: there, but not a link
            raise
        log.warning("%s/work is not the volume's link; left as it is", home)
        raise VolumeUnavailable(
            "work in the instance's home is not the link to its volume: "
            "move it away (e.g. rename it) and start the instance again"
        ) from None
    finally:
        os.close(directory)
