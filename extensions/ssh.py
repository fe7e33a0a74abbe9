"""The instance's SSH endpoint: OpenSSH's sshd, one `sshd -i` per connection from the gateway.

It listens on the Unix socket the spawner bound for it, in a directory only root (the
gateway) can enter; listening here is what tells the gateway who answers. It serves only
connections that present this instance's credential, accepts only the gateway's key, and
starts every session with the JupyterLab server's environment in the instance's directory.
For SFTP (and so scp) the gateway may instead ask for OpenSSH's sftp-server alone, sparing the
bulk of a transfer a second encryption. It runs in threads of the server, and each process it
starts is told to end when its thread does, so SSH dies with the instance.
"""

from __future__ import annotations

import atexit
import ctypes
import hmac
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PR_SET_PDEATHSIG = 1
ASK_SSHD, ASK_SFTP = b"sshd", b"sftp"
READY = b"ok\n"  # the credential is this instance's: what was asked for follows
# set by sshd itself for each session, or meaningless in one
NOT_PASSED = {"PWD", "OLDPWD", "SHLVL", "_", "TERM", "USER", "LOGNAME", "MAIL"}
SESSION = """\
# every SSH session starts where JupyterLab does: the requested command, or the shell as
# JupyterLab's terminals run it (atelier.extensions), not a login shell: Debian's /etc/profile
# would reset PATH and hide the image's python
cd "$HOME" || exit 1
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec "$SHELL" -c "$SSH_ORIGINAL_COMMAND"; fi
exec "$SHELL"
"""


def set_env_line(environment: dict[str, str]) -> str:
    """sshd_config's SetEnv with every variable the sessions inherit, quoted for sshd."""
    pairs = []
    for name, value in sorted(environment.items()):
        if name in NOT_PASSED or name.startswith(("ATELIER_SSH_", "SSH_")) or "\n" in value:
            continue
        quoted = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"')
        pairs.append(f'"{quoted}"')
    return "SetEnv " + " ".join(pairs)


def sshd_config(runtime: Path, environment: dict[str, str]) -> str:
    return "\n".join(
        [
            f"HostKey {runtime / 'host_key'}",
            f"AuthorizedKeysFile {runtime / 'authorized_keys'}",
            "AuthenticationMethods publickey",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitUserEnvironment no",
            "AllowTcpForwarding local",
            "AllowStreamLocalForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "PidFile none",
            "LogLevel ERROR",
            f"Subsystem sftp {SFTP_SERVER}",
            f"ForceCommand /bin/bash {runtime / 'session'}",
            set_env_line(environment),
            "",
        ]
    )


def request(ask: bytes, credential: str) -> bytes:
    """What the gateway sends first: what it asks for, and the instance's credential."""
    return b"%s %s\n" % (ask, credential.encode())


def die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_one(connection: socket.socket, commands: dict[bytes, list[str]], home: str) -> None:
    """What the gateway asks for first, with this instance's credential: `sshd` (an SSH
    connection) or `sftp` (SFTP alone). Anything else is dropped unanswered."""
    with connection:
        connection.settimeout(10)
        try:
            wanted = connection.recv(len(next(iter(commands))), socket.MSG_WAITALL)
            command = next(c for r, c in commands.items() if hmac.compare_digest(r, wanted))
            connection.sendall(READY)
        except (OSError, StopIteration):
            return
        connection.settimeout(None)
        process = subprocess.Popen(
            command,
            stdin=connection,
            stdout=connection,
            cwd=home,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no locks
        )
    process.wait()


def serve(listener: socket.socket, commands: dict[bytes, list[str]], home: str) -> None:
    while True:
        connection, _ = listener.accept()
        args = (connection, commands, home)
        threading.Thread(target=serve_one, args=args, daemon=True).start()


def bound_socket(fd: str | None, path: str | None) -> socket.socket | None:
    """The endpoint's socket: the one the spawner bound and passed (`fd`, the local backend),
    or one bound here at `path`, in the directory the backend gave this instance alone (a
    container's): the backend then checks who listens on it."""
    if fd:
        return socket.socket(fileno=int(fd))
    if not path:
        return None
    Path(path).unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    Path(path).chmod(0o600)
    return listener


def start(
    listener: socket.socket, gateway_key: str, credential: str, environment: dict[str, str]
) -> bool:
    """Listen on the bound socket for the gateway; False where this machine has no sshd.
    sshd's files live in a private temporary directory (in the server's runtime dir where it
    names one: never in a saved image), removed when the server exits."""
    if not Path(SSHD).exists():
        listener.close()
        return False
    runtime = Path(
        tempfile.mkdtemp(prefix="atelier-ssh-", dir=os.environ.get("JUPYTER_RUNTIME_DIR"))
    )
    atexit.register(shutil.rmtree, runtime, ignore_errors=True)
    host_key = runtime / "host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
        check=True,
        capture_output=True,
    )
    (runtime / "authorized_keys").write_text(gateway_key.strip() + "\n")
    (runtime / "session").write_text(SESSION)
    config = runtime / "sshd_config"
    config.write_text(sshd_config(runtime, environment))
    commands = {
        request(ASK_SSHD, credential): [SSHD, "-i", "-e", "-f", str(config)],
        request(ASK_SFTP, credential): [SFTP_SERVER],
    }
    listener.listen(64)
    home = environment.get("HOME", "/")
    args = (listener, commands, home)
    threading.Thread(target=serve, args=args, daemon=True, name="ssh").start()
    return True
