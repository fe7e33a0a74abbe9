"""The shared spawner part: a start a door has checked is not checked again; a start cut
off gives back what it held and leaves nothing unknown."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from atelier.hub.store.store import Store
from atelier.spawner import base, checks, core
from atelier.spawner.base import InstanceSpawnerMixin
from atelier.spawner.devices import Allocator

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


class Base:
    """What JupyterHub's spawner gives the mixin, and nothing else."""

    async def poll(self):
        return 0

    def get_state(self):
        return {}


class CutOff(InstanceSpawnerMixin, Base):
    """A spawner whose volume takes longer to make than the hub waits for the start."""

    log = logging.getLogger(__name__)
    _log_name = name = "lab"

    def __init__(self, context, made: Path):
        super().__init__()
        self.user = SimpleNamespace(name="ann", settings={"atelier": context})
        self.made = made

    def check(self):
        return SimpleNamespace(
            volume_gb=1, spec=core.Spec("cpu.2u8g"), accelerator_type=None, accelerator_count=0
        )

    async def start_plan(self, plan):
        def create(size_gb: int) -> None:
            time.sleep(0.5)  # mkfs on a loaded disk
            self.made.write_text("xfs")

        await self.make_volume(create)

    async def release_plan(self):
        pass


async def test_a_start_cut_off_while_its_volume_is_made_leaves_no_volume_unknown(tmp_path):
    """JupyterHub cancels a start past its start_timeout (asyncio.wait_for): the volume being
    made then is made to the end and recorded (its createVolume too), never left as a file the
    store does not know (which no later start could use)."""
    store = Store(f"sqlite:///{tmp_path / 'atelier.sqlite'}")
    context = SimpleNamespace(store=store, allocator=Allocator([]), limits=core.Limits())
    spawner = CutOff(context, tmp_path / "lab.xfs")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(spawner.start(), 0.1)
    assert spawner.made.exists() and store.volume_size("ann", "lab") == 1
    assert store.volume_total_gb("ann") == 1  # its quota stays held by the volume it has
    _, events = store.audit(action="createVolume")
    assert [e["resource"] for e in events] == ["ann/lab"]


async def test_a_start_returns_once_the_server_accepts_connections(monkeypatch):
    """The server listens a moment after its process starts: the start waits for it (so
    JupyterHub's first check finds it up), and gives up waiting after ANSWER_WAIT_S."""
    with socket.socket() as probe:  # a port nothing listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connected = []

    async def listen_later():
        await asyncio.sleep(0.3)
        server = await asyncio.start_server(lambda r, w: connected.append(w), "127.0.0.1", port)
        return server

    later = asyncio.ensure_future(listen_later())
    await base.answering("127.0.0.1", port)
    server = await later
    await asyncio.sleep(0.05)
    assert connected, "answering returned before the server listened"
    server.close()

    monkeypatch.setattr(base, "ANSWER_WAIT_S", 0.2)
    started = time.monotonic()
    await base.answering("127.0.0.1", port)  # nothing listens any more: it gives up
    assert time.monotonic() - started < 5
