"""The deployment's SSH keys and each instance's endpoint credential: what the SSH gateway
and every backend's SSH endpoint share. The gateway logs in to an endpoint with its client
key and presents the instance's credential, which no other instance's endpoint takes."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

import asyncssh

HOST_KEY = "host_ed25519_key"
CLIENT_KEY = "gateway_ed25519_key"  # the SSH gateway's own key, which instance endpoints accept


def deployment_keys(data_dir: Path) -> tuple[Path, Path]:
    """The host key and the gateway's client key: made once per deployment, then kept."""
    key_dir = Path(data_dir) / "ssh"
    key_dir.mkdir(mode=0o700, exist_ok=True)
    paths = key_dir / HOST_KEY, key_dir / CLIENT_KEY
    for path in paths:
        if not path.exists():
            key = asyncssh.generate_private_key("ssh-ed25519", comment=f"atelier {path.name}")
            path.touch(mode=0o600)
            path.write_bytes(key.export_private_key())
            key.write_public_key(path.with_suffix(".pub"))
    return paths


KEY_FILE = "endpoint_credentials.key"  # beside the gateway's deployment keys


def credentials_key(key_dir: Path) -> bytes:
    """The deployment's key for endpoint credentials: made once (atomically, as the hub and
    the gateway may both ask first), then kept, readable by root alone."""
    path = Path(key_dir) / KEY_FILE
    if not path.exists():
        draft = path.with_name(f".{KEY_FILE}.{secrets.token_hex(8)}")
        draft.touch(mode=0o600)
        draft.write_bytes(secrets.token_bytes(32))
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
        draft.unlink()
    return path.read_bytes()


def credential(key: bytes, owner: str, instance: str) -> str:
    """What proves a connection is meant for this one instance (NUL never occurs in names)."""
    return hmac.new(key, f"{owner}\0{instance}".encode(), hashlib.sha256).hexdigest()


def endpoint_environment(
    data_dir: Path, gateway_key: str, owner: str, instance: str
) -> dict[str, str]:
    """What an instance's SSH endpoint is started with (atelier.extensions.ssh): the one
    key it accepts, and the credential it asks of each connection."""
    key = credentials_key(deployment_keys(Path(data_dir))[0].parent)
    return {
        "ATELIER_SSH_GATEWAY_KEY": gateway_key,
        "ATELIER_SSH_CREDENTIAL": credential(key, owner, instance),
    }
