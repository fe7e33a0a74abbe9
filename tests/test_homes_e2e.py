"""The instance's disk outside work/ end to end: what a run writes there is gone at the next
start (work/ is kept), it is bounded apart from work/, and links a user leaves in it never lead
the hub elsewhere."""

import os
import secrets
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import BASE, WORK, Hub
from test_layout_e2e import as_account

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="homes are filesystems of their own as root"),
]
OPTIONS = {"image": BASE, "spec": "cpu.2u4g", "volume_gb": 1}


def home_file(hub, user: str, instance: str):
    return hub.shared_dir / "volumes" / hub.account(user) / f"{instance}.home.xfs"


def wait_running(hub, token, path: str) -> None:
    """Wait until the instance answers (a loaded machine can take longer than a request)."""

    def running() -> bool:
        return hub.atelier("GET", path, token).json()["status"] == "running"

    hub.wait_for(running, what=f"{path} running")


def test_outside_work_resets_at_every_start_and_work_is_kept(hub):
    token = hub.add_user("rita")
    created = hub.atelier("POST", "/instances", token, json={"name": "r1", **OPTIONS})
    assert created.status_code == 201, created.text
    wait_running(hub, token, "/instances/rita/r1")
    account, home = hub.account("rita"), hub.home("rita", "r1")
    assert home.owner() == account and stat.S_IMODE(home.stat().st_mode) == 0o700
    victim = WORK / f"victim-{secrets.token_hex(4)}"  # root's own, on the host
    victim.mkdir(mode=0o755)
    (victim / "secret").write_text("root's\n")
    try:
        planted = as_account(
            account,
            f"cd {home} && echo mine > notes.txt && echo 'alias ls=rm' > .bashrc"
            f" && mkdir -p .local/lib/python3.11/site-packages && touch .local/lib/python3.11"
            f"/site-packages/installed.py && echo kept > work/kept.txt"
            f" && ln -s {victim} escape && ln -s {victim}/secret secret",
        )
        assert planted.returncode == 0, planted.stderr
        before = victim.stat(), (victim / "secret").stat()

        assert hub.atelier("POST", "/instances/rita/r1/stop", token).json()["status"] == "stopped"
        assert not os.path.ismount(home) and not home_file(hub, "rita", "r1").exists()
        assert hub.atelier("POST", "/instances/rita/r1/start", token).status_code == 200
        wait_running(hub, token, "/instances/rita/r1")

        gone = ["notes.txt", ".bashrc", "escape", "secret", ".local/lib/python3.11"]
        assert [name for name in gone if os.path.lexists(home / name)] == []
        assert (home / "work" / "kept.txt").read_text() == "kept\n"
        assert os.path.ismount((home / "work").resolve())
        assert home.owner() == account and stat.S_IMODE(home.stat().st_mode) == 0o700
        assert (victim.stat(), (victim / "secret").stat()) == before  # untouched, not chowned
        assert (victim / "secret").read_text() == "root's\n"

        assert as_account(account, f"echo again > {home}/notes.txt").returncode == 0
        hub.restart()  # with the instance running: it keeps its home
        wait_running(hub, token, "/instances/rita/r1")
        assert (home / "notes.txt").read_text() == "again\n"

        deleted = hub.atelier("DELETE", "/instances/rita/r1?confirm=delete-volume", token)
        assert deleted.status_code == 204
        hub.wait_for(lambda: not home.exists(), what="the home removed")
        assert not home_file(hub, "rita", "r1").exists()
        assert str(home) not in Path("/proc/mounts").read_text()
    finally:
        (victim / "secret").unlink()
        victim.rmdir()


def test_outside_work_is_bounded_apart_from_work(envs_dir):
    hub = Hub(envs_dir, limits={"instances_per_user": 4, "ephemeral_storage_gb": 1})
    try:
        token = hub.add_user("bea")
        hub.start("bea", "b1", token, OPTIONS)
        account, home = hub.account("bea"), hub.home("bea", "b1")

        def fill(path):
            return as_account(account, f"dd if=/dev/zero of={path} bs=1M count=1200 status=none")

        full = fill(home / "filler")
        assert full.returncode != 0 and "No space left on device" in full.stderr
        assert os.stat(home_file(hub, "bea", "b1")).st_blocks * 512 < 1.1 * 1024**3  # host disk
        assert as_account(account, f"echo ok > {home}/work/fits").returncode == 0
        assert (home / "work" / "fits").read_text() == "ok\n"

        os.unlink(home / "filler")
        full = fill(home / "work" / "filler")
        assert full.returncode != 0 and "No space left on device" in full.stderr
        roomy = as_account(account, f"dd if=/dev/zero of={home}/big bs=1M count=500 status=none")
        assert roomy.returncode == 0, roomy.stderr
        assert (home / "big").stat().st_size == 500 * 1024**2
    finally:
        hub.stop()


