"""Attacks on the SSH gateway's trust in an instance's endpoint, below the e2e tests.

The gateway runs as root and relays a user's session to whatever answers the instance's
endpoint, so an endpoint that is not the instance's own must never be used, and each one
refused is audited once. Two layers: the gateway's own step (any backend: the credential
must be answered with READY) with a fake backend, and the local backend's checks on the
socket and its peer (sshendpoint.connect) with real sockets, as root.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import time
from types import SimpleNamespace

import pytest

from atelier.extensions.ssh import ASK_SFTP, ASK_SSHD, READY, request
from atelier.hub.gateway.server import Connection
from atelier.spawner.backend import EndpointRefused, EndpointUnavailable
from atelier.spawner.credentials import credential
from atelier.spawner.local import sshendpoint

KEY = os.urandom(32)
NOBODY = pwd.getpwnam("nobody")
DAEMON = pwd.getpwnam("daemon")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="binds and chowns as root")


class FakeBackend:
    """connect_ssh hands out one end of a socket pair (the 'verified' endpoint), or raises."""

    def __init__(self, answer: bytes | None = None, raises: Exception | None = None):
        self.answer, self.raises = answer, raises
        self.received = b""
        self.far: socket.socket | None = None

    async def connect_ssh(self, owner: str, instance: str):
        if self.raises is not None:
            raise self.raises
        near, self.far = socket.socketpair()
        near.setblocking(False)
        self.far.settimeout(5)
        asyncio.get_running_loop().run_in_executor(None, self._serve)
        return near, "atelier-ann"

    def _serve(self) -> None:
        while not self.received.endswith(b"\n"):
            chunk = self.far.recv(4096)
            if not chunk:
                break
            self.received += chunk
        if self.answer:
            self.far.sendall(self.answer)
        self.far.close()


def connection(backend: FakeBackend) -> tuple[Connection, list[tuple]]:
    events: list[tuple] = []
    gateway = SimpleNamespace(
        backend=backend,
        credentials_key=KEY,
        audit=lambda *event: events.append(event),
    )
    conn = Connection(gateway)
    conn.login, conn.username, conn.address = ("ann", "lab"), "ann+lab", "192.0.2.7"
    return conn, events


@pytest.mark.parametrize("ask", [ASK_SSHD, ASK_SFTP])
async def test_an_endpoint_that_answers_ready_is_used_and_given_only_its_own_credential(ask):
    backend = FakeBackend(answer=READY)
    conn, events = connection(backend)
    sock, account = await conn.endpoint(ask)
    sock.close()
    assert account == "atelier-ann"
    assert backend.received == request(ask, credential(KEY, "ann", "lab"))
    assert events == []  # a success is audited once, at authentication, not here


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"no\n", "refused the credential"),  # another instance's endpoint, say
        (b"o", "refused the credential"),  # a prefix of READY is not READY
        (b"", "did not answer"),  # closed without a word
    ],
)
async def test_an_endpoint_that_does_not_take_the_credential_is_refused_and_audited_once(
    answer, why
):
    conn, events = connection(FakeBackend(answer=answer))
    with pytest.raises(EndpointRefused, match=r"^instance lab's SSH endpoint is not its own"):
        await conn.endpoint(ASK_SSHD)
    assert len(events) == 1
    username, address, actor, result, reason = events[0]
    assert (username, address, actor, result) == ("ann+lab", "192.0.2.7", "ann", "failure")
    assert why in reason and "not the instance's own" in reason
    assert credential(KEY, "ann", "lab") not in reason  # never the secret in the audit log


async def test_an_endpoint_the_backend_refuses_is_audited_once_and_its_path_not_shown():
    path = "/var/lib/atelier/run/0123/ssh.sock"
    refused = EndpointRefused(f"endpoint {path} is answered by uid 0, not its owner")
    conn, events = connection(FakeBackend(raises=refused))
    with pytest.raises(EndpointRefused) as caught:
        await conn.endpoint(ASK_SFTP)
    assert "/" not in str(caught.value)  # the user reads no host path
    assert len(events) == 1 and events[0][3] == "failure" and path in events[0][4]


@pytest.mark.parametrize(
    "raises", [EndpointUnavailable("instance lab is not running"), ConnectionRefusedError()]
)
async def test_nothing_listening_is_a_stopped_instance_not_an_audited_refusal(raises):
    conn, events = connection(FakeBackend(raises=raises))
    with pytest.raises(EndpointUnavailable) as caught:
        await conn.endpoint(ASK_SSHD)
    assert not isinstance(caught.value, EndpointRefused)
    assert str(caught.value) == "instance lab is stopped; start it from the hub"
    assert events == []


# the local backend's checks, with real sockets ---------------------------------------------
def listen_as(uid: int, listener: socket.socket) -> int:
    """A child that drops to `uid` and listens on root's bound socket (as an instance's
    JupyterLab does on the one root passes it); its pid."""
    gid = pwd.getpwuid(uid).pw_gid
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            listener.listen(8)
            time.sleep(30)
        finally:
            os._exit(0)
    return pid


@pytest.fixture
def endpoint(tmp_path):
    os.chmod(tmp_path, 0o711)
    path = tmp_path / "run" / "0123" / "ssh.sock"
    children: list[int] = []
    yield path, children
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


async def connected(path, children, owner: str | None, listener_uid: int | None):
    listener = sshendpoint.bind(path, owner)
    if listener_uid is not None:
        children.append(listen_as(listener_uid, listener))
        for _ in range(100):  # until the child listens
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
                break
            except ConnectionRefusedError:
                time.sleep(0.02)
            finally:
                probe.close()
    listener.close()
    return await sshendpoint.connect(path, "lab")


@needs_root
async def test_the_endpoints_owner_listening_is_the_instances_endpoint(endpoint):
    path, children = endpoint
    sock, account = await connected(path, children, NOBODY.pw_name, NOBODY.pw_uid)
    sock.close()
    assert account == NOBODY.pw_name


@needs_root
@pytest.mark.parametrize("listener", [DAEMON.pw_uid, 0], ids=["another account", "root"])
async def test_an_endpoint_answered_by_anyone_but_its_owner_is_refused(endpoint, listener):
    path, children = endpoint
    with pytest.raises(EndpointRefused, match="not its owner"):
        await connected(path, children, NOBODY.pw_name, listener)


@needs_root
async def test_an_endpoint_owned_by_root_is_refused_even_when_root_answers(endpoint):
    """A socket left to root (the account was never given it) logs in as no one."""
    path, children = endpoint
    with pytest.raises(EndpointRefused, match="not its owner"):
        await connected(path, children, "root", 0)


@needs_root
async def test_a_link_to_another_instances_endpoint_is_refused(endpoint, tmp_path):
    path, children = endpoint
    other = tmp_path / "run" / "4567" / "ssh.sock"
    other_listener = sshendpoint.bind(other, NOBODY.pw_name)
    children.append(listen_as(NOBODY.pw_uid, other_listener))
    other_listener.close()
    path.parent.mkdir(parents=True, mode=0o700)
    path.symlink_to(other)  # as if the instance could write root's directory
    with pytest.raises(EndpointRefused, match="is not a socket"):
        await sshendpoint.connect(path, "lab")


@needs_root
async def test_an_endpoint_in_a_directory_others_can_change_is_refused(endpoint):
    path, children = endpoint
    listener = sshendpoint.bind(path, NOBODY.pw_name)
    children.append(listen_as(NOBODY.pw_uid, listener))
    listener.close()
    os.chown(path.parent, NOBODY.pw_uid, NOBODY.pw_gid)  # the instance's to change now
    with pytest.raises(EndpointRefused, match="only root can change"):
        await sshendpoint.connect(path, "lab")


@needs_root
@pytest.mark.parametrize("made", [True, False], ids=["bound, nobody listens", "no socket"])
async def test_nothing_listening_is_unavailable_not_refused(endpoint, made):
    path, children = endpoint
    if made:
        sshendpoint.bind(path, NOBODY.pw_name).close()
    with pytest.raises(EndpointUnavailable) as caught:
        await sshendpoint.connect(path, "lab")
    assert not isinstance(caught.value, EndpointRefused)
