"""The store's operations and snapshots: a save is followed as an operation, and its image
enters the catalog in the same transaction that marks the operation succeeded, so the catalog
never holds half an image."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from atelier.hub.store.lookup import CatalogError
from atelier.hub.store.records import ImageRecord, OperationRecord, utcnow
from atelier.spawner import core

CUT_OFF = "cut off: the hub stopped while it ran; nothing of it was kept, start it again"


class OperationQueries:
    def begin_operation(self, kind: str, owner: str, resource: str, target: str) -> dict:
        """A new running operation; refused while another one runs on the same resource or
        makes the same target."""
        with self.session() as db, db.begin():
            running = select(OperationRecord).where(OperationRecord.status == "running")
            for other in db.scalars(running.where(OperationRecord.owner == owner)):
                if other.resource == resource:
                    raise CatalogError(
                        "instance", f"{resource} is being saved already; wait for it", "conflict"
                    )
                if other.target == target:
                    raise CatalogError("name", f"{target} is being saved already", "conflict")
            record = OperationRecord(
                id=uuid.uuid4().hex, kind=kind, owner=owner, resource=resource, target=target
            )
            db.add(record)
            db.flush()
            return record.to_json()

    def progress_operation(self, id: str, phase: str, done: int, total: int) -> None:
        with self.session() as db, db.begin():
            record = db.get(OperationRecord, id)
            if record is not None and record.status == "running":
                record.phase, record.done_bytes, record.total_bytes = phase, done, total
                record.updated = utcnow()

    def fail_operation(self, id: str, reason: str) -> None:
        with self.session() as db, db.begin():
            record = db.get(OperationRecord, id)
            if record is not None and record.status == "running":
                record.status, record.reason, record.updated = "failed", reason, utcnow()

    def finish_snapshot(self, id: str, image: core.Image) -> None:
        """The saved image enters the catalog as the operation succeeds: both or neither."""
        with self.session() as db, db.begin():
            if db.get(ImageRecord, image.name) is not None:
                raise CatalogError("name", f"image {image.name} already exists", "exists")
            db.add(
                ImageRecord(
                    name=image.name,
                    display_name=image.display_name,
                    description=image.description,
                    accelerator_types=list(image.accelerator_types),
                    visibility=image.visibility,
                    owner=image.owner,
                    digest=image.digest,
                    base=image.base,
                )
            )
            record = db.get(OperationRecord, id)
            record.status, record.phase, record.updated = "succeeded", "done", utcnow()
            record.done_bytes = record.total_bytes

    def operation(self, id: str) -> dict | None:
        with self.session() as db:
            record = db.get(OperationRecord, id)
            return record.to_json() if record is not None else None

    def operations(self, owner: str | None = None, limit: int = 100) -> list[dict]:
        """The newest first; one owner's, or everyone's."""
        query = select(OperationRecord).order_by(OperationRecord.created.desc()).limit(limit)
        if owner is not None:
            query = query.where(OperationRecord.owner == owner)
        with self.session() as db:
            return [record.to_json() for record in db.scalars(query)]

    def running_operations(self) -> dict[str, dict]:
        """What runs now, by resource (an instance shows that it is being saved)."""
        query = select(OperationRecord).where(OperationRecord.status == "running")
        with self.session() as db:
            return {record.resource: record.to_json() for record in db.scalars(query)}

    def cut_off_operations(self) -> list[dict]:
        """Mark failed every operation a stopped service left running (at its next start:
        only one service runs them), and return them for their owners' audit and clean-up."""
        with self.session() as db, db.begin():
            query = select(OperationRecord).where(OperationRecord.status == "running")
            records = list(db.scalars(query))
            for record in records:
                record.status, record.reason, record.updated = "failed", CUT_OFF, utcnow()
            return [record.to_json() for record in records]
