"""Work volumes: the expansion rules, and real loop-mounted XFS volumes (as root)."""

import errno
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from atelier.hub.store import Store
from atelier.spawner.core import Limits, OptionsError, check_expand, check_volume_size
from atelier.spawner.volumes import GB, LocalVolume, VolumeMissing, VolumeUnavailable, link_work

LIMITS = Limits()
needs_root = pytest.mark.skipif(not LocalVolume.enforced(), reason="loop mounts need root")


@pytest.mark.parametrize(
    "current, add, used, message",
    [
        (5, 0, 5, "volumes never shrink; add at least 1 GB, got 0"),
        (5, -3, 5, "volumes never shrink"),
        (5, 101, 5, "at most 100 GB per expansion, got 101"),
        (4000, 100, 4000, "a volume holds at most 4096 GB; it has 4000, so at most 96 more"),
        (5, 10, 195, "your volumes would hold 205 GB; the quota is 200 GB"),
        (5, 1.5, 5, "must be a whole number of GB"),
    ],
)
def test_expansion_refusals(current, add, used, message):
    with pytest.raises(OptionsError) as error:
        check_expand(current, add, used, LIMITS)
    assert error.value.field == "add_gb" and message in error.value.message


def test_expansion_and_sizes():
    assert check_expand(5, 100, 5, LIMITS) == 105
    assert check_expand(3996, 100, 0, Limits(volume_quota_gb=10_000)) == 4096
    assert check_volume_size(1, LIMITS) == 1
    for bad in (0, 4097, "5", True):
        with pytest.raises(OptionsError, match="volume_gb"):
            check_volume_size(bad, LIMITS)


def checksum(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_root
def test_real_volume_enforces_size_grows_online_and_offline_without_loss(tmp_path):
    volume = LocalVolume(tmp_path, "alice", "lab")
    mount = volume.home / "work"
    volume.home.mkdir(parents=True)
    volume.create(1)
    volume.attach(None)
    try:
        files = {}
        for n in range(3):
            path = mount / f"data{n}.bin"
            path.write_bytes(os.urandom(20 * 1024**2))
            files[path.name] = checksum(path)
        with pytest.raises(OSError) as full, open(mount / "filler", "wb") as filler:
            for _ in range(2 * 1024):
                filler.write(b"\0" * 1024**2)
                filler.flush()
                os.fsync(filler.fileno())
        assert full.value.errno == errno.ENOSPC
        (mount / "filler").unlink()

        volume.expand(2)  # online, while mounted
        assert os.statvfs(mount).f_blocks * os.statvfs(mount).f_frsize > 1.9 * GB
        assert {p: checksum(mount / p) for p in files} == files
        volume.detach()
        volume.expand(3)  # offline
        volume.attach(None)
        assert os.statvfs(mount).f_blocks * os.statvfs(mount).f_frsize > 2.9 * GB
        assert {p: checksum(mount / p) for p in files} == files
        assert volume.used_bytes() >= 60 * 1024**2
    finally:
        volume.delete()
    assert not volume.exists() and not os.path.ismount(volume.mount)


def test_missing_backing_file_is_never_recreated(tmp_path):
    volume = LocalVolume(tmp_path, "alice", "gone")
    with pytest.raises(VolumeMissing, match="not recreated empty"):
        volume.attach(None)


def test_without_root_the_volume_is_a_measured_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(LocalVolume, "enforced", staticmethod(lambda: False))
    volume = LocalVolume(tmp_path, "bob", "lab")
    volume.create(5)
    mount = volume.home / "work"
    volume.home.mkdir(parents=True)
    volume.attach(None)
    (mount / "notes.txt").write_text("x" * 1000)
    assert volume.used_bytes() == 1000
    volume.expand(6)  # nothing to do: the size is not enforced
    volume.delete()
    assert not volume.exists()


def test_work_is_relinked_from_a_users_link_and_never_taken_from_anything_else(tmp_path):
    """The home is the user's: root replaces a link they made (never follows it) and leaves
    anything else where it is, refusing to attach."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "work").symlink_to(elsewhere)
    link_work(home, tmp_path / "volume")
    assert os.readlink(home / "work") == str(tmp_path / "volume")
    link_work(home, tmp_path / "volume")  # already right: kept
    (home / "work").unlink()
    (home / "work").mkdir()
    with pytest.raises(VolumeUnavailable, match="not the link to its volume"):
        link_work(home, tmp_path / "volume")
    assert (home / "work").is_dir() and not (home / "work").is_symlink()


def test_the_quota_holds_when_two_processes_reserve_and_expand_at_once(tmp_path):
    """The hub's spawners reserve volumes and the service expands them in one store: each
    check and its record are one transaction, so racing callers never pass a stale total."""
    url = f"sqlite:///{tmp_path / 'atelier.sqlite'}"
    hub, service = Store(url), Store(url)
    assert hub.reserve_volume("ann", "base", 20, LIMITS)
    assert not service.reserve_volume("ann", "base", 20, LIMITS)  # has its record already

    def reserve(n):
        return 90 if hub.reserve_volume("ann", f"v{n}", 90, LIMITS) else 0

    def expand(_):
        service.expand_volume("ann", "base", 60, LIMITS, lambda size: None)
        return 60

    def attempt(call, n):
        try:
            return call(n)
        except OptionsError as error:
            assert "the quota is 200 GB" in error.message and error.field in ("volume_gb", "add_gb")
            return 0

    with ThreadPoolExecutor(6) as pool:
        calls = [reserve] * 4 + [expand] * 2
        granted = sum(pool.map(attempt, calls, range(6)))
    assert hub.volume_total_gb("ann") == 20 + granted <= 200


def test_a_refused_or_failed_expansion_records_nothing(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'atelier.sqlite'}")
    with pytest.raises(OptionsError, match="made when the instance first starts"):
        store.expand_volume("ann", "none", 5, LIMITS, lambda size: None)
    store.reserve_volume("ann", "lab", 10, LIMITS)

    def fail(size):
        raise OSError("disk gone")

    with pytest.raises(OSError):
        store.expand_volume("ann", "lab", 5, LIMITS, fail)
    with pytest.raises(OptionsError, match="the quota is 200 GB"):
        store.reserve_volume("ann", "big", 191, LIMITS)
    assert store.volume_size("ann", "lab") == 10 and store.volume_total_gb("ann") == 10