def loop_devices_over(backing_file: Path) -> list[str]:
    """Loop devices over this file, also over earlier files of that name since unlinked."""
    listing = subprocess.run(["/usr/sbin/losetup", "-a"], capture_output=True, text=True)
    return [line for line in listing.stdout.splitlines() if f"({backing_file}" in line]


def test_a_home_held_from_the_users_other_instance_leaks_nothing_across_restarts(hub):
    """All of a user's instances run as one account, so another of them may sit in this
    instance's home; stopping this one ends that process instead of leaving the home's
    loop device and file (disk outside every quota) behind at every stop/start."""
    token = hub.add_user("hana")
    assert hub.atelier("POST", "/instances", token, json={"name": "a", **OPTIONS}).ok
    wait_running(hub, token, "/instances/hana/a")
    account, home = hub.account("hana"), hub.home("hana", "a")
    setpriv = ["/usr/bin/setpriv", f"--reuid={account}", f"--regid={account}", "--init-groups"]
    holders = []
    try:
        for _ in range(3):  # the other instance sits in each new home in turn
            holder = subprocess.Popen([*setpriv, "sh", "-c", f"cd {home} && exec sleep 300"])
            holders.append(holder)
            cwd = f"/proc/{holder.pid}/cwd"
            hub.wait_for(lambda c=cwd: os.readlink(c) == str(home), what="the other instance in it")
            stopped = hub.atelier("POST", "/instances/hana/a/stop", token).json()
            assert stopped["status"] == "stopped"
            assert holder.wait(timeout=10) == -9  # ended with the home it held
            assert loop_devices_over(home_file(hub, "hana", "a")) == []
            assert hub.atelier("POST", "/instances/hana/a/start", token).ok
            wait_running(hub, token, "/instances/hana/a")
        hub.atelier("POST", "/instances/hana/a/stop", token)
        assert loop_devices_over(home_file(hub, "hana", "a")) == []  # none "(deleted)"
        assert not home_file(hub, "hana", "a").exists()
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_volume_the_host_cannot_mount_fails_the_start_in_one_line_without_host_paths(hub):
    """A damaged volume file: the user reads one line saying to ask the operator; the
    mount's own output (host paths, loop devices) goes to the hub's log only."""
    token = hub.add_user("odile")
    assert hub.atelier("POST", "/instances", token, json={"name": "o", **OPTIONS}).ok
    wait_running(hub, token, "/instances/odile/o")
    assert hub.atelier("POST", "/instances/odile/o/stop", token).json()["status"] == "stopped"
    volume = hub.shared_dir / "volumes" / hub.account("odile") / "o.xfs"
    with open(volume, "r+b") as damaged:
        damaged.write(bytes(64 * 1024))  # no superblock left

    started = hub.atelier("POST", "/instances/odile/o/start", token)
    assert started.status_code in (502, 503), started.text
    shown = hub.atelier("GET", "/instances/odile/o", token).json()
    expected = "could not be prepared on this machine; ask the hub's operator"
    for message in (started.json()["error"]["message"], shown["reason"]):
        assert "work volume" in message and expected in message
        assert str(hub.shared_dir) not in message and "/dev/loop" not in message
        assert "\n" not in message
    assert shown["status"] == "failed"
    assert loop_devices_over(volume) == [] and not os.path.ismount(hub.home("odile", "o"))


def test_a_work_volume_held_from_the_users_other_instance_does_not_block_the_next_start(hub):
    """The same for work/: a process of the user's other instance left in it is ended at
    the stop, and the volume mounts again at the next start, its files there."""
    token = hub.add_user("wim")
    assert hub.atelier("POST", "/instances", token, json={"name": "w", **OPTIONS}).ok
    wait_running(hub, token, "/instances/wim/w")
    account, work = hub.account("wim"), hub.home("wim", "w") / "work"
    assert as_account(account, f"echo kept > {work}/kept.txt").returncode == 0
    setpriv = ["/usr/bin/setpriv", f"--reuid={account}", f"--regid={account}", "--init-groups"]
    holder = subprocess.Popen([*setpriv, "sh", "-c", f"cd {work} && exec sleep 300"])
    try:
        cwd = f"/proc/{holder.pid}/cwd"
        hub.wait_for(lambda: os.readlink(cwd) == str(work.resolve()), what="the holder in work/")
        assert hub.atelier("POST", "/instances/wim/w/stop", token).json()["status"] == "stopped"
        assert holder.wait(timeout=10) == -9
        volume = hub.shared_dir / "volumes" / account / "w.xfs"
        assert loop_devices_over(volume) == []
        started = hub.atelier("POST", "/instances/wim/w/start", token)
        assert started.ok, started.text
        wait_running(hub, token, "/instances/wim/w")
        assert (work / "kept.txt").read_text() == "kept\n"
    finally:
        holder.kill()
        holder.wait()
