"""What the hub's handlers and pages share with the spawners: settings, store, backend and
devices (the spawners reach it through the hub's tornado settings)."""

from __future__ import annotations

import functools
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from atelier.hub.settings import Settings
from atelier.hub.store.jobs import ACTIVE
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

    def job_dir(self, id: str) -> Path:
        """A job's logs, metrics and node states (the service's supervisor writes them)."""
        return self.settings.data_dir / "jobs" / id

    def deployment_dir(self, id: str) -> Path:
        """A deployment's replica logs, states and environment files."""
        return self.settings.data_dir / "deployments" / id

    # a deleted user's -------------------------------------------------------------------------
    def end_workloads(self, owner: str, why: str) -> bool:
        """Ask the service's supervisors to stop the owner's jobs and deployments, as a stop
        of each would (their volumes, homes and cgroups released on the way); True once none
        runs. Called again until then. Blocking."""
        store, ended = self.store, True
        for job in store.jobs(owner):
            if job["status"] in ACTIVE:
                ended = False
                current = store.job(owner, job["name"])  # None: deleted meanwhile
                if current is not None and not current["stop_requested"]:
                    store.update_job(job["id"], why, stop_requested=True)
        for deployment in store.deployments(owner):
            if not deployment["stopped"]:
                store.update_deployment(deployment["id"], why, stopped=True)
            ended = ended and not store.replicas(deployment["id"])
        return ended

    def forget_user(self, owner: str) -> tuple[str | None, list[tuple[str, str]]]:
        """A deleted user's records, and their ended jobs' and deployments' logs and states:
        a new user of the name inherits nothing. Returns their account and what went, as
        (kind, name). Blocking."""
        jobs, deployments = self.store.jobs(owner), self.store.deployments(owner)
        account = self.store.forget_user(owner)
        for directory in [self.job_dir(j["id"]) for j in jobs] + [
            self.deployment_dir(d["id"]) for d in deployments
        ]:
            shutil.rmtree(directory, ignore_errors=True)
        return account, [("job", j["name"]) for j in jobs] + [
            ("deployment", d["name"]) for d in deployments
        ]

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
