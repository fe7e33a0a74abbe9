"""The SSH gateway: one port for every instance, `ssh -p 2222 <user>+<instance>@<host>`.

A hub-managed service built on asyncssh. It authenticates the user's public key against the
store, checks the instance's SSH settings and the client's address (atelier.hub.ssh decides),
then relays each channel (shell, exec, SFTP/scp, -L/-D forwarding) to the instance's own SSH
endpoint: an OpenSSH `sshd -i` that the instance runs behind a Unix socket
(atelier.extensions.ssh), so the user lands in the instance's environment, as its account.
SFTP sessions (and so scp) go to the instance's sftp-server over that socket directly.
The backend finds the instance's own endpoint and verifies it (`Backend.connect_ssh`: on the
local backend, the socket root made for it, answered by the account root gave it); the
gateway then presents that instance's credential, which no other endpoint takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time

import asyncssh

from atelier.extensions.ssh import ASK_SFTP, ASK_SSHD, READY, request
from atelier.hub import ssh
from atelier.hub.context import store_url
from atelier.hub.settings import Settings, settings_from_environment
from atelier.hub.store.store import Store
from atelier.spawner.backend import Backend, EndpointRefused, EndpointUnavailable, load_backend
from atelier.spawner.core import audit
from atelier.spawner.credentials import credential, credentials_key, deployment_keys

log = logging.getLogger("atelier.sshgateway")
# AES-GCM only: one hardware-accelerated OpenSSL call per packet. OpenSSH clients prefer
# chacha20-poly1305, which asyncssh does in two steps: offering it halves scp throughput.
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
TOO_MANY = "too many failed logins from this address; try again later"


class Gateway:
    """What every connection shares: settings, store, keys and the failed-login limit."""

    def __init__(self, settings: Settings, store: Store, backend: Backend):
        self.settings = settings
        self.store = store
        self.backend = backend
        self.data_dir = settings.data_dir.absolute()
        self.host_key, self.client_key = deployment_keys(self.data_dir)
        self.credentials_key = credentials_key(self.host_key.parent)
        self.failures = ssh.FailureLimit(
            settings.ssh.max_failed_logins, settings.ssh.failed_login_window_seconds
        )

    def audit(self, username: str, address: str, actor: str, result: str, reason: str):
        """One sshLogin event per connection: its success, or its last refusal."""
        owner, instance = ssh.parse_login(username) or ("", username)
        event = audit.event(
            audit.Action.SSH_LOGIN,
            actor=actor or "unknown",
            source_ip=address,
            resource=f"{owner}/{instance}" if owner else instance,
            owner=owner,
            result=result,
            reason=reason,
        )
        self.store.record(**event)

    async def listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            lambda: Connection(self),
            self.settings.ssh.ip,
            self.settings.ssh.port,
            server_host_keys=[str(self.host_key)],
            encryption_algs=CIPHERS,
            encoding=None,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            line_editor=False,
            login_timeout=30,
        )


class Connection(asyncssh.SSHServer):
    """One client connection: authentication, then a relay to one instance."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.address = ""
        self.login: tuple[str, str] | None = None
        self.username = ""
        self.refused: tuple[str, str] | None = None  # (actor, reason) of the last refusal
        self.hopeless = False
        self.fingerprint = ""
        self.authenticated = False
        self._upstream: asyncio.Future | None = None

    # authentication -----------------------------------------------------------------------
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.address = conn.get_extra_info("peername")[0]

    def begin_auth(self, username: str) -> bool:
        self.username = username
        self.login = ssh.parse_login(username)
        if self.gateway.failures.blocked(self.address, time.monotonic()):
            self.refused = ("", TOO_MANY)
        elif self.login is None:
            self.refused = ("", f"{username!r} is not <user>+<instance>")
        self.hopeless = self.refused is not None
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self.hopeless:
            return False
        fingerprint = key.get_fingerprint("sha256")
        owner, instance = self.login
        store = self.gateway.store
        reason = ssh.refusal(
            store.ssh_access(owner, instance),
            store.keypair_id(owner, fingerprint),
            self.address,
            tuple(self.gateway.settings.ssh.default_allowed_cidrs),
        )
        if reason is not None:
            self.refused = (store.keypair_owner(fingerprint) or "", f"{reason}; key {fingerprint}")
            return False
        self.fingerprint = fingerprint
        return True

    def auth_completed(self) -> None:
        self.authenticated = True
        self.gateway.audit(self.username, self.address, self.login[0], "success", self.fingerprint)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._upstream is not None and self._upstream.done() and not self._upstream.exception():
            self._upstream.result().close()
        if not self.authenticated and self.refused is not None:
            self.gateway.failures.fail(self.address, time.monotonic())
            actor, reason = self.refused
            self.gateway.audit(self.username, self.address, actor, "failure", reason)

    # channels -------------------------------------------------------------------------------
    def session_requested(self):
        return Downstream(self)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        return self._forward(dest_host, dest_port)

    async def _forward(self, host: str, port: int):
        try:
            upstream = await self.upstream()
        except EndpointUnavailable as error:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(error)) from None
        return await self.conn.forward_tunneled_connection(upstream, host, port)

    def upstream(self) -> asyncio.Future:
        """The SSH connection to the instance's endpoint, opened on first use."""
        if self._upstream is None:
            self._upstream = asyncio.ensure_future(self._connect())
        return self._upstream

    async def endpoint(self, ask: bytes) -> tuple[socket.socket, str]:
        """A connection to the instance's own endpoint (the backend finds and verifies it)
        that has taken the instance's credential and a request for `sshd` or `sftp`; and
        the account that serves it."""
        owner, instance = self.login
        try:
            sock, account = await self.gateway.backend.connect_ssh(owner, instance)
        except EndpointRefused as error:
            raise self.refused_endpoint(owner, instance, str(error)) from None
        except (EndpointUnavailable, OSError):
            raise EndpointUnavailable(
                f"instance {instance} is stopped; start it from the hub"
            ) from None
        loop = asyncio.get_running_loop()
        proof = credential(self.gateway.credentials_key, owner, instance)
        try:
            await loop.sock_sendall(sock, request(ask, proof))
            answer = await asyncio.wait_for(self._answer(sock), 10)
        except (OSError, TimeoutError):
            answer = b""
        if answer != READY:
            sock.close()
            why = "refused the credential" if answer else "did not answer"
            raise self.refused_endpoint(owner, instance, f"its endpoint {why}")
        return sock, account

    def refused_endpoint(self, owner: str, instance: str, why: str) -> EndpointRefused:
        """An endpoint that is not the instance's own: never used, and audited."""
        reason = f"{why}; not the instance's own"
        log.warning("refused: %s", reason)
        self.gateway.audit(self.username, self.address, owner, "failure", reason)
        return EndpointRefused(f"instance {instance}'s SSH endpoint is not its own; refused")

    @staticmethod
    async def _answer(sock: socket.socket) -> bytes:
        """The endpoint's answer to the request, `READY` where it took it."""
        loop, answer = asyncio.get_running_loop(), b""
        while len(answer) < len(READY):
            chunk = await loop.sock_recv(sock, len(READY) - len(answer))
            if not chunk:
                break
            answer += chunk
        return answer

    async def _connect(self) -> asyncssh.SSHClientConnection:
        sock, account = await self.endpoint(ASK_SSHD)
        return await asyncssh.connect(
            sock=sock,
            username=account,  # the endpoint's sshd can log in no other
            client_keys=[str(self.gateway.client_key)],
            known_hosts=None,  # the endpoint is the instance's own: checked above
            encryption_algs=CIPHERS,
            encoding=None,
        )


