"""Work volumes end to end: real loop-mounted volumes under real instances and hub restarts."""

import hashlib
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import BASE, Hub

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="volumes are enforced as root (CI runs as root)"),
]


def as_account(account: str, *command: str) -> subprocess.CompletedProcess:
    """Run a command in the instance's shoes: its own system account."""
    return subprocess.run(
        ["runuser", "-u", account, "--", *command], capture_output=True, text=True
    )


def write_files(work, account) -> dict[str, str]:
    sums = {}
    for n in range(3):
        path = work / f"data{n}.bin"
        as_account(
            account, "dd", "if=/dev/urandom", f"of={path}", "bs=1M", "count=20", "status=none"
        )
        sums[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


def checksums(work, names) -> dict[str, str]:
    return {name: hashlib.sha256((work / name).read_bytes()).hexdigest() for name in names}


def test_volume_lifecycle_enospc_expansion_and_hub_restart(envs_dir):
    hub = Hub(envs_dir)
    try:
        token = hub.add_user("vic")
        created = hub.atelier(
            "POST",
            "/instances",
            token,
            json={"name": "v1", "image": BASE, "spec": "cpu.2u4g", "volume_gb": 1},
        )
        assert created.status_code == 201, created.text
        volume = created.json()["volume"]
        assert volume["size_gb"] == 1 and volume["enforced"] is True and volume["path"] == "work/"
        account = hub.account("vic")
        work = hub.home("vic", "v1") / "work"
        assert os.path.ismount(work.resolve()) and work.owner() == account
        assert hub.backing_file("vic", "v1").exists()

        sums = write_files(work, account)
        full = as_account(account, "dd", "if=/dev/zero", f"of={work}/filler", "bs=1M", "count=2048")
        assert full.returncode != 0 and "No space left on device" in full.stderr
        assert hub.api("GET", "/users/vic", token).status_code == 200  # the hub keeps working
        os.unlink(work / "filler")

        def expand(add_gb):
            return hub.atelier(
                "POST", "/instances/vic/v1/volume/expand", token, json={"add_gb": add_gb}
            )

        assert expand(1).json()["volume"]["size_gb"] == 2  # online
        assert os.statvfs(work).f_blocks * os.statvfs(work).f_frsize > 1.9 * 1024**3
        assert checksums(work, sums) == sums
        for bad, message in (
            (0, "volumes never shrink"),
            (101, "at most 100 GB per expansion"),
            (2.5, "whole number"),
            (100, "the quota is 200 GB"),
        ):
            if bad == 100:
                hub.atelier("POST", "/instances/vic/v1/volume/expand", token, json={"add_gb": 100})
            refused = expand(bad)
            assert refused.status_code == 400 and refused.json()["error"]["field"] == "add_gb"
            assert message in refused.json()["error"]["message"]
        size = hub.atelier("GET", "/instances/vic/v1", token).json()["volume"]["size_gb"]
        assert size == 102
        assert hub.atelier("GET", "/quotas", token).json()["volume_gb"] == {
            "used": 102,
            "allowed": 200,
        }

        assert hub.atelier("POST", "/instances/vic/v1/stop", token).json()["status"] == "stopped"
        assert not os.path.ismount(work.resolve())
        assert expand(1).json()["volume"]["size_gb"] == 103  # offline
        hub.restart()  # the volume is found again from the store
        assert hub.atelier("POST", "/instances/vic/v1/start", token).json()["status"] == "running"
        assert os.statvfs(work).f_blocks * os.statvfs(work).f_frsize > 102 * 1024**3
        assert checksums(work, sums) == sums
        hub.restart()  # with the instance running: it keeps running, its volume mounted
        assert hub.atelier("GET", "/instances/vic/v1", token).json()["status"] == "running"
        assert os.path.ismount(work.resolve()) and checksums(work, sums) == sums

        hub.atelier("POST", "/instances/vic/v1/stop", token)
        backing = hub.backing_file("vic", "v1")
        backing.rename(backing.with_suffix(".moved"))
        missing = hub.atelier("POST", "/instances/vic/v1/start", token)
        assert missing.status_code == 400
        assert "work volume is missing" in missing.json()["error"]["message"]
        assert not backing.exists()  # never silently recreated empty
        lost = expand(1)
        assert lost.status_code == 400 and lost.json()["error"]["field"] == "add_gb"
        assert "work volume is missing" in lost.json()["error"]["message"]
        assert hub.atelier("GET", "/quotas", token).json()["volume_gb"]["used"] == 103
        backing.with_suffix(".moved").rename(backing)

        assert (
            hub.atelier("DELETE", "/instances/vic/v1?confirm=delete-volume", token).status_code
            == 204
        )
        assert not backing.exists()
        events = hub.atelier("GET", "/audit?resource_type=volume", token).json()["events"]
        assert [e["action"] for e in reversed(events) if e["result"] == "success"] == [
            "createVolume",
            "expandVolume",
            "expandVolume",
            "expandVolume",
            "deleteVolume",
        ]
    finally:
        hub.stop()


def test_concurrent_creates_never_get_past_the_volume_quota(envs_dir):
    """Four creates at once, each with a 90 GB volume, against the 200 GB quota: two fit,
    two are refused naming volume_gb and the quota, and the quota never shows more used."""
    hub = Hub(envs_dir)
    try:
        token = hub.add_user("quinn")
        seen, done = [], threading.Event()

        def create(n):
            options = {"name": f"q{n}", "image": BASE, "spec": "cpu.2u4g", "volume_gb": 90}
            return hub.atelier("POST", "/instances", token, json=options)

        def watch_quota():
            while not done.is_set():
                seen.append(hub.atelier("GET", "/quotas", token).json()["volume_gb"]["used"])

        watcher = threading.Thread(target=watch_quota)
        watcher.start()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(create, range(4)))
        done.set()
        watcher.join()

        assert sorted(a.status_code for a in answers) == [201, 201, 400, 400], [
            a.text for a in answers
        ]
        for refused in (a for a in answers if a.status_code == 400):
            error = refused.json()["error"]
            assert error["field"] == "volume_gb" and "the quota is 200 GB" in error["message"]
        assert max(seen) <= 200 and hub.atelier("GET", "/quotas", token).json()["volume_gb"] == {
            "used": 180,
            "allowed": 200,
        }
        created = [a.json()["name"] for a in answers if a.status_code == 201]
        assert all(hub.backing_file("quinn", name).exists() for name in created)
    finally:
        hub.stop()
