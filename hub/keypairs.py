"""SSH keys: which public keys users may register, their OpenSSH fingerprints, generation.

Pure apart from asyncssh's parsing and key generation; the store keeps public keys only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncssh

from atelier.spawner.core import OptionsError

MIN_RSA_BITS = 3072
KEY_NAME_LENGTH = 64
KEY_NAME = re.compile(rf"^[A-Za-z0-9._-]{{1,{KEY_NAME_LENGTH}}}$")
ACCEPTED = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


@dataclass(frozen=True)
class PublicKey:
    algorithm: str
    bits: int | None
    fingerprint: str  # as `ssh-keygen -l` prints it: SHA256:...
    openssh: str  # "<algorithm> <base64>", without a comment


def inspect_public_key(text: object) -> PublicKey:
    """Parse an OpenSSH public key line, refusing weak or unknown kinds with the reason."""
    if not isinstance(text, str) or not text.strip():
        raise OptionsError(
            "public_key", "must be an OpenSSH public key line, e.g. ssh-ed25519 AAAA..."
        )
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError):
        raise OptionsError("public_key", "is not an OpenSSH public key") from None
    algorithm = key.algorithm.decode()
    bits = getattr(getattr(key, "pyca_key", None), "key_size", None)
    if algorithm not in ACCEPTED:
        raise OptionsError(
            "public_key",
            f"{algorithm} keys are not accepted; use ed25519, ecdsa or RSA >= 3072 bits",
        )
    if algorithm == "ssh-rsa" and (bits or 0) < MIN_RSA_BITS:
        raise OptionsError(
            "public_key", f"RSA keys need at least {MIN_RSA_BITS} bits; this one has {bits}"
        )
    openssh = " ".join(key.export_public_key("openssh").decode().split()[:2])
    return PublicKey(algorithm, bits, key.get_fingerprint("sha256"), openssh)


def generate_key_pair(comment: str) -> tuple[str, str]:
    """A new ed25519 key pair: (private key in OpenSSH format, public key line)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key.export_private_key().decode(), key.export_public_key().decode().strip()
