"""What the hub's handlers and pages share with the spawners: settings, store, devices."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

from atelier.hub.settings import Settings
from atelier.hub.store import Store
from atelier.spawner import audit, core
from atelier.spawner.checks import visible_catalog
from atelier.spawner.devices import Allocator, Device, detect_devices
from atelier.spawner.local import local_catalog, shared_allocator, shared_store
from atelier.spawner.volumes import LocalVolume, VolumeUnavailable

log = logging.getLogger(__name__)


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

    def volume(self, owner: str, name: str) -> LocalVolume:
        """An instance's work volume on this machine, under its owner's account."""
        account = self.store.claim_account(owner)
        return LocalVolume(self.settings.resolved_shared_dir, account, name)

    def expand_volume(self, owner: str, name: str, add_gb, actor: str, source_ip: str) -> int:
        """Grow an instance's volume by `add_gb` (online if it runs); audited either way.
        The quota check and the new size are one transaction: the hub's spawners reserve
        volumes in the same store at the same time."""
        event = functools.partial(
            audit.event,
            audit.Action.EXPAND_VOLUME,
            actor=actor,
            source_ip=source_ip,
            resource=f"{owner}/{name}",
            owner=owner,
        )
        volume = self.volume(owner, name)

        def grow(size_gb: int) -> None:
            try:
                volume.expand(size_gb)
            except VolumeUnavailable as error:  # lost
                raise core.OptionsError("add_gb", str(error)) from None
            except (OSError, RuntimeError) as error:  # a host tool or the disk failed
                log.error("expanding %s/%s failed: %s", owner, name, error)
                raise core.OptionsError(
                    "add_gb",
                    f"the volume could not grow to {size_gb} GB and keeps its size: {error}",
                ) from None

        try:
            current, size = self.store.expand_volume(owner, name, add_gb, self.limits, grow)
        except core.OptionsError as error:
            self.store.record(**event(result="failure", reason=str(error)))
            raise
        self.store.record(**event(result="success", reason=f"{current} -> {size} GB"))
        return size

    def catalog_for(self, user) -> core.Catalog:
        """What a hub user may choose from (see `visible_catalog`)."""
        return visible_catalog(self.catalog(), user)


def store_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    return f"sqlite:///{settings.data_dir.absolute() / 'atelier.sqlite'}"


def inventory(settings: Settings) -> list[Device]:
    if settings.devices is None:
        return detect_devices()
    return [device.to_device() for device in settings.devices]
