"""SSH public keys: accepted kinds, OpenSSH's own fingerprints, generated pairs, one name
once per user."""

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic import command
from sqlalchemy import create_engine, text

from atelier.hub.keypairs import generate_key_pair, inspect_public_key
from atelier.hub.store import records
from atelier.hub.store.store import CatalogError, Store
from atelier.spawner.core import OptionsError


def ssh_keygen(tmp_path, kind: str, bits: int | None = None) -> tuple[str, str]:
    """A real key from OpenSSH's ssh-keygen: (public key line, fingerprint as it prints it)."""
    path = tmp_path / f"id_{kind}_{bits}"
    command = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "tester@laptop", "-f", str(path)]
    subprocess.run(command + (["-b", str(bits)] if bits else []), check=True)
    listing = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{path}.pub"], capture_output=True, text=True
    )
    return (tmp_path / f"{path.name}.pub").read_text(), listing.stdout.split()[1]


@pytest.mark.parametrize(
    "kind, bits, algorithm",
    [
        ("ed25519", None, "ssh-ed25519"),
        ("ecdsa", 256, "ecdsa-sha2-nistp256"),
        ("ecdsa", 521, "ecdsa-sha2-nistp521"),
        ("rsa", 3072, "ssh-rsa"),
    ],
)
def test_accepted_keys_and_their_openssh_fingerprints(tmp_path, kind, bits, algorithm):
    line, fingerprint = ssh_keygen(tmp_path, kind, bits)
    key = inspect_public_key(line)
    assert (key.algorithm, key.fingerprint) == (algorithm, fingerprint)
    assert key.openssh == " ".join(line.split()[:2])  # the comment is not kept


def test_weak_and_malformed_keys_are_refused_with_the_reason(tmp_path):
    line, _ = ssh_keygen(tmp_path, "rsa", 2048)
    with pytest.raises(OptionsError, match="RSA keys need at least 3072 bits; this one has 2048"):
        inspect_public_key(line)
    for bad, message in (
        ("", "must be an OpenSSH public key line"),
        ("ssh-ed25519 not-base64", "is not an OpenSSH public key"),
        (42, "must be an OpenSSH public key line"),
    ):
        with pytest.raises(OptionsError, match=message) as error:
            inspect_public_key(bad)
        assert error.value.field == "public_key"


def test_generated_pair_is_a_real_openssh_key(tmp_path):
    private, public = generate_key_pair("alice@atelier laptop")
    path = tmp_path / "id_generated"
    path.write_text(private)
    path.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True)
    assert derived.stdout.split()[:2] == public.split()[:2]
    assert inspect_public_key(public).algorithm == "ssh-ed25519"


def add(store: Store, owner: str, name: str) -> dict:
    key = inspect_public_key(generate_key_pair(f"{owner}@atelier {name}")[1])
    return store.add_keypair(owner, name, key.openssh, key.fingerprint, key.algorithm)


def test_a_name_is_taken_once_per_user_even_by_requests_at_once(tmp_path):
    stores = [Store(f"sqlite:///{tmp_path / 'atelier.sqlite'}") for _ in range(8)]
    add(stores[0], "bob", "laptop")  # another user's name is no matter

    def attempt(store: Store) -> str:
        try:
            return add(store, "alice", "laptop")["name"]
        except CatalogError as error:
            return str(error)

    with ThreadPoolExecutor(len(stores)) as pool:
        results = sorted(pool.map(attempt, stores))
    assert results == ["laptop"] + ["name: a key pair named laptop already exists"] * 7
    assert [k["name"] for k in stores[0].keypairs("alice")] == ["laptop"]


def test_duplicate_names_from_before_are_renamed_by_the_migration(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'atelier.sqlite'}")
    with engine.begin() as connection:
        command.upgrade(records.alembic_config(connection), "0009")
        for key_id, created in (("a1", "2024-01-01"), ("a2", "2024-02-01")):
            connection.execute(
                text(
                    "INSERT INTO keypairs VALUES (:id, 'alice', 'laptop', 'ssh-ed25519 AAAA', "
                    "'SHA256:x', 'ssh-ed25519', :created)"
                ),
                {"id": key_id, "created": created},
            )
    store = Store(str(engine.url))
    assert [k["name"] for k in store.keypairs("alice")] == ["laptop", "laptop-a2"]
