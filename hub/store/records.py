"""The store's tables (SQLAlchemy) and their migrations (Alembic, in migrations/ beside it)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from atelier.hub import ssh
from atelier.spawner import core
from atelier.spawner.core.snapshots import percent

MIGRATIONS = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite forgets the time zone of what it stores; every time here is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class ImageRecord(Base):
    __tablename__ = "images"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    description: Mapped[str] = mapped_column(String(2000), default="")
    status: Mapped[str] = mapped_column(String(16), default="active")
    successor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    accelerator_types: Mapped[list] = mapped_column(JSON, default=list)
    visibility: Mapped[str] = mapped_column(String(16), default="public")
    workspace: Mapped[str | None] = mapped_column(String(64), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    digest: Mapped[str | None] = mapped_column(String(255), nullable=True)
    base: Mapped[str | None] = mapped_column(String(255), nullable=True)  # a snapshot's

    def to_image(self) -> core.Image:
        return core.Image(
            self.name,
            self.display_name,
            self.description,
            self.status,
            self.successor,
            tuple(self.accelerator_types or ()),
            self.visibility,
            self.workspace,
            self.owner,
            self.digest,
            self.base,
        )


class SpecRecord(Base):
    __tablename__ = "specs"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)

    def to_spec(self) -> core.Spec:
        return core.Spec(self.name, self.display_name, self.disabled)


class InstanceRecord(Base):
    __tablename__ = "instances"
    owner: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    workspace: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    ssh_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    ssh_keypairs: Mapped[list] = mapped_column(JSON, default=list)
    ssh_allowed_cidrs: Mapped[list] = mapped_column(JSON, default=list)
    failure_reason: Mapped[str | None] = mapped_column(String(2000), nullable=True)

    def ssh_access(self) -> ssh.Access:
        return ssh.Access(
            self.ssh_enabled, tuple(self.ssh_keypairs or ()), tuple(self.ssh_allowed_cidrs or ())
        )


class VolumeRecord(Base):
    """An instance's work volume: its size is the store's word, the backend realises it."""

    __tablename__ = "volumes"
    owner: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    size_gb: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # False while only reserved: a start may still make it, as there is nothing to lose yet
    made: Mapped[bool] = mapped_column(Boolean, default=False)


class KeyPairRecord(Base):
    """A user's SSH public key (the private key is never stored)."""

    __tablename__ = "keypairs"
    __table_args__ = (UniqueConstraint("owner", "name", name="uq_keypairs_owner_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(String(4096))
    fingerprint: Mapped[str] = mapped_column(String(128))
    algorithm: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "public_key": self.public_key,
            "fingerprint": self.fingerprint,
            "algorithm": self.algorithm,
            "created": as_utc(self.created).isoformat(),
        }


class AccountRecord(Base):
    """A system account Atelier made for a hub user; once retired (the user was deleted) it
    belongs to no one and its name is never given again."""

    __tablename__ = "accounts"
    account: Mapped[str] = mapped_column(String(32), primary_key=True)
    hub_user: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    claimed: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    retired: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WorkspaceRecord(Base):
    """A workspace: a JupyterHub group (its members) plus its quota."""

    __tablename__ = "workspaces"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    max_instances: Mapped[int] = mapped_column(Integer, default=10)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "max_instances": self.max_instances,
            "created": as_utc(self.created).isoformat(),
        }


class OperationRecord(Base):
    """A long action a caller follows (saving an image): its phase, progress and result."""

    __tablename__ = "operations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # the audit action: saveImage
    owner: Mapped[str] = mapped_column(String(255), index=True)
    resource: Mapped[str] = mapped_column(String(512), index=True)  # what it acts on: alice/lab
    target: Mapped[str] = mapped_column(String(512))  # what it makes: alice/my-env
    status: Mapped[str] = mapped_column(String(16), default="running")
    phase: Mapped[str] = mapped_column(String(32), default="measuring")
    done_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "owner": self.owner,
            "resource": self.resource,
            "target": self.target,
            "status": self.status,
            "phase": self.phase,
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes,
            "percent": percent(self.done_bytes, self.total_bytes, self.status),
            "reason": self.reason,
            "created": as_utc(self.created).isoformat(),
            "updated": as_utc(self.updated).isoformat(),
        }


class JobRecord(Base):
    """A training job: what was asked (`plan`, core.JobPlan's JSON), where it is, and the
    backend's handle on what runs (`run`), so a restarted service picks it up."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("owner", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    reason: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    plan: Mapped[dict] = mapped_column(JSON)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # starts so far
    restarts: Mapped[int] = mapped_column(Integer, default=0)  # of them, after a failure
    checkpoint_step: Mapped[int | None] = mapped_column(Integer, nullable=True)  # newest saved
    devices: Mapped[list] = mapped_column(JSON, default=list)
    run: Mapped[dict] = mapped_column(JSON, default=dict)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_json(self) -> dict:
        moment = {  # fmt: skip
            key: None if value is None else as_utc(value).isoformat()
            for key, value in (
                ("created", self.created),
                ("started", self.started),
                ("ended", self.ended),
            )
        }
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            **self.plan,
            "world_size": self.plan["nodes"] * self.plan["processes_per_node"],
            "attempt": self.attempt,
            "restarts": self.restarts,
            "checkpoint_step": self.checkpoint_step,
            "devices": list(self.devices),
            **moment,
        }


class JobEventRecord(Base):
    """One line of a job's event list (queued, started, rank 3 exited 137, ...)."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(32), index=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    message: Mapped[str] = mapped_column(String(2000))

    def to_json(self) -> dict:
        return {"time": as_utc(self.time).isoformat(), "message": self.message}


class DeviceHoldRecord(Base):
    """Which instance or job holds an accelerator: the hub's spawners and the service's
    jobs allocate from this one table, so neither gives away what the other holds."""

    __tablename__ = "device_holds"
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    type: Mapped[str] = mapped_column(String(64), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str] = mapped_column(String(600), index=True)


class AuditEvent(Base):
    """Who did what to which resource, when, from where, with what result. Append-only."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255), index=True)
    source_ip: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64), index=True)
    resource_type: Mapped[str] = mapped_column(String(32))
    resource: Mapped[str] = mapped_column(String(512), index=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    result: Mapped[str] = mapped_column(String(16))  # success | failure
    reason: Mapped[str] = mapped_column(String(2000), default="")

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "time": as_utc(self.time).isoformat(),
            "actor": self.actor,
            "source_ip": self.source_ip,
            "action": self.action,
            "resource_type": self.resource_type,
            "resource": self.resource,
            "owner": self.owner,
            "result": self.result,
            "reason": self.reason,
        }


def alembic_config(connection=None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine) -> None:
    """Bring the database to the newest schema (Alembic migrations beside it)."""
    with engine.begin() as connection:
        alembic_command.upgrade(alembic_config(connection), "head")
