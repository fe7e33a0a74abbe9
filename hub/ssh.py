"""SSH access to instances, as pure rules: who may log in to which instance from where.

The gateway (atelier.hub.gateway.server) does the I/O; everything it decides is decided here.
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from dataclasses import dataclass, field

from atelier.spawner import core

MAX_CIDRS = 20
IDENTITY = "~/.ssh/atelier"  # where the README and the SSH page say to save the private key
LOGIN = re.compile(r"^(?P<owner>[^+\s]{1,255})\+(?P<instance>[a-z0-9-]{1,64})$")


@dataclass(frozen=True)
class Access:
    """An instance's SSH settings: on or off, the key pairs it accepts, the allowed addresses."""

    enabled: bool = False
    keypairs: tuple[str, ...] = ()
    allowed_cidrs: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "enabled": self.enabled,
            "keypairs": list(self.keypairs),
            "allowed_cidrs": list(self.allowed_cidrs),
        }


def parse_access(value, current: Access, key_ids: set[str]) -> Access:
    """`current` changed by the request body's `ssh` object; OptionsError names the field."""
    if not isinstance(value, dict):
        raise core.OptionsError("ssh", "must be an object with enabled, keypairs, allowed_cidrs")
    unknown = sorted(set(value) - {"enabled", "keypairs", "allowed_cidrs"})
    if unknown:
        raise core.OptionsError(f"ssh.{unknown[0]}", "unknown field")
    enabled = value.get("enabled", current.enabled)
    if not isinstance(enabled, bool):
        raise core.OptionsError("ssh.enabled", "must be true or false")
    keypairs = value.get("keypairs", list(current.keypairs))
    if not isinstance(keypairs, list) or not all(isinstance(k, str) for k in keypairs):
        raise core.OptionsError("ssh.keypairs", "must be a list of key pair ids")
    for key_id in keypairs:
        if key_id not in key_ids:
            raise core.OptionsError("ssh.keypairs", f"no key pair {key_id!r} of yours")
    cidrs = value.get("allowed_cidrs", list(current.allowed_cidrs))
    return Access(enabled, tuple(dict.fromkeys(keypairs)), check_cidrs(cidrs, "ssh.allowed_cidrs"))


def check_cidrs(cidrs, field_name: str) -> tuple[str, ...]:
    """IPv4/IPv6 networks in CIDR form, at most MAX_CIDRS, normalised (10.0.0.7/8 -> 10.0.0.0/8)."""
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise core.OptionsError(field_name, "must be a list of IPv4/IPv6 CIDRs")
    if len(cidrs) > MAX_CIDRS:
        raise core.OptionsError(field_name, f"at most {MAX_CIDRS} entries; got {len(cidrs)}")
    networks = []
    for cidr in cidrs:
        try:
            networks.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError:
            raise core.OptionsError(
                field_name, f"{cidr!r} is not an IPv4/IPv6 CIDR such as 203.0.113.0/24"
            ) from None
    return tuple(dict.fromkeys(networks))


def parse_login(username: str) -> tuple[str, str] | None:
    """`<user>+<instance>` -> (user, instance); None for anything else."""
    match = LOGIN.match(username)
    return (match["owner"], match["instance"]) if match else None


def address_allowed(address: str, cidrs: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(cidr) for cidr in cidrs)


def refusal(
    access: Access | None,
    key_id: str | None,
    address: str,
    default_cidrs: tuple[str, ...],
) -> str | None:
    """Why this login is refused (the audit's reason), or None when it is allowed.

    `access` is None when the login names no instance of that user; `key_id` is None when the
    offered key is not one of that user's key pairs. An empty allow-list falls back to the
    admin's default, and is "nobody" when that is empty too.
    """
    if access is None:
        return "no such instance"
    if not access.enabled:
        return "SSH is disabled for this instance"
    if key_id is None:
        return "the key is not one of the user's key pairs"
    if key_id not in access.keypairs:
        return "the key pair is not allowed for this instance"
    if not address_allowed(address, access.allowed_cidrs or default_cidrs):
        return f"address {address} is not in the instance's allow-list"
    return None


@dataclass
class FailureLimit:
    """At most `limit` failed logins per source address within `window` seconds."""

    limit: int
    window: float
    failures: dict[str, deque] = field(default_factory=dict)

    def _recent(self, address: str, now: float) -> deque:
        times = self.failures.setdefault(address, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.failures[address]
        return times

    def blocked(self, address: str, now: float) -> bool:
        return len(self._recent(address, now)) >= self.limit

    def fail(self, address: str, now: float) -> None:
        self._recent(address, now)
        self.failures.setdefault(address, deque()).append(now)


def ssh_command(owner: str, instance: str, host: str, port: int) -> str:
    """The command the README shows, with the key a generated pair is saved as."""
    return f"ssh -i {IDENTITY} -p {port} {owner}+{instance}@{host}"


def ssh_config(owner: str, instance: str, host: str, port: int) -> str:
    """The ~/.ssh/config block for an instance (VS Code Remote-SSH and PyCharm read it)."""
    return (
        f"Host atelier-{instance}\n"
        f"    HostName {host}\n"
        f"    Port {port}\n"
        f"    User {owner}+{instance}\n"
        f"    IdentityFile {IDENTITY}\n"
        "    IdentitiesOnly yes\n"
    )
