"""The instance's SSH endpoint: OpenSSH's sshd, one `sshd -i` per connection from the gateway.

It listens on a Unix socket in a directory private to the instance's account (only that
account and root, the gateway, can connect), accepts only the gateway's key, and starts every
session with the JupyterLab server's environment in the instance's directory. For SFTP (and
so scp) the gateway may instead ask for OpenSSH's sftp-server alone, sparing the bulk of a
transfer a second encryption. It runs in threads of the server, and each process it starts is
told to end when its thread does, so SSH dies with the instance.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import threading
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PR_SET_PDEATHSIG = 1
ASK_SSHD, ASK_SFTP = b"sshd\n", b"sftp\n"  # what the gateway asks for, first thing
# set by sshd itself for each session, or meaningless in one
NOT_PASSED = {"PWD", "OLDPWD", "SHLVL", "_", "TERM", "USER", "LOGNAME", "MAIL"}
SESSION = """\
# every SSH session starts where JupyterLab does, as a login shell or the requested command
cd "$HOME" || exit 1
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec "$SHELL" -c "$SSH_ORIGINAL_COMMAND"; fi
exec -l "$SHELL"
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


def die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_one(connection: socket.socket, config: Path, home: str) -> None:
    """What the gateway asks for first: `sshd` (an SSH connection) or `sftp` (SFTP alone)."""
    with connection:
        connection.settimeout(10)
        try:
            wanted = connection.recv(len(ASK_SSHD), socket.MSG_WAITALL)
        except OSError:
            return
        connection.settimeout(None)
        commands = {ASK_SSHD: [SSHD, "-i", "-e", "-f", str(config)], ASK_SFTP: [SFTP_SERVER]}
        if wanted not in commands:
            return
        process = subprocess.Popen(
            commands[wanted],
            stdin=connection,
            stdout=connection,
            cwd=home,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no locks
        )
    process.wait()


def serve(listener: socket.socket, config: Path, home: str) -> None:
    while True:
        connection, _ = listener.accept()
        args = (connection, config, home)
        threading.Thread(target=serve_one, args=args, daemon=True).start()


def start(socket_path: Path, gateway_key: str, environment: dict[str, str]) -> bool:
    """Listen for the gateway; False where this machine has no sshd."""
    if not Path(SSHD).exists():
        return False
    runtime = socket_path.parent
    host_key = runtime / "host_key"
    for stale in (host_key, host_key.with_suffix(".pub"), socket_path):
        stale.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
        check=True,
        capture_output=True,
    )
    (runtime / "authorized_keys").write_text(gateway_key.strip() + "\n")
    (runtime / "session").write_text(SESSION)
    config = runtime / "sshd_config"
    config.write_text(sshd_config(runtime, environment))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(socket_path))
    listener.listen(64)
    home = environment.get("HOME", "/")
    threading.Thread(target=serve, args=(listener, config, home), daemon=True, name="ssh").start()
    return True
