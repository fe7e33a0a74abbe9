"""The seam between Atelier's backend-neutral core and the machines that run instances.

The core decides *what* runs (`atelier.spawner.core`: catalog, options, the instance plan);
a backend decides *how*: which spawner the hub uses, what the machine can run, where volumes,
SSH endpoints and image realisations live. The hub, the Atelier service, the SSH gateway, the
CLI and the pages ask the configured `Backend` and never name one backend's classes, as
JupyterHub asks `self.spawner`. Each process makes its own (`load_backend`).

A backend is registered the way JupyterHub registers spawners, as an entry point in the
`atelier.backends` group (`local = "atelier.spawner.local.backend:LocalBackend"`), and chosen with
`backend:` in atelier.yaml; its options come from the `backend_options:` block, validated by
its `Options` model. Its spawner subclasses `InstanceSpawnerMixin` (atelier.spawner.base),
which holds what every backend's spawner shares.

"Save as image" is the snapshot seat (`measure_snapshot`, `save_image`, `delete_saved_image`,
`sweep_saved_images`); a backend without it refuses saves. Training jobs are the job seat
(`start_job`, `stop_job`, `job_nodes`, `job_usage`): the service decides when an attempt
starts, fails or restarts; the backend starts each node's `torchrun` where it runs (through
atelier.spawner.jobnode, which keeps the logs). Deployments are the replica seat
(`start_replica`, `replica_state`, `stop_replica`): the service rolls versions out
(core.rollout), the router sends requests to the endpoints the backend returns.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from atelier.spawner import core, jobnode
from atelier.spawner.devices import Device, detect_devices

if TYPE_CHECKING:
    from atelier.hub.settings import Settings
    from atelier.hub.store.store import Store

GROUP = "atelier.backends"
Progress = Callable[[str, int, int], None]  # (phase, done bytes, total bytes)


class EndpointUnavailable(Exception):
    """Nothing answers at the instance's SSH endpoint: it is not running."""


class EndpointRefused(EndpointUnavailable):
    """What answers is not the instance's own endpoint: never used, and audited."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run on this machine, as the catalog, the form and the pages need it."""

    accelerators: dict[str, int]  # accelerator type -> how many the machine has
    arch: str | None  # the one architecture it runs; None: any
    users_isolated: bool  # each user's instances run apart from other users' (own account)
    volumes_enforced: bool  # a volume's size is a hard limit (ENOSPC), not only measured
    limits_unenforced: tuple[str, ...] = ()  # spec limits this machine cannot enforce


@dataclass(frozen=True)
class JobRun:
    """One attempt of a job, as the service hands it to a backend: every node starts at
    once; node k gets the k-th share of `devices`."""

    id: str  # the job's id: its directory's name and its rendezvous id
    plan: core.JobPlan
    attempt: int  # 1 for the first start
    directory: Path  # root's own: the nodes' launches and states, the logs and metrics
    devices: tuple[Device, ...] = ()

    def node_devices(self, node: int) -> list[Device]:
        share = self.plan.spec.accelerator_count
        return list(self.devices[node * share : (node + 1) * share])


@dataclass(frozen=True)
class ReplicaRun:
    """One replica of a deployment's version, as the service hands it to a backend."""

    id: str  # the deployment's id
    plan: core.DeploymentPlan  # the replica's version
    version: int
    number: int  # unique in the deployment: its monitor's node number, its log's name
    directory: Path  # root's own: the replicas' launches, states and logs

    @property
    def grace_s(self) -> float:
        """How long a stopping replica's server may finish what it holds before SIGKILL."""
        return self.plan.timeout_seconds + jobnode.GRACE_S


class NoOptions(BaseModel):
    """A backend without options of its own refuses any in `backend_options`."""

    model_config = ConfigDict(extra="forbid")


