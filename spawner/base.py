"""What every backend's spawner shares: the plan, progress, records, devices and audit.

`InstanceSpawnerMixin` goes first in a backend's spawner class, before the JupyterHub spawner
it realises plans with (`LocalProcessSpawner`, `DockerSpawner`, `KubeSpawner`):

    class LocalInstanceSpawner(InstanceSpawnerMixin, LocalProcessSpawner): ...

It runs the one check (the last line, whichever door was used), reserves the volume and the
devices, records a failed start so the instance shows as failed (also after a hub restart),
and gives everything back when a start fails or the instance stops. A backend writes
`start_plan(plan)` (realise the plan, return what JupyterHub's `start` returns),
`release_plan()` (undo what `start_plan` made on the machine), `delete_instance()` and
`realised()` (whether what `start_plan` made exists); host work that must not be cut off
halfway runs through `to_the_end`.
The hub's Context (store, backend, allocator) reaches the spawner through the hub's tornado
settings, as every JupyterHub handler reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from jupyterhub.spawner import SpawnException

from atelier.spawner import checks, core
from atelier.spawner.core import audit
from atelier.spawner.devices import INSTANCE_HOLDER, Device, DevicesUnavailable


async def to_the_end(work: Callable, *args):
    """Run blocking `work` in a thread, to its end even when the caller is cancelled (the
    hub's start timeout cuts a start off): what it makes on the machine is then made before
    the cancellation goes on, so `release` undoes all of it, never half of it."""
    task = asyncio.ensure_future(asyncio.to_thread(work, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class InstanceSpawnerMixin:
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._events: list[dict] = []
        self.held_devices: list[Device] = []
        self.volume_to_make: int | None = None  # GB this start holds for a volume not yet made
        self.instance_environment: dict[str, str] = {}  # what start_plan gives the instance

    # the hub's shared pieces ----------------------------------------------------------------
    @property
    def context(self):
        return self.user.settings["atelier"]

    @property
    def store(self):
        return self.context.store

    @property
    def backend(self):
        return self.context.backend

    @property
    def allocator(self):
        return self.context.allocator

    @property
    def holder(self) -> str:
        return f"{self.user.name}:{self.name}"

    @property
    def device_holder(self) -> str:
        """Its name among the holders of devices (jobs hold them too)."""
        return INSTANCE_HOLDER + self.holder

    def check(self) -> core.InstancePlan:
        """The plan the door that asked for this start made, when it made it for exactly these
        options; else the check every door runs, here (the last line). An instance that has
        started before (it has a volume) keeps its image; one that has not may start only on
        an active image."""
        started_before = self.store.volume_size(self.user.name, self.name) is not None
        handed = checks.checked.get()
        if (
            handed is not None
            and handed.holder == self.holder
            and handed.options == self.user_options
            and (started_before or handed.plan.image.status == "active")
        ):
            return handed.plan
        return checks.check_instance(
            self.user,
            self.name,
            self.user_options,
            current_image=self.user_options.get("image") if started_before else None,
            catalog=self.context.catalog(),
            store=self.store,
            allocator=self.allocator,
            limits=self.context.limits,
        )

    def get_env(self):
        """JupyterHub's environment for the server, and what `start_plan` decided for it
        (the plan's environment, its devices, what the backend's endpoint needs)."""
        return {**super().get_env(), **self.instance_environment}

    # progress -------------------------------------------------------------------------------
    def _report(self, progress: int, message: str) -> None:
        self.log.info("%s: %s", self._log_name, message)
        self._events.append({"progress": progress, "message": message})

    async def progress(self):
        sent = 0
        while True:
            for event in self._events[sent:]:
                yield event
                sent += 1
            await asyncio.sleep(0.2)

    # the lifecycle --------------------------------------------------------------------------
    async def start(self):
        """Start the instance; why it failed, if it does, is kept in the store until a start
        succeeds or it is stopped."""
        self.store.set_failure(self.user.name, self.name, None)
        try:
            return await self._start()
        except Exception as error:
            self.record_failure(getattr(error, "log_message", None) or str(error))
            raise

    def record_failure(self, reason: str) -> None:
        self.log.warning("%s failed: %s", self._log_name, reason)
        self.store.set_failure(self.user.name, self.name, reason)

    async def _start(self):
        self._events = []
        self._report(10, "Planning the instance")
        try:
            plan = self.check()
            self.volume_to_make = self.store.reserve_volume(
                self.user.name, self.name, plan.volume_gb, self.context.limits
            )
        except core.OptionsError as error:  # DevicesUnavailable too
            raise checks.Refused(error) from None

        try:  # from here on, any failure gives back what this start holds
            self.store.instance_created(self.user.name, self.name)
            self._report(25, f"Allocating devices for {plan.spec.name}")
            try:
                self.held_devices = self.allocator.acquire(
                    self.device_holder,
                    plan.spec.name,
                    plan.accelerator_type,
                    plan.accelerator_count,
                )
            except DevicesUnavailable as error:
                raise checks.Refused(error, reason="devices") from None
            address = await self.start_plan(plan)
        except BaseException:
            await self.release()
            raise
        await answering(*address)
        return address

    @contextlib.contextmanager
    def host_filesystem(self, what: str):
        """A home or volume that cannot be had: the user reads why in one line; a host
        tool's output (host paths) is for the operator's log only."""
        try:
            yield
        except core.VolumeUnavailable as error:
            raise SpawnException(str(error), reason="volume", status_code=400) from None
        except (OSError, RuntimeError) as error:
            self.log.error("%s: preparing the %s failed: %s", self._log_name, what, error)
            message = (
                f"the instance's {what} could not be prepared on this machine; "
                "ask the hub's operator (its log says why)"
            )
            raise SpawnException(message, reason="host", status_code=503) from None

    async def start_plan(self, plan: core.InstancePlan):
        """Realise `plan` on the machine (devices are held); return the server's (ip, port)."""
        raise NotImplementedError

    async def release_plan(self) -> None:
        """Undo on the machine what `start_plan` made (the volume stays)."""
        raise NotImplementedError

    async def delete_instance(self) -> bool:
        """Delete the instance's volume and files on the machine; True when it had a volume."""
        raise NotImplementedError

    def realised(self) -> bool:
        """Whether what `start_plan` made (a process, a container) exists as far as the hub
        knows, before a poll finds out whether it still runs."""
        raise NotImplementedError

    async def poll(self):
        """None while the instance runs; once it has died, what it held is given back, and
        a death nobody asked for (during start-up, or while running) is its failure."""
        was_realised = self.realised()
        status = await super().poll()
        if status is not None:
            if was_realised and (self._waiting_for_response or not self._stop_pending):
                when = "during start-up" if self._waiting_for_response else "unexpectedly"
                self.record_failure(f"JupyterLab exited {when} (exit status {status})")
            await self.release()
        return status

    async def stop(self, now=False):
        if self._waiting_for_response:  # the hub gave up waiting for it to answer
            self.record_failure(f"JupyterLab did not answer within {self.http_timeout} seconds")
        await super().stop(now=now)
        await self.release()

    async def make_volume(self, create: Callable[[int], None]) -> None:
        """Make the work volume while it is only reserved (`create(size_gb)`, blocking), once:
        a volume made before is never made again. Made and recorded together, also when the
        start is cut off meanwhile (never a volume the store does not know)."""
        if self.volume_to_make is None:
            return
        size_gb, made = self.volume_to_make, []

        def make() -> None:
            create(size_gb)
            self.store.volume_made(self.user.name, self.name)
            made.append(size_gb)

        try:
            await to_the_end(make)
        finally:
            if made:
                self.volume_to_make = None
                self.audit_volume(audit.Action.CREATE_VOLUME)

    def audit_volume(self, action: audit.Action) -> None:
        """Recorded as caused by the request that started or deleted the instance."""
        actor, source_ip = checks.requester.get() or (self.user.name, "")
        event = audit.event(
            action,
            actor=actor,
            source_ip=source_ip,
            resource=f"{self.user.name}/{self.name}",
            owner=self.user.name,
        )
        self.store.record(**event)

    async def release(self) -> None:
        """Give back what a start holds: the quota of a volume never made, the devices,
        and what the backend made for it."""
        if self.volume_to_make is not None:
            self.store.release_volume(self.user.name, self.name)
            self.volume_to_make = None
        self.allocator.release(self.device_holder)
        self.held_devices = []
        await self.release_plan()

    async def delete_forever(self):
        """The instance is deleted: so is its work volume. (The default server, which
        JupyterHub deletes with its user, is never an instance.)"""
        if not self.name:
            return
        had_volume = await self.delete_instance()
        self.store.forget_volume(self.user.name, self.name)
        if had_volume:  # an instance that never started had no volume to delete
            self.audit_volume(audit.Action.DELETE_VOLUME)

    # hub restarts ---------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.realised() and self.held_devices:
            state["devices"] = [d.to_json() for d in self.held_devices]
        return state

    def load_state(self, state):
        super().load_state(state)
        self.held_devices = [Device(**d) for d in state.get("devices", [])]
        if self.realised() and self.held_devices:
            self.allocator.restore(self.device_holder, self.held_devices)

    def clear_state(self):
        super().clear_state()
        self.held_devices = []


ANSWER_WAIT_S = 5  # at most this long; a server still silent then is JupyterHub's to wait for


async def answering(ip: str, port: int) -> None:
    """Wait (briefly) until the server accepts connections. JupyterHub then finds it up on its
    first check: its own waits grow from 0.2 s, doubled at random, which added ~1.3 s to a
    2 s start."""
    deadline = asyncio.get_running_loop().time() + ANSWER_WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(ip or "127.0.0.1", port), 1)
        except OSError:  # refused, or no answer within 1 s (TimeoutError)
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
