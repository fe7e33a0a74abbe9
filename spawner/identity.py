"""A hub user's system account name: the uid their instances run as, and the key of their
directories, on any backend that runs them as a uid of the host (the local backend's
processes; containers that keep volume files owned by the user).

The store claims one per user, once, never reusing a name it or the system has had, so
no two hub users ever share a uid.
"""

from __future__ import annotations

import grp
import hashlib
import itertools
import pwd
import re
from collections.abc import Iterator

ACCOUNT_PREFIX = "atelier-"
ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,22}$")


def account_candidates(hub_user: str) -> Iterator[str]:
    """System account names a hub user may get, best first: `atelier-<name>` when the name can
    be one, then a digest of the name, then the digest numbered (the store takes the first
    that neither it nor the system knows, so no two hub users ever share one)."""
    if ACCOUNT_NAME.match(hub_user):
        yield ACCOUNT_PREFIX + hub_user
    hashed = ACCOUNT_PREFIX + "u" + hashlib.sha256(hub_user.encode()).hexdigest()[:12]
    yield hashed
    for number in itertools.count(2):
        yield f"{hashed}-{number}"


def system_account_exists(name: str) -> bool:
    """Whether the system has a user or group of this name (useradd makes both)."""
    for database in (pwd.getpwnam, grp.getgrnam):
        try:
            database(name)
            return True
        except KeyError:
            pass
    return False
