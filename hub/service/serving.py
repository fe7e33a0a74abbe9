"""The service's deployment supervisor: each tick it looks at every deployment's replicas
(ended? ready yet?) and takes the next step of its rollout (core.rollout): start replicas,
drain them, stop them, fail a version that never became ready. What runs outlives this
service (atelier.spawner.jobnode); a restarted service finds it through the store and goes on.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from datetime import datetime
from pathlib import Path

from atelier.hub.context import Context
from atelier.hub.router import upstream
from atelier.hub.service.supervisor import Supervisor
from atelier.spawner import core
from atelier.spawner.backend import ReplicaRun
from atelier.spawner.core import deployments, rollout
from atelier.spawner.core.jobs import describe_exit

log = logging.getLogger(__name__)
TICK_SECONDS = 0.5
READY_SECONDS = 180  # a replica's model server must answer ready within this
# how long a draining replica still gets requests: every router has read the table again
DRAIN_SECONDS = 3
THREADS = 8  # starts and stops at once (a stop waits for the requests a replica holds)
LOG_TAIL = 4000  # bytes of a failed replica's log its reason quotes


def seconds(moment: str) -> float:
    return datetime.fromisoformat(moment).timestamp()


class Serving(Supervisor):
    what, tick_seconds = "deployments", TICK_SECONDS

    def __init__(self, context: Context):
        super().__init__(context, THREADS, "atelier-serving")
        self.stopping: set[tuple[str, int]] = set()  # replicas whose stop is under way

    def directory(self, id: str) -> Path:
        return self.context.deployment_dir(id)

    def run_of(self, deployment: dict, replica: dict) -> ReplicaRun:
        """The replica as its backend knows it, on its own version's plan."""
        history = {entry["version"]: entry["plan"] for entry in deployment["history"]}
        data = history.get(replica["version"], deployment)
        plan = deployments.plan_from_json(
            deployment["owner"], deployment["name"], data, self.context.catalog()
        )
        directory = self.directory(deployment["id"])
        return ReplicaRun(deployment["id"], plan, replica["version"], replica["number"], directory)

    # the loop -----------------------------------------------------------------------------
    async def tick(self) -> None:
        for deployment in await self.in_thread(self.store.deployments):
            if deployment["id"] in self.busy:
                continue
            self.busy.add(deployment["id"])
            task = asyncio.ensure_future(self.step(deployment))
            self.steps.add(task)
            task.add_done_callback(self.steps.discard)

    async def step(self, deployment: dict) -> None:
        try:
            replicas = await self.in_thread(self.store.replicas, deployment["id"])
            if not replicas and deployment["status"] in ("failed", "stopped"):
                return
            watched = [r for r in replicas if (deployment["id"], r["number"]) not in self.stopping]
            failures = [f for r in watched if (f := await self.observe(deployment, r))]
            await self.act(deployment, failures)
        except Exception:  # noqa: BLE001 - the next tick tries again
            log.exception("supervising deployment %s failed", deployment["id"])
        finally:
            self.busy.discard(deployment["id"])

    async def observe(self, deployment: dict, replica: dict) -> tuple[int, str] | None:
        """Note a replica that ended (and why) or became ready; an unasked end is a failure."""
        id, number = deployment["id"], replica["number"]
        run = self.run_of(deployment, replica)
        state = await self.in_thread(self.context.backend.replica_state, run)
        if not state.running:
            why = f"replica {number} {ending(state)}{log_tail(run)}"
            await self.in_thread(self.give_back, run, why)
            if replica["phase"] != "draining":
                return replica["version"], why
        elif replica["phase"] == "starting" and await upstream.ready(
            replica["endpoint"], deployment["name"]
        ):
            self.store.set_replica(id, number, phase="ready")
            self.store.update_deployment(
                id, f"replica {number} (version {replica['version']}) is ready"
            )
        return None

    def give_back(self, run: ReplicaRun, why: str) -> None:
        """What the backend made for an ended replica, and the replica's end in the store."""
        try:
            self.context.backend.stop_replica(run)
        finally:
            self.store.set_replica(run.id, run.number, phase="ended", reason=why[:2000])

    async def act(self, deployment: dict, failures: list[tuple[int, str]]) -> None:
        id = deployment["id"]
        replicas = await self.in_thread(self.store.replicas, id)
        step = rollout.roll(
            target=deployment["version"],
            serving=deployment["serving_version"],
            wanted=0 if deployment["stopped"] else deployment["replicas"],
            replicas=[
                rollout.Replica(r["number"], r["version"], r["phase"], seconds(r["since"]))
                for r in replicas
            ],
            failures=failures,
            now=time.time(),
            ready_seconds=READY_SECONDS,
            drain_seconds=DRAIN_SECONDS,
        )
        if step.failed:
            self.store.version_failed(id, deployment["version"], step.failed)
        for number in step.drain:
            self.store.set_replica(id, number, phase="draining")
        if step.serving != deployment["serving_version"] and step.serving is not None:
            self.store.now_serving(id, step.serving)
        status = "failed" if step.failed and step.serving is None else step.status
        if status != deployment["status"]:
            self.store.update_deployment(id, status=status)
        by_number = {r["number"]: r for r in replicas}
        for number in step.stop:  # apart: a stop waits for the requests the replica holds
            if (id, number) not in self.stopping:
                self.stopping.add((id, number))
                task = asyncio.ensure_future(self.stop(deployment, by_number[number]))
                self.steps.add(task)
                task.add_done_callback(self.steps.discard)
        await asyncio.gather(*(self.start(deployment) for _ in range(step.start)))

    async def start(self, deployment: dict) -> None:
        id, version = deployment["id"], deployment["version"]
        number = self.store.add_replica(id, version)
        if number is None:  # stopped since this step read it
            return
        run = self.run_of(deployment, {"version": version, "number": number})
        run.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            endpoint = await self.in_thread(self.context.backend.start_replica, run)
        except (core.OptionsError, RuntimeError, OSError) as error:
            why = f"replica {number} could not start: {getattr(error, 'message', error)}"
            log.error("%s/%s: %s", deployment["owner"], deployment["name"], why)
            await self.in_thread(self.give_back, run, why)
            if deployment["serving_version"] != version:
                self.store.version_failed(id, version, why)
            return
        self.store.set_replica(id, number, endpoint=endpoint)
        self.store.update_deployment(id, f"replica {number} (version {version}) starting")

    async def stop(self, deployment: dict, replica: dict) -> None:
        run = self.run_of(deployment, replica)
        try:
            await self.in_thread(self.give_back, run, f"replica {replica['number']} stopped")
        except Exception:  # noqa: BLE001 - the next tick asks again
            log.exception("stopping replica %s of %s failed", run.number, run.id)
        finally:
            self.stopping.discard((run.id, run.number))

    def forget(self, deployment: dict) -> None:
        """A deleted deployment's last traces: its replicas' logs and states. Blocking."""
        self.store.delete_deployment(deployment["id"])
        shutil.rmtree(self.directory(deployment["id"]), ignore_errors=True)


def ending(state) -> str:
    if state.lost or state.exit_status is None:
        return "ended without a word (its monitor was killed)"
    return describe_exit(state.exit_status)


def log_tail(run: ReplicaRun) -> str:
    """The end of the replica's log, for the reason a failure gives."""
    path = run.directory / f"node-{run.number}.log"
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - LOG_TAIL))
            text = file.read().decode(errors="replace").strip()
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()][-5:]
    return (": " + " | ".join(lines)) if lines else ""