class Backend(ABC):
    """How instances run on one kind of machine. Methods that block (host tools, engine
    calls) are plain functions: callers on an event loop run them with `asyncio.to_thread`."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, settings: Settings, store: Store | None):
        """`store` is None in a backend made only to configure the hub."""
        self.settings = settings
        self.store = store
        self.options = self.Options.model_validate(settings.backend_options)

    # the hub ----------------------------------------------------------------------------
    @abstractmethod
    def configure_hub(self, c, data_dir: Path) -> None:
        """Set JupyterHub's spawner class and that spawner's traits on config `c`."""

    @abstractmethod
    def prepare(self) -> None:
        """Make what the backend needs before the hub starts (directories, engine checks);
        raises ValueError naming the setting that is wrong."""

    def environment(self) -> dict[str, str]:
        """What the hub's services (the SSH gateway, the Atelier API) need in their
        environment to reach what the hub's backend reaches (an engine's address)."""
        return {}

    def services(self, data_dir: Path) -> list[dict]:
        """More processes the backend needs beside the hub (an image registry, say), as
        JupyterHub services {"name", "command": a module and its arguments, "environment"?};
        the hub runs each so that it ends with the hub."""
        return []

    def strays(self, known: set[tuple[str, str]]) -> list[str]:
        """What runs on this machine for an instance the hub does not know (owner, name):
        deleted while the hub was down. `atelier run` reports them. Blocking."""
        return []

    # what it can run ----------------------------------------------------------------------
    def inventory(self) -> list[Device]:
        """The accelerators instances may be given: atelier.yaml's `devices`, else found."""
        if self.settings.devices is None:
            return detect_devices()
        return [device.to_device() for device in self.settings.devices]

    @abstractmethod
    def capabilities(self, inventory: list[Device]) -> Capabilities:
        """What this machine can run (cheap: read on every page and API answer)."""

    @abstractmethod
    def realised_images(self) -> frozenset[str] | None:
        """The images ready to start now (built ones appear at any time); None: all."""

    def catalog(self, inventory: list[Device]) -> core.Catalog:
        """The store's catalog as this backend can run it."""
        can = self.capabilities(inventory)
        return self.store.catalog(can.accelerators, can.arch, self.realised_images())

    # images -----------------------------------------------------------------------------
    @abstractmethod
    def has_definition(self, image: str) -> bool:
        """Whether the image can be realised here at all (a folder under images/, say)."""

    @abstractmethod
    def definition_hint(self, image: str) -> str:
        """What to create so that `image` has a definition (for the error that says so)."""

    @abstractmethod
    def build_image(self, image: str, log: Callable[[str], None]) -> str | None:
        """Realise `image` (an environment, an OCI image), reporting each step to `log`, and
        return its content digest where it has one (the catalog records it; instances start
        from exactly that); raises RuntimeError and keeps nothing when it fails. Blocking."""

    # snapshots (save as image) ------------------------------------------------------------
    def measure_snapshot(self, plan: core.SnapshotPlan) -> tuple[int, int]:
        """The bytes and layers the saved image would have, measured without copying
        anything: the limits are checked on them before any work. Blocking."""
        raise core.OptionsError(
            "instance", f"the {self.name} backend cannot save instances as images", "unavailable"
        )

    def save_image(self, plan: core.SnapshotPlan, progress: Progress) -> str:
        """Save the running instance as `plan.image`, reporting `progress(phase, done_bytes,
        total_bytes)`; return its content digest ("sha256:..."), which the catalog records
        and every start from it checks. Raises RuntimeError or OSError, keeping nothing,
        when it fails. Blocking."""
        raise NotImplementedError

    def delete_saved_image(self, image: core.Image) -> None:
        """Remove a snapshot's content (instances running from it keep running). Blocking."""
        return

    def sweep_saved_images(self, known: set[str]) -> None:
        """Remove snapshot content whose digest the catalog does not know (`known`): what a
        save cut off by a crash left. Called as the service starts, before any save. Blocking."""
        return

    # training jobs ------------------------------------------------------------------------
    def start_job(self, run: JobRun) -> None:
        """Start every node of the attempt (each node's monitor through `jobnode.start`),
        detached: they outlive the service. Raises `core.OptionsError` for what the user can
        act on (a missing volume), RuntimeError or OSError when the machine failed. Blocking."""
        raise core.OptionsError(
            "image", f"the {self.name} backend cannot run training jobs", "unavailable"
        )

    def job_nodes(self, run: JobRun) -> list[jobnode.NodeState]:
        """How each node of the attempt stands, from what its monitor recorded."""
        return [
            jobnode.read_state(run.directory, run.attempt, node) for node in range(run.plan.nodes)
        ]

    def stop_job(self, run: JobRun) -> None:
        """Stop what still runs of the attempt, wait until it has ended, and give back what
        the backend made for it; also what an ended attempt leaves. Blocking."""
        for node in range(run.plan.nodes):
            jobnode.stop(run.directory, run.attempt, node)
        jobnode.wait_ended(run.directory, run.attempt, range(run.plan.nodes))

    def job_usage(self, run: JobRun) -> dict[str, float]:
        """What the running attempt uses now (cpu_seconds, memory_bytes), where known."""
        return {}

    # deployments --------------------------------------------------------------------------
    serves_models: ClassVar[bool] = False  # it has the replica seat: deployments are refused else

    def start_replica(self, run: ReplicaRun) -> str:
        """Start the replica's model server (atelier.serving, its monitor through
        `jobnode.start`), detached, listening where only root reaches it; return that
        endpoint ("unix:<path>" or "http://<address>:<port>"), for the router and the
        service's readiness checks. Raises as `start_job`. Blocking."""
        raise core.OptionsError(
            "image", f"the {self.name} backend cannot serve models", "unavailable"
        )

    def replica_state(self, run: ReplicaRun) -> jobnode.NodeState:
        return jobnode.read_state(run.directory, run.version, run.number)

    def stop_replica(self, run: ReplicaRun) -> None:
        """Stop the replica (its server finishes the requests it holds, within the plan's
        timeout), wait until it has ended, and give back what was made for it. Blocking."""
        jobnode.stop(run.directory, run.version, run.number)
        patience = run.grace_s + jobnode.READ_ON_S + 5  # past the SIGKILL and the last read
        jobnode.wait_ended(run.directory, run.version, range(run.number, run.number + 1), patience)

    # volumes ----------------------------------------------------------------------------
    @abstractmethod
    def volume_used_bytes(self, owner: str, instance: str) -> int | None:
        """Bytes in use on the instance's work volume, or None when it cannot be read now."""

    @abstractmethod
    def expand_volume(self, owner: str, instance: str, size_gb: int) -> None:
        """Grow the volume to `size_gb` (online if attached). Raises `core.OptionsError`
        for what the user can act on, OSError/RuntimeError when the machine failed. Blocking."""

    # SSH --------------------------------------------------------------------------------
    @abstractmethod
    async def connect_ssh(self, owner: str, instance: str) -> tuple[socket.socket, str]:
        """A connected socket to the instance's own SSH endpoint (verified to be that
        instance's, never a path or address another user can influence) and the account
        its sshd logs in. Raises `EndpointUnavailable` or `EndpointRefused`."""

    # users --------------------------------------------------------------------------------
    @abstractmethod
    def forget_user(self, owner: str, account: str) -> None:
        """A deleted user's last traces on this machine (processes, directories), after the
        store forgot them, so a user re-created with the name inherits nothing. Blocking."""


def installed_backends() -> dict[str, object]:
    """Registered backends by name (their entry points, not loaded)."""
    return {point.name: point for point in entry_points(group=GROUP)}


@cache
def backend_class(name: str) -> type[Backend]:
    points = installed_backends()
    if name not in points:
        raise ValueError(f"no backend named {name!r}; installed: {', '.join(sorted(points))}")
    try:
        loaded = points[name].load()
    except (ImportError, AttributeError) as error:
        raise ValueError(f"backend {name!r} could not be loaded: {error}") from None
    if not (isinstance(loaded, type) and issubclass(loaded, Backend)):
        raise ValueError(f"backend {name!r} is {loaded!r}, not a Backend")
    return loaded


def load_backend(settings: Settings, store: Store | None) -> Backend:
    """This process's backend for `settings` (atelier.yaml's `backend`)."""
    return backend_class(settings.backend)(settings, store)
