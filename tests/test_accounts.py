"""Hub users -> system accounts: one account per user, never shared, never reused."""

import hashlib
import itertools
import secrets
import subprocess

import pytest

from atelier.hub.store.store import Store
from atelier.spawner import core, identity
from atelier.spawner.local import accounts


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'atelier.sqlite'}")


def hashed(name: str) -> str:
    return "atelier-u" + hashlib.sha256(name.encode()).hexdigest()[:12]


def test_candidates_plain_name_first_then_digest_then_numbered():
    assert list(itertools.islice(identity.account_candidates("alice"), 3)) == [
        "atelier-alice",
        hashed("alice"),
        hashed("alice") + "-2",
    ]
    assert next(identity.account_candidates("Alice@Corp")) == hashed("Alice@Corp")
    longest = max(itertools.islice(identity.account_candidates("x" * 23), 100), key=len)
    assert len(longest) <= 32  # what useradd takes


def test_a_name_that_hashes_and_the_plain_name_of_its_digest_get_two_accounts(store):
    odd = f"alice.{secrets.token_hex(4)}"  # unknown to this system too
    digest_user = hashed(odd).removeprefix("atelier-")  # u<sha256[:12]>: a plain name
    first, second = store.claim_account(odd), store.claim_account(digest_user)
    assert first == hashed(odd) and second != first
    assert store.claim_account(odd) == first  # claimed once, kept
    assert store.account(digest_user) == second


def test_a_system_account_atelier_did_not_record_is_never_reused(store):
    user = f"t{secrets.token_hex(4)}"
    subprocess.run([accounts.USERADD, "--system", "--user-group", f"atelier-{user}"], check=True)
    try:
        assert store.claim_account(user) == hashed(user)
    finally:
        subprocess.run(["/usr/sbin/userdel", f"atelier-{user}"], check=True)


def test_a_deleted_user_leaves_nothing_and_a_new_one_of_that_name_gets_a_fresh_account(store):
    old = store.claim_account("carol")
    store.add_keypair("carol", "laptop", "ssh-ed25519 AAAA", "SHA256:x", "ssh-ed25519")
    store.instance_created("carol", "lab")
    assert store.reserve_volume("carol", "lab", 5, core.Limits())
    assert store.forget_user("carol") == old
    assert store.keypairs("carol") == [] and store.instance_records("carol") == {}
    assert store.volume_total_gb("carol") == 0 and store.account("carol") is None
    assert store.claim_account("carol") not in (old, None)
    assert store.forget_user("never-seen") is None
