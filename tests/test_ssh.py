"""SSH access rules: settings, login names, who is let in from where, failed-login limits."""

import os
import pwd
import socket
import textwrap
from pathlib import Path

import pytest

from atelier.hub import ssh
from atelier.spawner import credentials as endpoint_credentials
from atelier.spawner.core import OptionsError
from atelier.spawner.credentials import deployment_keys
from atelier.spawner.local import accounts, sshendpoint

README = Path(__file__).parents[1] / "README.md"
KEYS = {"k1", "k2"}
NOBODY = pwd.getpwnam("nobody")
OPEN = ssh.Access(True, ("k1",), ("127.0.0.0/8", "2001:db8::/32"))


def test_settings_change_only_what_the_body_names():
    changed = ssh.parse_access({"enabled": True}, ssh.Access(False, ("k2",), ("10.0.0.0/8",)), KEYS)
    assert changed == ssh.Access(True, ("k2",), ("10.0.0.0/8",))
    changed = ssh.parse_access({"keypairs": ["k1", "k1"], "allowed_cidrs": []}, changed, KEYS)
    assert changed == ssh.Access(True, ("k1",), ())


def test_cidrs_are_normalised_and_deduplicated():
    access = ssh.parse_access(
        {"allowed_cidrs": ["10.1.2.3/8", "10.0.0.0/8", "2001:DB8::1/32", "192.0.2.7"]},
        ssh.Access(),
        KEYS,
    )
    assert access.allowed_cidrs == ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32")


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ([], "ssh", "must be an object"),
        ({"port": 22}, "ssh.port", "unknown field"),
        ({"enabled": "yes"}, "ssh.enabled", "true or false"),
        ({"keypairs": "k1"}, "ssh.keypairs", "list of key pair ids"),
        ({"keypairs": ["k3"]}, "ssh.keypairs", "no key pair 'k3' of yours"),
        ({"allowed_cidrs": "10.0.0.0/8"}, "ssh.allowed_cidrs", "list of IPv4/IPv6 CIDRs"),
        ({"allowed_cidrs": ["10.0.0.0/33"]}, "ssh.allowed_cidrs", "'10.0.0.0/33' is not"),
        ({"allowed_cidrs": ["example.org"]}, "ssh.allowed_cidrs", "is not an IPv4/IPv6 CIDR"),
        (
            {"allowed_cidrs": [f"10.0.{i}.0/24" for i in range(21)]},
            "ssh.allowed_cidrs",
            "at most 20 entries; got 21",
        ),
    ],
)
def test_bad_settings_name_the_field_and_the_limit(body, field, words):
    with pytest.raises(OptionsError) as refused:
        ssh.parse_access(body, ssh.Access(), KEYS)
    assert refused.value.field == field
    assert words in refused.value.message


def test_twenty_cidrs_are_allowed():
    cidrs = [f"10.0.{i}.0/24" for i in range(20)]
    assert len(ssh.parse_access({"allowed_cidrs": cidrs}, ssh.Access(), KEYS).allowed_cidrs) == 20


@pytest.mark.parametrize(
    ("username", "login"),
    [
        ("alice+lab", ("alice", "lab")),
        ("a.b@example.org+gpu-1", ("a.b@example.org", "gpu-1")),
        ("alice", None),
        ("alice+", None),
        ("+lab", None),
        ("alice+Lab", None),
        ("alice+lab+x", None),
    ],
)
def test_login_names(username, login):
    assert ssh.parse_login(username) == login


@pytest.mark.parametrize(
    ("access", "key", "address", "default", "reason"),
    [
        (OPEN, "k1", "127.0.0.1", (), None),
        (OPEN, "k1", "2001:db8::5", (), None),
        (OPEN, "k1", "::ffff:127.0.0.1", (), None),
        (None, "k1", "127.0.0.1", (), "no such instance"),
        (ssh.Access(False, ("k1",), ("0.0.0.0/0",)), "k1", "127.0.0.1", (), "SSH is disabled"),
        (OPEN, None, "127.0.0.1", (), "not one of the user's key pairs"),
        (OPEN, "k2", "127.0.0.1", (), "not allowed for this instance"),
        (OPEN, "k1", "192.0.2.1", (), "address 192.0.2.1 is not in"),
        (ssh.Access(True, ("k1",), ()), "k1", "127.0.0.1", (), "is not in"),
        (ssh.Access(True, ("k1",), ()), "k1", "127.0.0.1", ("127.0.0.0/8",), None),
        (OPEN, "k1", "192.0.2.1", ("0.0.0.0/0",), "is not in"),  # own list wins
    ],
)
def test_who_is_let_in(access, key, address, default, reason):
    refusal = ssh.refusal(access, key, address, default)
    if reason is None:
        assert refusal is None
    else:
        assert reason in refusal


