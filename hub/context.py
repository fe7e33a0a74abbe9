"""What the hub's handlers and pages share with the spawners: settings, store, backend and
devices (the spawners reach it through the hub's tornado settings)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from atelier.hub.settings import Settings
from atelier.hub.store.store import Store
from atelier.spawner import core
from atelier.spawner.backend import Backend, Capabilities, load_backend
from atelier.spawner.checks import visible_catalog
from atelier.spawner.core import audit
from atelier.spawner.devices import Allocator

log = logging.getLogger(__name__)


@dataclass
class Context:
    settings: Settings
    store: Store
    backend: Backend
    allocator: Allocator  # held devices, shared by the hub and the service through the store

    @classmethod
    def from_settings(cls, settings: Settings) -> Context:
        store = Store(store_url(settings))
        backend = load_backend(settings, store)
        return cls(settings, store, backend, Allocator(backend.inventory(), store))

    @property
    def limits(self) -> core.Limits:
        return self.settings.limits.to_limits()

    def capabilities(self) -> Capabilities:
        return self.backend.capabilities(self.allocator.inventory)

    def catalog(self) -> core.Catalog:
        return self.backend.catalog(self.allocator.inventory)

    def catalog_for(self, user) -> core.Catalog:
        """What a hub user may choose from (see `visible_catalog`)."""
        return visible_catalog(self.catalog(), user)

    def expand_volume(self, owner: str, name: str, add_gb, actor: str, source_ip: str) -> int:
        """Grow an instance's volume by `add_gb` (online if it runs); audited either way.
        The quota check and the new size are one transaction: the hub's spawners reserve
        volumes in the same store at the same time. Blocking: callers run it off the loop."""
        event = functools.partial(
            audit.event,
            audit.Action.EXPAND_VOLUME,
            actor=actor,
            source_ip=source_ip,
            resource=f"{owner}/{name}",
            owner=owner,
        )

        def grow(size_gb: int) -> None:
            try:
                self.backend.expand_volume(owner, name, size_gb)
            except (OSError, RuntimeError) as error:  # a host tool or the disk failed
                log.error("expanding %s/%s failed: %s", owner, name, error)
                raise core.OptionsError(
                    "add_gb",
                    f"the volume could not grow to {size_gb} GB and keeps its size; "
                    "ask the hub's operator (its log says why)",
                    "unavailable",
                ) from None

        try:
            current, size = self.store.expand_volume(owner, name, add_gb, self.limits, grow)
        except core.OptionsError as error:
            self.store.record(**event(result="failure", reason=str(error)))
            raise
        self.store.record(**event(result="success", reason=f"{current} -> {size} GB"))
        return size


def store_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"sqlite:///{settings.data_dir.absolute() / 'atelier.sqlite'}"
