"""The Atelier service's memo of repeated reads."""

from atelier.hub.service import Recent


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
