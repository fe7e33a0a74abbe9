"""The store's deployments: each one's versions, replicas, events, app keys and request
metrics, and the routing table the router reads."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    String,
    UniqueConstraint,
    delete,
    func,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from atelier.hub.store.lookup import CatalogError
from atelier.hub.store.records import Base, as_utc, utcnow
from atelier.spawner import core
from atelier.spawner.core import deployments

LIVE = ("starting", "ready", "draining")
DEPLOYMENT_FIELDS = ("status", "reason", "version", "serving", "plan", "versions", "stopped")
VERSIONS_KEPT = 20  # a deployment's newest versions, with their plans (rollback, history)


class DeploymentRecord(Base):
    """A deployment: the version asked for (`version`, `plan`), the one serving, and the
    newest versions' plans (`versions`: {"version", "plan", "created", "failed"?})."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("owner", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="deploying")
    reason: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    serving: Mapped[int | None] = mapped_column(Integer, nullable=True)
    plan: Mapped[dict] = mapped_column(JSON)
    versions: Mapped[list] = mapped_column(JSON, default=list)
    stopped: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "version": self.version,
            "serving_version": self.serving,
            **self.plan,
            "versions": [
                {k: v for k, v in entry.items() if k != "plan"} | entry["plan"]
                for entry in self.versions
            ],
            "created": as_utc(self.created).isoformat(),
        }


class ReplicaRecord(Base):
    """One replica: its number in the deployment (never reused), version, phase (starting,
    ready, draining, ended) and the endpoint the backend gave it (root's to reach only)."""

    __tablename__ = "deployment_replicas"
    __table_args__ = (UniqueConstraint("deployment", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(32), index=True)
    number: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16), default="starting")
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    endpoint: Mapped[str] = mapped_column(String(1024), default="")
    reason: Mapped[str | None] = mapped_column(String(2000), nullable=True)

    def to_json(self) -> dict:
        return {
            "number": self.number,
            "version": self.version,
            "phase": self.phase,
            "since": as_utc(self.since).isoformat(),
            "reason": self.reason,
        }


class DeploymentEventRecord(Base):
    __tablename__ = "deployment_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(32), index=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    message: Mapped[str] = mapped_column(String(2000))

    def to_json(self) -> dict:
        return {"time": as_utc(self.time).isoformat(), "message": self.message}


class AppKeyRecord(Base):
    """An app key of one deployment: its prefix (shown in lists) and its digest (the key
    itself is shown once, when made, and never kept)."""

    __tablename__ = "app_keys"
    prefix: Mapped[str] = mapped_column(String(16), primary_key=True)
    deployment: Mapped[str] = mapped_column(String(32), index=True)
    digest: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_json(self) -> dict:
        return {"prefix": self.prefix, "created": as_utc(self.created).isoformat()}


