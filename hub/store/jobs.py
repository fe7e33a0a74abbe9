"""The store's training jobs and their events, and the device holds instances and jobs share."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from atelier.hub.store.lookup import CatalogError
from atelier.hub.store.records import DeviceHoldRecord, JobEventRecord, JobRecord
from atelier.spawner import core
from atelier.spawner.core.jobs import FINISHED
from atelier.spawner.devices import Device

ACTIVE = ("pending", "running")
JOB_FIELDS = ("status", "reason", "attempt", "restarts", "checkpoint_step", "devices", "run")
JOB_FIELDS += ("stop_requested", "started", "ended")
Chooser = Callable[[set[Device]], list[Device]]  # what to take, given what others hold


class JobQueries:
    def create_job(self, owner: str, name: str, plan: dict, limits: core.Limits) -> dict:
        """A new pending job; the per-user limit and the name are checked in the same
        transaction (it writes the owner's account row first: one at a time per owner)."""
        with self._quota_transaction(owner) as db:
            active = select(func.count()).where(JobRecord.owner == owner)
            core.check_job_count(db.scalar(active.where(JobRecord.status.in_(ACTIVE))), limits)
            taken = select(JobRecord.id).where(JobRecord.owner == owner, JobRecord.name == name)
            if db.scalar(taken) is not None:
                raise CatalogError("name", f"you have a job named {name} already", "exists")
            record = JobRecord(id=uuid.uuid4().hex, owner=owner, name=name, plan=plan)
            db.add(record)
            db.add(JobEventRecord(job=record.id, message="queued"))
            db.flush()
            return record.to_json()

    def job(self, owner: str, name: str) -> dict | None:
        with self.session() as db:
            query = select(JobRecord).where(JobRecord.owner == owner, JobRecord.name == name)
            record = db.scalar(query)
            return None if record is None else record.to_json() | _private(record)

    def jobs(self, owner: str | None = None) -> list[dict]:
        """Newest first: one owner's, or everyone's."""
        with self.session() as db:
            query = select(JobRecord).order_by(JobRecord.created.desc())
            if owner is not None:
                query = query.where(JobRecord.owner == owner)
            return [record.to_json() for record in db.scalars(query)]

    def active_jobs(self) -> list[dict]:
        """Pending and running jobs, oldest first: the queue in order."""
        with self.session() as db:
            query = select(JobRecord).where(JobRecord.status.in_(ACTIVE))
            records = db.scalars(query.order_by(JobRecord.created))
            return [record.to_json() | _private(record) for record in records]

    def update_job(self, id: str, event: str | None = None, **fields) -> None:
        """Change a job, with the event that says why (one transaction)."""
        unknown = set(fields) - set(JOB_FIELDS)
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        with self.session() as db, db.begin():
            record = db.get(JobRecord, id)
            if record is None:
                return
            for key, value in fields.items():
                setattr(record, key, value)
            if event:
                db.add(JobEventRecord(job=id, message=event[:2000]))

    def job_events(self, id: str) -> list[dict]:
        with self.session() as db:
            query = select(JobEventRecord).where(JobEventRecord.job == id)
            return [e.to_json() for e in db.scalars(query.order_by(JobEventRecord.id))]

    def delete_job(self, id: str) -> None:
        with self.session() as db, db.begin():
            db.execute(delete(JobEventRecord).where(JobEventRecord.job == id))
            db.execute(delete(JobRecord).where(JobRecord.id == id))

    def forget_jobs_of(self, owner: str) -> None:
        """A deleted user's jobs (ended: the hub stopped them first) and their events."""
        with self.session() as db:
            ids = list(db.scalars(select(JobRecord.id).where(JobRecord.owner == owner)))
        for id in ids:
            self.delete_job(id)

    def jobs_ended_before(self, moment: datetime) -> list[str]:
        """Finished jobs whose logs are past their retention."""
        with self.session() as db:
            query = select(JobRecord.id).where(JobRecord.status.in_(FINISHED))
            return list(db.scalars(query.where(JobRecord.ended < moment)))

    def jobs_on_volume(self, owner: str, instance: str) -> int:
        """How many active jobs run in an instance's work volume (it stays attached)."""
        with self.session() as db:
            query = select(JobRecord.plan).where(
                JobRecord.owner == owner, JobRecord.status == "running"
            )
            return sum(plan["volume"] == instance for plan in db.scalars(query))

    # devices --------------------------------------------------------------------------------
    def device_holds(self) -> dict[Device, str]:
        with self.session() as db:
            return {_device(r): r.holder for r in db.scalars(select(DeviceHoldRecord))}

    def hold_devices(self, holder: str, choose: Chooser) -> list[Device]:
        """What `choose` picks from the devices no one else holds, held by `holder` instead
        of what it held: one transaction; a device taken meanwhile by another process (the
        hub's spawners, the service's jobs) fails its insert, and the choice is made again."""
        for _ in range(20):
            try:
                with self.session() as db, db.begin():
                    others = db.scalars(
                        select(DeviceHoldRecord).where(DeviceHoldRecord.holder != holder)
                    )
                    chosen = choose({_device(r) for r in others})
                    db.execute(delete(DeviceHoldRecord).where(DeviceHoldRecord.holder == holder))
                    db.add_all(_hold(device, holder) for device in chosen)
                return chosen
            except IntegrityError:
                continue
        raise RuntimeError("devices could not be allocated: too many concurrent changes")

    def restore_devices(self, holder: str, devices: list[Device]) -> None:
        with self.session() as db, db.begin():
            for device in devices:
                db.merge(_hold(device, holder))

    def release_devices(self, holder: str) -> None:
        with self.session() as db, db.begin():
            db.execute(delete(DeviceHoldRecord).where(DeviceHoldRecord.holder == holder))

    def release_device_holds(self, prefix: str) -> None:
        """Forget every hold of one kind of holder (the hub's instances, as it starts: it
        restores those of the instances still running)."""
        with self.session() as db, db.begin():
            db.execute(delete(DeviceHoldRecord).where(DeviceHoldRecord.holder.startswith(prefix)))


def _private(record: JobRecord) -> dict:
    """What the service needs of a job beside what its owner sees."""
    return {"run": dict(record.run), "stop_requested": record.stop_requested}


def _device(record: DeviceHoldRecord) -> Device:
    return Device(kind=record.kind, type=record.type, index=record.index)


def _hold(device: Device, holder: str) -> DeviceHoldRecord:
    return DeviceHoldRecord(kind=device.kind, type=device.type, index=device.index, holder=holder)