def test_failed_logins_are_limited_per_address_within_the_window():
    limit = ssh.FailureLimit(limit=3, window=60)
    for second in range(3):
        assert not limit.blocked("192.0.2.1", second)
        limit.fail("192.0.2.1", second)
    assert limit.blocked("192.0.2.1", 10)
    assert not limit.blocked("192.0.2.2", 10)
    assert limit.blocked("192.0.2.1", 59.5)
    assert not limit.blocked("192.0.2.1", 60.5)  # the failure at 0 s has expired
    limit.fail("192.0.2.1", 60.6)
    assert limit.blocked("192.0.2.1", 60.7)
    assert not limit.blocked("192.0.2.1", 122)
    assert limit.failures == {}  # forgotten once the window has passed


def test_connection_help_is_what_the_readme_shows():
    """The command and the ~/.ssh/config block the API and the SSH page show, with the key."""
    command = ssh.ssh_command("alice", "exp-1", "hub.example.org", 2222)
    assert command == "ssh -i ~/.ssh/atelier -p 2222 alice+exp-1@hub.example.org"
    readme = README.read_text()
    assert command in (line.split("#")[0].strip() for line in readme.splitlines())
    block = ssh.ssh_config("alice", "exp-1", "hub.example.org", 2222)
    assert textwrap.indent(block, "   ") in readme
    assert "    IdentityFile ~/.ssh/atelier\n" in block


def test_deployment_keys_are_made_once_and_kept(tmp_path):
    host, client = deployment_keys(tmp_path)
    first = host.read_bytes(), client.read_bytes()
    assert oct(host.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "ssh").stat().st_mode & 0o777) == "0o700"
    assert deployment_keys(tmp_path) == (host, client)
    assert (host.read_bytes(), client.read_bytes()) == first
    assert first[0] != first[1]


@pytest.mark.parametrize(
    ("options", "needed"),
    [
        ("rw,relatime,mode=600,ptmxmode=000", True),  # terminals get the user's own group
        ("rw,nosuid,noexec,relatime,gid=5,mode=620,ptmxmode=000", False),  # Debian's default
    ],
)
def test_accounts_join_tty_only_where_sshd_needs_it(options, needed):
    mounts = f"proc /proc proc rw 0 0\ndevpts /dev/pts devpts {options} 0 0\n"
    assert accounts.pty_needs_tty_group(mounts) is needed


def test_endpoint_credentials_are_per_instance(tmp_path):
    key = endpoint_credentials.credentials_key(tmp_path)
    assert endpoint_credentials.credentials_key(tmp_path) == key  # kept
    assert oct((tmp_path / endpoint_credentials.KEY_FILE).stat().st_mode & 0o777) == "0o600"
    credentials = {
        endpoint_credentials.credential(key, owner, instance)
        for owner, instance in (("alice", "lab"), ("alice", "lab2"), ("bob", "lab"), ("ali", "ce"))
    }
    assert len(credentials) == 4
    assert endpoint_credentials.credential(os.urandom(32), "alice", "lab") not in credentials


def test_root_binds_the_endpoint_in_its_own_directory(tmp_path):
    path = tmp_path / "run" / "0123" / "ssh.sock"
    path.parent.mkdir(parents=True)
    os.chown(path.parent, NOBODY.pw_uid, NOBODY.pw_gid)  # as the instance owned it before
    with sshendpoint.bind(path, NOBODY.pw_name):
        directory, socket_file = path.parent.lstat(), path.lstat()
        assert (directory.st_uid, oct(directory.st_mode & 0o777)) == (0, "0o700")
        assert (socket_file.st_uid, oct(socket_file.st_mode & 0o777)) == (NOBODY.pw_uid, "0o600")
        assert sshendpoint.owner_of(path) == NOBODY.pw_uid


def test_the_gateway_refuses_what_root_did_not_make(tmp_path):
    path = tmp_path / "run" / "0123" / "ssh.sock"
    with sshendpoint.bind(path, None) as listener:
        listener.listen()
        with socket.socket(socket.AF_UNIX) as connected:
            connected.connect(str(path))
            for owner in (0, NOBODY.pw_uid):  # root answers (never an instance), not the owner
                with pytest.raises(sshendpoint.NotTheInstancesOwn, match="not its owner"):
                    sshendpoint.check_peer(connected, path, owner)
        path.parent.chmod(0o777)
        with pytest.raises(sshendpoint.NotTheInstancesOwn, match="only root can change"):
            sshendpoint.owner_of(path)
        path.parent.chmod(0o700)
        (tmp_path / "link").symlink_to(tmp_path / "run")
        with pytest.raises(sshendpoint.NotTheInstancesOwn, match="only root can change"):
            sshendpoint.owner_of(tmp_path / "link" / "0123" / "ssh.sock")
        path.rename(path.with_name("elsewhere.sock"))
        path.symlink_to(path.with_name("elsewhere.sock"))
        with pytest.raises(sshendpoint.NotTheInstancesOwn, match="is not a socket"):
            sshendpoint.owner_of(path)
        path.unlink()
        path.write_text("")
        with pytest.raises(sshendpoint.NotTheInstancesOwn, match="is not a socket"):
            sshendpoint.owner_of(path)