class DeploymentMetricsRecord(Base):
    """What the router counted for one deployment: requests, errors and a latency histogram
    (rollout.latency_bucket -> count)."""

    __tablename__ = "deployment_metrics"
    deployment: Mapped[str] = mapped_column(String(32), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    histogram: Mapped[dict] = mapped_column(JSON, default=dict)


class DeploymentQueries:
    def create_deployment(self, owner: str, name: str, plan: dict, limits: core.Limits) -> dict:
        """A new deployment at version 1; the per-user limit and the name are checked in the
        same transaction (one at a time per owner, as jobs are)."""
        with self._quota_transaction(owner) as db:
            count = select(func.count()).where(DeploymentRecord.owner == owner)
            deployments.check_deployment_count(db.scalar(count), limits)
            taken = select(DeploymentRecord.id).where(
                DeploymentRecord.owner == owner, DeploymentRecord.name == name
            )
            if db.scalar(taken) is not None:
                raise CatalogError("name", f"you have a deployment named {name} already", "exists")
            record = DeploymentRecord(
                id=uuid.uuid4().hex,
                owner=owner,
                name=name,
                plan=plan,
                versions=[_version(1, plan)],
            )
            db.add(record)
            db.add(DeploymentEventRecord(deployment=record.id, message="version 1 created"))
            db.flush()
            return record.to_json()

    def deployment(self, owner: str, name: str) -> dict | None:
        with self.session() as db:
            query = select(DeploymentRecord).where(
                DeploymentRecord.owner == owner, DeploymentRecord.name == name
            )
            record = db.scalar(query)
            return None if record is None else _with_private(record)

    def deployments(self, owner: str | None = None) -> list[dict]:
        """Newest first: one owner's, or everyone's."""
        with self.session() as db:
            query = select(DeploymentRecord).order_by(DeploymentRecord.created.desc())
            if owner is not None:
                query = query.where(DeploymentRecord.owner == owner)
            return [_with_private(record) for record in db.scalars(query)]

    def update_deployment(self, id: str, event: str | None = None, **fields) -> None:
        """Change a deployment, with the event that says why (one transaction)."""
        unknown = set(fields) - set(DEPLOYMENT_FIELDS)
        if unknown:
            raise ValueError(f"not deployment fields: {sorted(unknown)}")
        with self.session() as db, db.begin():
            record = db.get(DeploymentRecord, id)
            if record is None:
                return
            for key, value in fields.items():
                setattr(record, key, value)
            if event:
                db.add(DeploymentEventRecord(deployment=id, message=event[:2000]))

    def new_version(self, id: str, plan: dict, event: str) -> int:
        """Version max+1 with `plan`, asked for now (the rollout starts it)."""
        with self.session() as db, db.begin():
            record = db.get(DeploymentRecord, id)
            version = max(entry["version"] for entry in record.versions) + 1
            record.version, record.plan, record.stopped = version, plan, False
            record.status = "upgrading" if record.serving else "deploying"
            record.reason = None
            record.versions = [*record.versions, _version(version, plan)][-VERSIONS_KEPT:]
            db.add(DeploymentEventRecord(deployment=id, message=f"version {version}: {event}"))
            return version

    def now_serving(self, id: str, version: int) -> None:
        """Every request goes to `version` now: marked as a version that served (rollback
        goes back to such a one only)."""
        with self.session() as db, db.begin():
            record = db.get(DeploymentRecord, id)
            record.serving = version
            record.versions = [
                dict(e, served=True) if e["version"] == version else e for e in record.versions
            ]
            message = f"version {version} serves every request"
            db.add(DeploymentEventRecord(deployment=id, message=message))

    def version_failed(self, id: str, version: int, why: str) -> None:
        """The version never served: marked so, and the serving one asked for again."""
        with self.session() as db, db.begin():
            record = db.get(DeploymentRecord, id)
            entries = [
                dict(e, failed=why) if e["version"] == version else e for e in record.versions
            ]
            record.versions = entries
            serving = next((e for e in entries if e["version"] == record.serving), None)
            if serving is None:
                record.status, record.reason = "failed", f"version {version} failed: {why}"
            else:
                record.version, record.plan = serving["version"], serving["plan"]
                record.reason = (
                    f"version {version} failed, version {serving['version']} serves: {why}"
                )
            db.add(DeploymentEventRecord(deployment=id, message=record.reason[:2000]))

    def deployment_events(self, id: str) -> list[dict]:
        with self.session() as db:
            query = select(DeploymentEventRecord).where(DeploymentEventRecord.deployment == id)
            return [e.to_json() for e in db.scalars(query.order_by(DeploymentEventRecord.id))]

    def forget_deployments_of(self, owner: str) -> None:
        """A deleted user's deployments: gone from the store, so no replica is started again
        and none of their keys opens anything (the backend ends the replicas' processes)."""
        with self.session() as db:
            ids = list(
                db.scalars(select(DeploymentRecord.id).where(DeploymentRecord.owner == owner))
            )
        for id in ids:
            self.delete_deployment(id)

    def delete_deployment(self, id: str) -> None:
        with self.session() as db, db.begin():
            for table in (ReplicaRecord, DeploymentEventRecord, AppKeyRecord):
                db.execute(delete(table).where(table.deployment == id))
            db.execute(
                delete(DeploymentMetricsRecord).where(DeploymentMetricsRecord.deployment == id)
            )
            db.execute(delete(DeploymentRecord).where(DeploymentRecord.id == id))

    # replicas -------------------------------------------------------------------------------
    def add_replica(self, id: str, version: int) -> int | None:
        """A new replica of `version`, starting; its number (one more than any before). None
        when the deployment is stopped or gone meanwhile (its owner deleted, say)."""
        with self.session() as db, db.begin():
            deployment = db.get(DeploymentRecord, id)
            if deployment is None or deployment.stopped:
                return None
            numbers = select(func.max(ReplicaRecord.number)).where(ReplicaRecord.deployment == id)
            number = (db.scalar(numbers) or 0) + 1
            db.add(ReplicaRecord(deployment=id, number=number, version=version))
            return number

    def replicas(self, id: str, live: bool = True) -> list[dict]:
        """A deployment's replicas (the live ones, or all), each with its endpoint."""
        with self.session() as db:
            query = select(ReplicaRecord).where(ReplicaRecord.deployment == id)
            if live:
                query = query.where(ReplicaRecord.phase.in_(LIVE))
            records = db.scalars(query.order_by(ReplicaRecord.number))
            return [r.to_json() | {"endpoint": r.endpoint} for r in records]

    def set_replica(self, id: str, number: int, **fields) -> None:
        """Change a replica (`phase`, `endpoint`, `reason`); a new phase starts its `since`."""
        with self.session() as db, db.begin():
            query = select(ReplicaRecord).where(
                ReplicaRecord.deployment == id, ReplicaRecord.number == number
            )
            record = db.scalar(query)
            if "phase" in fields and fields["phase"] != record.phase:
                record.since = utcnow()
            for key, value in fields.items():
                setattr(record, key, value)

    def deployments_on_volume(self, owner: str, instance: str) -> int:
        """How many deployments have replicas running in an instance's work volume."""
        with self.session() as db:
            live = select(ReplicaRecord.deployment).where(ReplicaRecord.phase.in_(LIVE))
            query = select(DeploymentRecord).where(
                DeploymentRecord.owner == owner, DeploymentRecord.id.in_(live)
            )
            return sum(
                any(entry["plan"]["volume"] == instance for entry in record.versions)
                for record in db.scalars(query)
            )

    # app keys -------------------------------------------------------------------------------
    def create_app_key(self, id: str, prefix: str, digest: str, limits: core.Limits) -> dict:
        with self.session() as db, db.begin():
            count = select(func.count()).where(AppKeyRecord.deployment == id)
            deployments.check_key_count(db.scalar(count), limits)
            record = AppKeyRecord(prefix=prefix, deployment=id, digest=digest)
            db.add(record)
            db.flush()
            return record.to_json()

    def app_keys(self, id: str) -> list[dict]:
        with self.session() as db:
            query = select(AppKeyRecord).where(AppKeyRecord.deployment == id)
            return [r.to_json() for r in db.scalars(query.order_by(AppKeyRecord.created))]

    def revoke_app_key(self, id: str, prefix: str) -> bool:
        with self.session() as db, db.begin():
            query = delete(AppKeyRecord).where(
                AppKeyRecord.deployment == id, AppKeyRecord.prefix == prefix
            )
            return db.execute(query).rowcount > 0

    # the router -----------------------------------------------------------------------------
    def routing(self) -> tuple[dict[tuple[str, str], dict], dict[str, tuple[str, str]]]:
        """What the router needs, in one read: each deployment's id, timeout and the endpoints
        of its ready replicas of the serving version; each app key's deployment and digest."""
        with self.session() as db:
            routes = {
                (d.owner, d.name): {
                    "id": d.id,
                    "timeout": d.plan["timeout_seconds"],
                    "serving": d.serving,
                    "endpoints": [],
                }
                for d in db.scalars(select(DeploymentRecord))
            }
            by_id = {route["id"]: route for route in routes.values()}
            for replica in db.scalars(select(ReplicaRecord).where(ReplicaRecord.phase == "ready")):
                route = by_id.get(replica.deployment)
                if route is not None and replica.version == route["serving"] and replica.endpoint:
                    route["endpoints"].append(replica.endpoint)
            keys = {k.prefix: (k.deployment, k.digest) for k in db.scalars(select(AppKeyRecord))}
            return routes, keys

    def add_request_metrics(self, counts: dict[str, tuple[int, int, dict[int, int]]]) -> None:
        """Add what the router counted since it last did: id -> (requests, errors, histogram)."""
        with self.session() as db, db.begin():
            for id, (requests, errors, histogram) in counts.items():
                record = db.get(DeploymentMetricsRecord, id)
                if record is None:
                    if db.get(DeploymentRecord, id) is None:
                        continue  # deleted meanwhile
                    record = DeploymentMetricsRecord(
                        deployment=id, requests=0, errors=0, histogram={}
                    )
                    db.add(record)
                merged = dict(record.histogram)
                for bucket, count in histogram.items():
                    merged[str(bucket)] = merged.get(str(bucket), 0) + count
                record.requests += requests
                record.errors += errors
                record.histogram = merged

    def request_metrics(self, id: str) -> tuple[int, int, dict[int, int]]:
        with self.session() as db:
            record = db.get(DeploymentMetricsRecord, id)
            if record is None:
                return 0, 0, {}
            return record.requests, record.errors, {int(k): v for k, v in record.histogram.items()}


def _version(version: int, plan: dict) -> dict:
    return {"version": version, "plan": plan, "created": utcnow().isoformat()}


def _with_private(record: DeploymentRecord) -> dict:
    """What the service needs beside what the owner sees: the stop flag and the versions'
    plans (rollback)."""
    return record.to_json() | {"stopped": record.stopped, "history": list(record.versions)}