class Downstream(asyncssh.SSHServerSession):
    """The user's side of a session, relayed to a session on the instance's endpoint; an
    SFTP session goes to the instance's sftp-server directly."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.request: dict = {}
        self.up: asyncssh.SSHClientChannel | asyncio.Transport | None = None
        self.early: list[bytes | None] = []  # what came before the instance's side was open

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan

    def pty_requested(self, term_type, term_size, term_modes) -> bool:
        self.request.update(term_type=term_type, term_size=term_size, term_modes=term_modes)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.request["command"] = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self.request["subsystem"] = subsystem
        return True

    def session_started(self) -> None:
        self.chan.pause_reading()  # until the instance's side is open
        asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        try:
            if self.request.get("subsystem") == "sftp":
                sock, _ = await self.connection.endpoint(ASK_SFTP)
                loop = asyncio.get_running_loop()
                self.up, _ = await loop.create_unix_connection(
                    lambda: SFTPServer(self.chan), sock=sock
                )
            else:
                upstream = await self.connection.upstream()
                self.up, _ = await upstream.create_session(
                    lambda: Upstream(self.chan),
                    env=self.chan.get_environment(),
                    encoding=None,
                    **self.request,
                )
        except (EndpointUnavailable, asyncssh.Error, OSError) as error:
            with contextlib.suppress(BrokenPipeError):
                self.chan.write_stderr(f"{error}\r\n".encode())
                self.chan.exit(1 if isinstance(error, EndpointUnavailable) else 255)
            return
        for data in self.early:
            self.up.write_eof() if data is None else self.up.write(data)
        self.chan.resume_reading()

    def data_received(self, data: bytes, datatype) -> None:
        if self.up is None:
            self.early.append(data)
        else:
            self.up.write(data)

    def eof_received(self) -> bool:
        if self.up is None:
            self.early.append(None)
        else:
            self.up.write_eof()
        return True

    def terminal_size_changed(self, width, height, pixwidth, pixheight) -> None:
        if isinstance(self.up, asyncssh.SSHClientChannel):
            self.up.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if isinstance(self.up, asyncssh.SSHClientChannel):
            self.up.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if isinstance(self.up, asyncssh.SSHClientChannel):
            self.up.send_break(msec)
        return True

    def pause_writing(self) -> None:
        self.up.pause_reading()

    def resume_writing(self) -> None:
        self.up.resume_reading()

    def connection_lost(self, exc) -> None:
        if self.up is not None:
            self.up.close()


class Upstream(asyncssh.SSHClientSession):
    """The instance's side of a session: output, exit status and flow control go back. The
    exit status goes back once this side has closed: sshd may send output after it, and
    asyncssh's exit() closes the user's channel, which would drop that output."""

    def __init__(self, down: asyncssh.SSHServerChannel):
        self.down = down
        self.ending = down.close

    def data_received(self, data: bytes, datatype) -> None:
        self.down.write(data, datatype)

    def eof_received(self) -> bool:
        self.down.write_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.ending = lambda: self.down.exit(status)

    def exit_signal_received(self, signal, core_dumped, msg, lang) -> None:
        self.ending = lambda: self.down.exit_with_signal(signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        self.down.pause_reading()

    def resume_writing(self) -> None:
        self.down.resume_reading()

    def connection_lost(self, exc) -> None:
        self.ending()


class SFTPServer(asyncio.Protocol):
    """The instance's sftp-server, spoken to over its socket: SFTP needs no second SSH hop."""

    def __init__(self, down: asyncssh.SSHServerChannel):
        self.down = down

    def data_received(self, data: bytes) -> None:
        self.down.write(data)

    def eof_received(self) -> bool:
        self.down.write_eof()
        return False  # sftp-server has ended: close, and report it

    def pause_writing(self) -> None:
        self.down.pause_reading()

    def resume_writing(self) -> None:
        self.down.resume_reading()

    def connection_lost(self, exc) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.down.exit(0 if exc is None else 1)


async def serve(settings: Settings) -> None:
    store = Store(store_url(settings))
    gateway = Gateway(settings, store, load_backend(settings, store))
    server = await gateway.listen()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.close)  # hub stops
    log.info("SSH gateway listening on %s:%s", settings.ssh.ip, settings.ssh.port)
    await server.wait_closed()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(name)s] %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C on `atelier run`: stop quietly
        asyncio.run(serve(settings_from_environment()))
