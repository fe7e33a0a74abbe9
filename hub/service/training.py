"""The service's training-job supervisor: the queue, each attempt's start, its end, and the
restarts from a checkpoint.

Every second it looks at the active jobs, oldest first. A pending job starts once the devices
it needs are free (the allocator the hub's spawners use, through the store), in the order
jobs came: a later job never takes devices an earlier one waits for. A running job ends when
its nodes do: completed when every node exited 0; on the first failure it says which rank
failed and how, stops the rest, and restarts from the newest checkpoint while its retry
budget lasts. What runs outlives this service (atelier.spawner.jobnode); a restarted service
finds it through the store and goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from atelier.hub.context import Context
from atelier.hub.service.supervisor import Supervisor
from atelier.spawner import core, jobnode
from atelier.spawner.backend import JobRun
from atelier.spawner.core import jobs
from atelier.spawner.devices import JOB_HOLDER, Device, DevicesUnavailable

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0
THREADS = 4  # starts and stops at once (each may take a node's grace period)


def now() -> datetime:
    return datetime.now(UTC)


class Training(Supervisor):
    what, tick_seconds = "training jobs", TICK_SECONDS

    def __init__(self, context: Context):
        super().__init__(context, THREADS, "atelier-job")
        self.checkpoints: dict[str, tuple[int, int | None]] = {}  # id -> (read up to, step)

    def directory(self, id: str) -> Path:
        return self.context.job_dir(id)

    def plan(self, job: dict) -> jobs.JobPlan:
        return jobs.plan_from_json(job["owner"], job["name"], job, self.context.catalog())

    def run_of(self, job: dict) -> JobRun:
        devices = tuple(Device(**d) for d in job["devices"])
        return JobRun(job["id"], self.plan(job), job["attempt"], self.directory(job["id"]), devices)

    # the loop -----------------------------------------------------------------------------
    async def tick(self) -> None:
        waited: set[str] = set()  # device types an earlier pending job waits for
        for job in await self.in_thread(self.store.active_jobs):
            if job["id"] in self.busy:
                continue
            plan = None  # a pending job's, planned once for the queue and its start
            if job["status"] == "pending" and not job["stop_requested"]:
                plan = self.plan_or_fail(job)
                if plan is None or not self.may_start(job, plan, waited):
                    continue
            self.busy.add(job["id"])
            step = asyncio.ensure_future(self.step(job, plan))  # it goes on beside the next ticks
            self.steps.add(step)
            step.add_done_callback(self.steps.discard)

    def plan_or_fail(self, job: dict) -> jobs.JobPlan | None:
        try:
            return self.plan(job)
        except core.OptionsError as error:
            self.finish(job, "failed", f"it cannot start: {error}")
            return None

    def may_start(self, job: dict, plan: jobs.JobPlan, waited: set[str]) -> bool:
        """First come, first served per device type; CPU jobs never wait."""
        kind = plan.spec.accelerator_type
        if kind is None:
            return True
        if kind in waited:
            self.wait(job, f"waiting behind earlier jobs for {kind} devices")
            return False
        try:
            self.context.allocator.available(
                JOB_HOLDER + job["id"], plan.spec.name, kind, plan.accelerator_count
            )
        except DevicesUnavailable as error:
            waited.add(kind)
            self.wait(job, jobs.waiting_for(plan, error.free))
            return False
        return True

    def wait(self, job: dict, reason: str) -> None:
        if job["reason"] != reason:
            self.store.update_job(job["id"], reason, reason=reason)

    async def step(self, job: dict, plan: jobs.JobPlan | None) -> None:
        try:
            if job["stop_requested"]:
                await self.stop(job)
            elif plan is not None:
                await self.start(job, plan)
            else:
                await self.watch(job)
        except Exception as error:  # noqa: BLE001 - the job fails, the service goes on
            log.exception("job %s/%s", job["owner"], job["name"])
            await self.in_thread(self.finish, job, "failed", f"Atelier failed to run it: {error}")
        finally:
            self.busy.discard(job["id"])

    # an attempt's life --------------------------------------------------------------------
    async def start(self, job: dict, plan: jobs.JobPlan, event: str | None = None) -> None:
        holder = JOB_HOLDER + job["id"]
        try:
            devices = self.context.allocator.acquire(
                holder, plan.spec.name, plan.spec.accelerator_type, plan.accelerator_count
            )
        except DevicesUnavailable as error:
            self.wait(job, jobs.waiting_for(plan, error.free))
            return
        attempt = job["attempt"] + 1
        directory = self.directory(job["id"])
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fields = {"devices": [d.to_json() for d in devices], "attempt": attempt, "reason": None}
        if devices:
            names = ", ".join(f"{d.type} {d.index}" for d in devices)
            self.store.update_job(job["id"], f"devices allocated: {names}", **fields)
        run = JobRun(job["id"], plan, attempt, directory, tuple(devices))
        try:
            await self.in_thread(self.context.backend.start_job, run)
        except Exception as error:
            await self.in_thread(self.context.backend.stop_job, run)  # the nodes that started
            if not isinstance(error, core.OptionsError):
                raise
            self.finish(job, "failed", f"it cannot start: {error.message}")
            return
        shape = f"{plan.nodes} node(s) x {plan.processes_per_node} process(es)"
        message = event or f"started: {shape}, {plan.distributed_backend}"
        if event is None:  # a first start or a resume; a restart keeps its time limit's start
            fields["started"] = now()
        self.store.update_job(job["id"], message, status="running", **fields)

    async def watch(self, job: dict) -> None:
        run = self.run_of(job)
        self.read_checkpoints(job)
        limit = job["time_limit_minutes"]
        started = datetime.fromisoformat(job["started"])
        if limit and now() - started > timedelta(minutes=limit):
            await self.in_thread(self.context.backend.stop_job, run)
            self.finish(job, "failed", f"its time limit of {limit} minutes was reached")
            return
        nodes = await self.in_thread(self.context.backend.job_nodes, run)
        failed = [n for n in nodes if not n.running and (n.lost or n.exit_status)]
        if failed:
            await self.failed(job, run, min(failed, key=lambda n: n.ended or float("inf")))
        elif not any(n.running for n in nodes):
            await self.in_thread(self.context.backend.stop_job, run)
            self.finish(job, "completed", "completed")

    async def failed(self, job: dict, run: JobRun, node: jobnode.NodeState) -> None:
        if node.lost:
            what = f"node {node.node} was lost (its monitor ended without a word)"
        elif node.failure is not None:
            what = f"rank {node.failure[0]} {jobs.describe_exit(node.failure[1])}"
        else:
            what = f"node {node.node} {jobs.describe_exit(node.exit_status)}"
        self.store.update_job(job["id"], what)
        await self.in_thread(self.context.backend.stop_job, run)
        if job["restarts"] >= job["retries"]:
            budget = f" after {job['restarts']} restart(s)" if job["restarts"] else ""
            self.finish(job, "failed", f"{what}{budget}")
            return
        restarts = job["restarts"] + 1
        step = self.read_checkpoints(job)
        since = f"from checkpoint step {step}" if step is not None else "from the start"
        self.store.update_job(job["id"], restarts=restarts)
        event = f"restarting {restarts}/{job['retries']} {since}"
        await self.start({**job, "restarts": restarts}, run.plan, event)

    async def stop(self, job: dict) -> None:
        if job["attempt"]:
            await self.in_thread(self.context.backend.stop_job, self.run_of(job))
        self.finish(job, "stopped", "stopped")

    def finish(self, job: dict, status: str, event: str) -> None:
        reason = None if status == "completed" else event
        self.read_checkpoints(job)  # what it saved while it stopped too
        self.context.allocator.release(JOB_HOLDER + job["id"])
        self.store.update_job(
            job["id"], event, status=status, reason=reason, ended=now(), stop_requested=False
        )

    def read_checkpoints(self, job: dict) -> int | None:
        """The newest checkpoint step the job reported, read on from where the last look
        ended; recorded on the job as it changes."""
        offset, step = self.checkpoints.get(job["id"], (0, job["checkpoint_step"]))
        path = self.directory(job["id"]) / "metrics.jsonl"
        try:
            with open(path, "rb") as file:
                file.seek(offset)
                for line in file:
                    if not line.endswith(b"\n"):
                        break  # half written: read again next time
                    offset += len(line)
                    record = json.loads(line)
                    step = record.get("checkpoint", step)
        except FileNotFoundError:
            pass
        self.checkpoints[job["id"]] = (offset, step)
        if step != job["checkpoint_step"]:
            self.store.update_job(job["id"], checkpoint_step=step)
        return step

    # what the API asks ----------------------------------------------------------------------
    def forget(self, job: dict) -> None:
        """A deleted job's record, logs and metrics. Blocking."""
        self.store.delete_job(job["id"])
        self.checkpoints.pop(job["id"], None)
        shutil.rmtree(self.directory(job["id"]), ignore_errors=True)

    def expire_logs(self) -> None:
        """Logs and metrics past their retention go; the job's record stays. Blocking."""
        days = self.context.limits.job_log_retention_days
        for id in self.store.jobs_ended_before(now() - timedelta(days=days)):
            shutil.rmtree(self.directory(id), ignore_errors=True)
