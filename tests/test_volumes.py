"""Work volumes: the expansion rules, and real loop-mounted XFS volumes (as root)."""

import errno
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from atelier.hub.context import Context
from atelier.hub.settings import Settings
from atelier.hub.store import records
from atelier.hub.store.store import Store
from atelier.spawner.core import Limits, OptionsError, check_expand, check_volume_size
from atelier.spawner.devices import Allocator
from atelier.spawner.local import volumes
from atelier.spawner.local.backend import LocalBackend
from atelier.spawner.local.volumes import (
    GB,
    LocalVolume,
    VolumeMissing,
    VolumeUnavailable,
    link_work,
)

LIMITS = Limits()
BASE = "python_3.11-cpu-py_3.11-debian_12-x86_64"
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
    assert hub.reserve_volume("ann", "base", 20, LIMITS) == 20
    hub.volume_made("ann", "base")
    assert service.reserve_volume("ann", "base", 20, LIMITS) is None  # made already

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
    store.volume_made("ann", "lab")

    def fail(size):
        raise OSError("disk gone")

    with pytest.raises(OSError):
        store.expand_volume("ann", "lab", 5, LIMITS, fail)
    with pytest.raises(OptionsError, match="the quota is 200 GB"):
        store.reserve_volume("ann", "big", 191, LIMITS)
    assert store.volume_size("ann", "lab") == 10 and store.volume_total_gb("ann") == 10


def test_a_reservation_never_made_is_made_by_the_next_start_and_never_lost(tmp_path):
    """The hub died (or a start failed) between reserving a volume and making it: the next
    start makes it, as there is nothing to lose; only a made volume is ever refused as lost."""
    url = f"sqlite:///{tmp_path / 'atelier.sqlite'}"
    assert Store(url).reserve_volume("ann", "lab", 10, LIMITS) == 10  # then the hub dies
    store = Store(url)
    with pytest.raises(OptionsError, match="made when the instance first starts"):
        store.expand_volume("ann", "lab", 5, LIMITS, lambda size: None)
    assert store.reserve_volume("ann", "lab", 20, LIMITS) == 10  # the next start makes it
    store.volume_made("ann", "lab")
    store.release_volume("ann", "lab")  # a made volume is never given back by a start
    assert store.reserve_volume("ann", "lab", 10, LIMITS) is None
    assert store.volume_total_gb("ann") == 10
    assert store.reserve_volume("ann", "other", 5, LIMITS) == 5
    store.release_volume("ann", "other")  # a start that failed before making it
    assert store.volume_total_gb("ann") == 10 and store.volume_size("ann", "other") is None


def test_volumes_from_before_the_made_flag_count_as_made(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'atelier.sqlite'}")
    with engine.begin() as connection:
        command.upgrade(records.alembic_config(connection), "0008")
        connection.execute(
            text("INSERT INTO volumes VALUES ('ann', 'lab', 10, '2024-01-01 00:00:00')")
        )
    store = Store(str(engine.url))
    assert store.reserve_volume("ann", "lab", 10, LIMITS) is None  # made: lost means refused


@needs_root
def test_a_file_already_there_is_never_formatted_over(tmp_path):
    volume = LocalVolume(tmp_path, "alice", "lab")
    volume.base.mkdir(parents=True)
    volume.image.write_bytes(b"the user's data")
    with pytest.raises(VolumeUnavailable, match=f"already there \\({volume.image}\\)"):
        volume.create(1)
    assert volume.image.read_bytes() == b"the user's data"


@needs_root
def test_a_failed_expansion_keeps_the_size_data_and_record_and_is_audited(tmp_path, monkeypatch):
    store = Store(f"sqlite:///{tmp_path / 'atelier.sqlite'}")
    catalog = {"images": [{"name": BASE}], "specs": [{"name": "cpu.2u8g"}]}
    settings = Settings(data_dir=tmp_path, shared_dir=tmp_path, **catalog)
    context = Context(settings, store, LocalBackend(settings, store), Allocator([]))
    store.reserve_volume("ann", "lab", 1, LIMITS)
    volume = context.backend.volume("ann", "lab")
    volume.home.mkdir(parents=True)
    volume.create(1)
    store.volume_made("ann", "lab")
    volume.attach(None)
    try:
        (volume.home / "work" / "notes.txt").write_text("kept")
        monkeypatch.setattr(volumes, "XFS_GROWFS", "/usr/bin/false")  # the tool fails
        with pytest.raises(OptionsError, match="could not grow to 3 GB and keeps its size"):
            context.expand_volume("ann", "lab", 2, "ann", "10.0.0.1")
        assert volume.image.stat().st_size == GB and store.volume_size("ann", "lab") == 1
        assert (volume.home / "work" / "notes.txt").read_text() == "kept"
        _, events = store.audit(action="expandVolume")
        assert events[0]["result"] == "failure" and "could not grow" in events[0]["reason"]
        monkeypatch.undo()
        assert context.expand_volume("ann", "lab", 2, "ann", "10.0.0.1") == 3  # still grows
        assert os.statvfs(volume.mount).f_blocks * os.statvfs(volume.mount).f_frsize > 2 * GB
    finally:
        volume.delete()
