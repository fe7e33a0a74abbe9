"""Training jobs through the Atelier API: submit, list, show, stop, resume and delete them,
and read their events, per-rank logs (live with `follow`) and metrics. A job is its owner's
alone: anyone else gets 404, as for instances. The supervisor is training.py's."""

from __future__ import annotations

import asyncio
import json

from tornado.iostream import StreamClosedError

from atelier.hub.service.base import APIError, Caller, not_found
from atelier.hub.service.routes import NAME, InstanceBase
from atelier.hub.store.jobs import ACTIVE
from atelier.spawner import core
from atelier.spawner.core import jobs
from atelier.spawner.core.audit import Action

JOBS_READ, JOBS_MANAGE = "custom:atelier:jobs:read", "custom:atelier:jobs:manage"
STATUS_OF_CODE = {"conflict": 409, "exists": 409, "not_found": 404, "quota_exceeded": 403}
FOLLOW_SECONDS = 0.5  # how often a followed log is read again
CHUNK = 1 << 16
SERIES_POINTS = 2000  # about the most points a metric's series answers with (thinned)
SERIES = 64  # the most series a job's metrics answer with


def refusal(error: core.OptionsError) -> APIError:
    return APIError.refusal(error, STATUS_OF_CODE.get(error.code, 400))


class JobBase(InstanceBase):
    @property
    def training(self):
        return self.settings["training"]

    def job(self, caller: Caller, owner: str, name: str) -> dict:
        job = self.context.store.job(owner, name)
        if job is None or not (caller.acts_for_everyone or owner == caller.name):
            raise not_found(f"job {owner}/{name}")
        return job

    def audit_job(self, caller, action, owner, name, result="success", reason="") -> None:
        self.audit(caller, action, f"{owner}/{name}", result, reason, owner=owner)

    def public(self, job: dict) -> dict:
        return {k: v for k, v in job.items() if k not in ("run", "stop_requested")}


class JobsHandler(JobBase):
    def get(self):
        caller = self.require(JOBS_READ)
        owner = self.get_argument("owner", None) if caller.acts_for_everyone else caller.name
        self.reply({"jobs": self.context.store.jobs(owner)})

    async def post(self):
        caller = self.require(JOBS_MANAGE)
        raw = self.body((*jobs.JOB_FIELDS, "owner"), required=("name",))
        owner = raw.pop("owner", None) or caller.name
        servers = await self.owned_servers(caller, owner)
        workspaces = await self.hub.memberships(owner)
        catalog = self.context.catalog().for_user(owner, workspaces)
        limits = self.context.limits
        try:
            plan = jobs.plan_job(owner, raw, catalog, set(servers) - {""}, limits)
            check_devices(plan, catalog)
            job = self.context.store.create_job(owner, plan.name, plan.to_json(), limits)
        except core.OptionsError as error:
            self.audit_job(
                caller, Action.CREATE_TRAIN_JOB, owner, raw["name"], "failure", str(error)
            )
            raise refusal(error) from None
        self.audit_job(caller, Action.CREATE_TRAIN_JOB, owner, plan.name)
        self.reply(self.public(job), 201)


def check_devices(plan: jobs.JobPlan, catalog: core.Catalog) -> None:
    """A job that needs more devices than the hub has would wait forever: refused now."""
    kind = plan.spec.accelerator_type
    have = catalog.accelerators.get(kind or "", 0)
    if kind and plan.accelerator_count > have:
        raise core.OptionsError(
            "nodes",
            f"{plan.nodes} node(s) of spec {plan.spec.name} need {plan.accelerator_count} "
            f"{kind} devices; this hub has {have}",
        )


class JobHandler(JobBase):
    def get(self, owner, name):
        self.reply(self.public(self.job(self.require(JOBS_READ), owner, name)))

    async def delete(self, owner, name):
        caller = self.require(JOBS_MANAGE)
        job = self.job(caller, owner, name)
        if job["status"] in ACTIVE:
            self.context.store.update_job(
                job["id"], f"deleted by {caller.name}", stop_requested=True
            )
            for _ in range(600):  # the supervisor stops it (a node's grace period at most)
                await asyncio.sleep(0.1)
                job = self.context.store.job(owner, name)
                if job["status"] not in ACTIVE:
                    break
            else:
                raise APIError(503, "unavailable", "the job did not stop in time; try again")
        await asyncio.to_thread(self.training.forget, job)
        self.audit_job(caller, Action.DELETE_TRAIN_JOB, owner, name)
        self.set_status(204)
        self.finish()


class JobStopHandler(JobBase):
    def post(self, owner, name):
        caller = self.require(JOBS_MANAGE)
        job = self.job(caller, owner, name)
        if job["status"] not in ACTIVE:
            self.audit_job(caller, Action.STOP_TRAIN_JOB, owner, name, "failure", job["status"])
            raise APIError(409, "conflict", f"the job is {job['status']} already", "status")
        self.context.store.update_job(
            job["id"], f"stop asked by {caller.name}", stop_requested=True
        )
        self.audit_job(caller, Action.STOP_TRAIN_JOB, owner, name)
        self.reply(self.public(self.context.store.job(owner, name)), 202)


