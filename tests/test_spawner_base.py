"""The shared spawner part: a start a door has checked is not checked again."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from atelier.spawner import checks, core
from atelier.spawner.base import InstanceSpawnerMixin

BASE = "python_3.11-cpu-py_3.11-debian_12-x86_64"
OPTIONS = {"image": BASE, "spec": "cpu.2u8g"}


class Spawner(InstanceSpawnerMixin):
    def __init__(self, options: dict, volume_gb: int | None):
        super().__init__()
        self.user = SimpleNamespace(name="ann", orm_spawners={}, groups=[])
        self.name = "lab"
        self.user_options = options
        store = SimpleNamespace(volume_size=lambda owner, name: volume_gb)
        self.user.settings = {
            "atelier": SimpleNamespace(
                store=store, catalog=lambda: None, allocator=None, limits=None
            )
        }


def plan(status: str = "active") -> core.InstancePlan:
    image = core.Image(BASE, status=status)
    catalog = core.Catalog({BASE: image}, {"cpu.2u8g": core.Spec("cpu.2u8g")})
    options = core.parse_options(OPTIONS, core.Limits())
    return core.plan_instance("ann", "lab", options, catalog, core.Limits(), BASE)


@pytest.fixture
def checked_again(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(checks, "check_instance", lambda *a, **k: calls.append(a) or "checked")
    return calls


@pytest.mark.parametrize(
    ("handed", "options", "volume_gb", "again"),
    [
        (checks.Checked("ann:lab", dict(OPTIONS), plan()), OPTIONS, None, False),
        (None, OPTIONS, None, True),  # no door checked it (nothing to take)
        (checks.Checked("bob:lab", dict(OPTIONS), plan()), OPTIONS, None, True),  # not this one
        (checks.Checked("ann:lab", {**OPTIONS, "tags": {"a": "b"}}, plan()), OPTIONS, None, True),
        # a deprecated image starts only the instances already on it (with a volume)
        (checks.Checked("ann:lab", dict(OPTIONS), plan("deprecated")), OPTIONS, None, True),
        (checks.Checked("ann:lab", dict(OPTIONS), plan("deprecated")), OPTIONS, 5, False),
    ],
)
def test_the_spawner_takes_the_plan_its_door_made_for_exactly_these_options(
    checked_again, handed, options, volume_gb, again
):
    spawner = Spawner(options, volume_gb)
    token = checks.checked.set(handed)
    try:
        result = spawner.check()
    finally:
        checks.checked.reset(token)
    assert bool(checked_again) is again
    assert result == ("checked" if again else handed.plan)
