"""What the hub's handlers and pages share with the spawners: settings, store, devices."""

from __future__ import annotations

import os
from dataclasses import dataclass

from atelier.hub.settings import Settings
from atelier.hub.store import Store
from atelier.spawner import core
from atelier.spawner.devices import Allocator, Device, detect_devices
from atelier.spawner.local import local_catalog, shared_allocator, shared_store


@dataclass
class Context:
    settings: Settings
    store: Store
    allocator: Allocator
    isolated: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> Context:
        return cls(
            settings,
            shared_store(store_url(settings)),
            shared_allocator(tuple(inventory(settings))),
            os.geteuid() == 0,
        )

    @property
    def limits(self) -> core.Limits:
        return self.settings.limits.to_limits()

    def catalog(self) -> core.Catalog:
        return local_catalog(self.store, self.allocator, self.settings.resolved_envs_dir)

    def catalog_for(self, user) -> core.Catalog:
        """What a hub user may choose from: public images and their workspaces' shared ones."""
        catalog = self.catalog()
        if user.admin:
            return catalog
        return catalog.for_member(frozenset(group.name for group in user.groups))


def store_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"sqlite:///{settings.data_dir.absolute() / 'atelier.sqlite'}"


def inventory(settings: Settings) -> list[Device]:
    if settings.devices is None:
        return detect_devices()
    return [device.to_device() for device in settings.devices]