class JobResumeHandler(JobBase):
    async def post(self, owner, name):
        caller = self.require(JOBS_MANAGE)
        job = self.job(caller, owner, name)
        try:
            if job["status"] not in ("stopped", "failed"):
                raise core.OptionsError(
                    "status",
                    f"only a stopped or failed job resumes; it is {job['status']}",
                    "conflict",
                )
            active = sum(j["status"] in ACTIVE for j in self.context.store.jobs(owner))
            core.check_job_count(active, self.context.limits)
            workspaces = await self.hub.memberships(owner)
            catalog = self.context.catalog().for_user(owner, workspaces)
            jobs.plan_from_json(owner, name, job, catalog)  # the image is still theirs to use
        except core.OptionsError as error:
            self.audit_job(caller, Action.RESUME_TRAIN_JOB, owner, name, "failure", str(error))
            raise refusal(error) from None
        step = job["checkpoint_step"]
        since = f"from checkpoint step {step}" if step is not None else "from the start"
        self.context.store.update_job(
            job["id"],
            f"resumed by {caller.name} {since}",
            status="pending",
            reason=None,
            restarts=0,
            ended=None,
        )
        self.audit_job(caller, Action.RESUME_TRAIN_JOB, owner, name)
        self.reply(self.public(self.context.store.job(owner, name)), 202)


class JobEventsHandler(JobBase):
    def get(self, owner, name):
        job = self.job(self.require(JOBS_READ), owner, name)
        self.reply({"events": self.context.store.job_events(job["id"])})


class JobLogsHandler(JobBase):
    """One rank's log as text: all of it, its `tail` lines, or followed live until the job
    ends (`follow=1`); `download=1` asks the browser to save it."""

    async def get(self, owner, name):
        job = self.job(self.require(JOBS_READ), owner, name)
        rank = self.int_argument("rank", 0, 0, job["world_size"] - 1)
        tail = self.int_argument("tail", None, 1, 100_000)
        directory = self.training.directory(job["id"])
        if job["status"] not in ACTIVE and not directory.exists() and job["attempt"]:
            days = self.context.limits.job_log_retention_days
            raise APIError(
                410, "gone", f"its logs were removed {days} days after it ended "
                "(limits.job_log_retention_days)",
            )  # fmt: skip
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if self.get_argument("download", None):
            filename = f"{owner}-{name}-rank-{rank}.log"
            self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        path = directory / f"rank-{rank}.log"
        if tail is not None:
            self.finish(await asyncio.to_thread(read_tail, path, tail))
            return
        offset = 0
        try:
            while True:
                chunk = await asyncio.to_thread(read_from, path, offset)
                if chunk:
                    offset += len(chunk)
                    self.write(chunk)
                    await self.flush()
                    continue
                if not self.get_argument("follow", None):
                    break
                now = self.context.store.job(owner, name)
                if now is None or now["status"] not in ACTIVE:  # ended, or deleted meanwhile
                    if not await asyncio.to_thread(read_from, path, offset):
                        break
                    continue
                await asyncio.sleep(FOLLOW_SECONDS)
        except StreamClosedError:
            return
        self.finish()


def read_from(path, offset: int) -> bytes:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read(CHUNK)
    except FileNotFoundError:
        return b""


def read_tail(path, lines: int) -> bytes:
    try:
        with open(path, "rb") as file:
            file.seek(0, 2)
            end = file.tell()
            start = max(0, end - lines * 512)
            while True:
                file.seek(start)
                text = file.read()
                if start == 0 or text.count(b"\n") > lines:
                    return b"".join(text.splitlines(keepends=True)[-lines:])
                start = max(0, start - (end - start))
    except FileNotFoundError:
        return b""


class JobMetricsHandler(JobBase):
    async def get(self, owner, name):
        job = self.job(self.require(JOBS_READ), owner, name)
        directory = self.training.directory(job["id"])
        series = await asyncio.to_thread(read_series, directory / "metrics.jsonl")
        usage = {}
        if job["status"] == "running":
            run = self.training.run_of(job)
            usage = await asyncio.to_thread(self.context.backend.job_usage, run)
        self.reply({"series": series, "usage": usage, "checkpoint_step": job["checkpoint_step"]})


def read_series(path) -> dict[str, list[list[float]]]:
    """Each metric's [step, value] points, oldest first, thinned as they are read to at most
    2 x SERIES_POINTS (every other one dropped, the stride doubled): bounded memory, however
    much a job logged."""
    series: dict[str, tuple[list[list[float]], list[int]]] = {}  # points, [stride, seen]
    try:
        with open(path, "rb") as file:
            for line in file:
                record = json.loads(line) if line.endswith(b"\n") else {}
                for key, value in record.get("values", {}).items():
                    if key not in series and len(series) >= SERIES:
                        continue
                    points, counts = series.setdefault(key, ([], [1, 0]))
                    if counts[1] % counts[0] == 0:
                        points.append([record["step"], value])
                    counts[1] += 1
                    if len(points) > 2 * SERIES_POINTS:
                        del points[1::2]
                        counts[0] *= 2
    except FileNotFoundError:
        pass
    return {key: points for key, (points, _) in series.items()}


ROUTES = [
    ("/jobs", JobsHandler),
    (f"/jobs/{NAME}/{NAME}", JobHandler),
    (f"/jobs/{NAME}/{NAME}/stop", JobStopHandler),
    (f"/jobs/{NAME}/{NAME}/resume", JobResumeHandler),
    (f"/jobs/{NAME}/{NAME}/events", JobEventsHandler),
    (f"/jobs/{NAME}/{NAME}/logs", JobLogsHandler),
    (f"/jobs/{NAME}/{NAME}/metrics", JobMetricsHandler),
]
