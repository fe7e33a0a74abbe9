"""The Atelier service's memo of repeated reads, its permission check and number parsing."""

from atelier.hub.service.base import Caller, Recent
from atelier.spawner.core import whole_number


def test_repeated_reads_are_served_from_the_memo_until_cleared():
    reads = []

    def read():
        reads.append(1)
        return len(reads)

    recent = Recent(60)
    assert [recent.get("images", read) for _ in range(3)] == [1, 1, 1]
    assert recent.get("other", read) == 2
    recent.clear()  # a change through the service
    assert recent.get("images", read) == 3


def test_memo_expires():
    recent = Recent(0)
    values = iter(range(10))
    first = recent.get("k", lambda: next(values))
    assert recent.get("k", lambda: next(values)) != first


def caller(admin: bool, *scopes: str) -> Caller:
    return Caller("ann", admin, frozenset(scopes), "127.0.0.1")


def test_scopes_decide_for_admins_too():
    reader = caller(True, "custom:atelier:instances:read")
    assert reader.may("custom:atelier:instances:read")
    for scope in ("custom:atelier:instances:delete", "custom:atelier:images:admin"):
        assert not reader.may(scope)
    full = caller(True, "admin:users", "custom:atelier:instances:delete")
    assert full.may("custom:atelier:images:admin") and full.may("custom:atelier:workspaces:admin")
    assert full.may("custom:atelier:instances:delete")
    assert not full.may("custom:atelier:keypairs:manage")  # not in the token
    # JupyterHub's admin scope without the admin flag, or narrowed by a filter, is not enough
    assert not caller(False, "admin:users").may("custom:atelier:images:admin")
    assert not caller(True, "admin:users!user=ann").may("custom:atelier:images:admin")
    assert caller(False, "custom:atelier:images:admin").may("custom:atelier:images:admin")


def test_only_an_admins_token_with_the_hub_admin_scope_acts_for_everyone():
    assert caller(True, "admin:users").acts_for_everyone
    # the admin flag comes with every token of an admin: a narrow one, or a server token's
    narrow = caller(True, "custom:atelier:instances:read", "custom:atelier:instances:delete")
    assert not narrow.acts_for_everyone
    assert not caller(True, "admin:users!user=bob").acts_for_everyone
    assert not caller(False, "admin:users").acts_for_everyone


def test_filtered_scopes_count_for_nothing():
    """Counting `scope!user=x` whole would widen it past its filter."""
    for scope in (
        "custom:atelier:instances:delete!user=bob",
        "custom:atelier:instances:delete!user=ann",
    ):
        assert not caller(True, "admin:users", scope).may("custom:atelier:instances:delete")
        assert not caller(False, scope).may("custom:atelier:instances:delete")


def test_whole_numbers_are_plain_ascii_digits_in_range():
    assert whole_number("0", 10) == 0 and whole_number("10", 10) == 10
    for text in ("²", "٣", "", "-1", "+1", " 1", "1e3", "1.0", "11", "9" * 5000):
        assert whole_number(text, 10) is None, text
