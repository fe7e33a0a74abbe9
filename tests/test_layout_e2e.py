"""The host layout end to end, as an attacker inside an instance tries it: the hub's state is
out of reach, a user's links never lead root elsewhere, no two users share an account, and
a deleted user leaves nothing to the next one of that name."""

import hashlib
import os
import secrets
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import BASE, WORK, owner_of

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="instances run as their own accounts as root"),
]
OPTIONS = {"image": BASE, "spec": "cpu.2u4g", "volume_gb": 1}


def as_account(account: str, script: str) -> subprocess.CompletedProcess:
    """Run a shell script in the instance's shoes: its own system account."""
    return subprocess.run(
        ["/usr/sbin/runuser", "-u", account, "--", "sh", "-c", script],
        capture_output=True,
        text=True,
    )


def stop(hub, user: str, name: str, token: str) -> None:
    assert hub.api("DELETE", f"/users/{user}/servers/{name}", token).status_code in (202, 204)
    hub.wait_for(lambda: hub.servers(user)[name]["stopped"], what=f"{user}:{name} stopped")


def test_instances_read_nothing_of_the_hubs_state(hub):
    assert stat.S_IMODE(hub.dir.stat().st_mode) == 0o700  # a clone in root's home, say
    token = hub.add_user("ivy")
    hub.start("ivy", "lab", token, OPTIONS)  # so a data dir in a 0700 directory works
    account = hub.account("ivy")
    data = hub.dir / "data"
    for secret in ("jupyterhub.sqlite", "atelier.sqlite", "jupyterhub_cookie_secret"):
        assert stat.S_IMODE((data / secret).stat().st_mode) & 0o077 == 0  # umask 077
        read = as_account(account, f"cat {data / secret}")
        assert read.returncode != 0 and "Permission denied" in read.stderr
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert "Permission denied" in as_account(account, f"cat {hub.config}").stderr
    mine = hub.home("ivy", "lab") / "work" / "mine"
    assert as_account(account, f"echo ok > {mine} && cat {mine}").stdout == "ok\n"


def test_a_work_link_to_elsewhere_mounts_nothing_there(hub):
    token = hub.add_user("mal")
    hub.start("mal", "lab", token, OPTIONS)
    account, home = hub.account("mal"), hub.home("mal", "lab")
    assert as_account(account, f"echo kept > {home}/work/note").returncode == 0
    victim = WORK / f"victim-{secrets.token_hex(4)}"  # root's own directory
    victim.mkdir(mode=0o755)
    try:
        swapped = as_account(account, f"cd {home} && rm -rf work && ln -s {victim} work")
        assert swapped.returncode == 0, swapped.stderr
        stop(hub, "mal", "lab", token)
        stopped = as_account(account, f"ls {home}")  # a stopped instance's home is root's
        assert stopped.returncode != 0 and "Permission denied" in stopped.stderr

        hub.start("mal", "lab", token, OPTIONS)
        assert str(victim) not in Path("/proc/mounts").read_text()
        assert victim.stat().st_uid == 0 and stat.S_IMODE(victim.stat().st_mode) == 0o755
        assert list(victim.iterdir()) == []
        assert (home / "work" / "note").read_text() == "kept\n"  # its own volume, still
        assert os.path.ismount((home / "work").resolve())

        stop(hub, "mal", "lab", token)
        mounts = Path("/proc/mounts").read_text()
        assert str(victim) not in mounts and f"{hub.shared_dir}/mounts/{account}/" not in mounts
    finally:
        victim.rmdir()


def test_two_hub_users_never_share_an_account(hub):
    odd = "alice.corp"  # not an account name: it maps to a digest...
    twin = "u" + hashlib.sha256(odd.encode()).hexdigest()[:12]  # ...which is this plain name
    pids = [hub.start(user, "lab", hub.add_user(user), OPTIONS) for user in (odd, twin)]
    owners = [owner_of(pid) for pid in pids]
    assert owners[0] != owners[1]
    assert owners == [hub.account(odd), hub.account(twin)]


def test_a_deleted_user_leaves_nothing_to_a_new_one_of_that_name(hub):
    token = hub.add_user("dora")
    generated = hub.atelier("POST", "/keypairs", token, json={"name": "laptop", "generate": True})
    assert generated.status_code == 201, generated.text
    pid = hub.start("dora", "lab", token, OPTIONS)
    old_uid = Path(f"/proc/{pid}").stat().st_uid
    account, home = hub.account("dora"), hub.home("dora", "lab")
    backing = hub.backing_file("dora", "lab")
    assert as_account(account, f"echo old > {home}/work/secret").returncode == 0
    leftover = subprocess.Popen(["/usr/sbin/runuser", "-u", account, "--", "sleep", "600"])

    assert hub.api("DELETE", "/users/dora").status_code == 204  # with its instance running
    assert leftover.wait(10) is not None
    assert not backing.exists() and not home.parent.exists()  # no directory of the account
    assert not Path(f"/proc/{pid}").exists()

    token = hub.add_user("dora")
    assert hub.atelier("GET", "/keypairs", token).json()["keypairs"] == []
    assert hub.wait_for(lambda: hub.atelier("GET", "/instances", token).json()["instances"] == [])
    assert hub.atelier("GET", "/quotas", token).json()["volume_gb"]["used"] == 0
    pid = hub.start("dora", "lab", token, OPTIONS)
    assert Path(f"/proc/{pid}").stat().st_uid != old_uid
    assert hub.account("dora") != account
    assert not (hub.home("dora", "lab") / "work" / "secret").exists()
