"""Atelier's store: the image catalog, specs, instance records and audit events (SQLAlchemy).

The catalog is seeded from atelier.yaml once; afterwards the admin owns it (CLI), and every
reader sees changes at once because each read is a fresh query.
"""

from __future__ import annotations

import contextlib
from datetime import datetime

from sqlalchemy import (
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from atelier.hub import ssh
from atelier.hub.store.auditlog import AuditLog
from atelier.hub.store.deployments import DeploymentQueries
from atelier.hub.store.jobs import JobQueries
from atelier.hub.store.lookup import CatalogError, get_named
from atelier.hub.store.operations import OperationQueries
from atelier.hub.store.people import PeopleQueries
from atelier.hub.store.records import (
    AccountRecord,
    ImageRecord,
    InstanceRecord,
    KeyPairRecord,
    SpecRecord,
    VolumeRecord,
    as_utc,
    migrate,
    utcnow,
)
from atelier.spawner import core
from atelier.spawner.core.snapshots import check_text_fields
from atelier.spawner.identity import account_candidates, system_account_exists

AUDIT_FILTERS = ("actor", "owner", "action", "resource_type", "resource")


IMAGE_FIELDS = (
    "display_name",
    "description",
    "status",
    "successor",
    "accelerator_types",
    "visibility",
    "workspace",
    "owner",
)
SPEC_FIELDS = ("display_name", "disabled")


class Store(PeopleQueries, OperationQueries, JobQueries, DeploymentQueries, AuditLog):
    def __init__(self, url: str):
        self.engine = create_engine(url)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        migrate(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    # catalog -----------------------------------------------------------------------------
    def seed(self, images: list[core.Image], specs: list[core.Spec]) -> None:
        """Fill an empty catalog (the first start) with the configured images and specs. Once
        there is a catalog, admins own it: an image they deleted does not come back at the next
        start or CLI command."""
        with self.session() as db, db.begin():
            if db.scalar(select(ImageRecord.name).limit(1)) or db.scalar(
                select(SpecRecord.name).limit(1)
            ):
                return
            db.add_all(_image_record(image) for image in images)
            db.add_all(SpecRecord(name=s.name, display_name=s.display_name) for s in specs)

    def images(self) -> list[core.Image]:
        with self.session() as db:
            return [
                r.to_image() for r in db.scalars(select(ImageRecord).order_by(ImageRecord.name))
            ]

    def specs(self) -> list[core.Spec]:
        with self.session() as db:
            return [r.to_spec() for r in db.scalars(select(SpecRecord).order_by(SpecRecord.name))]

    def catalog(
        self, accelerators: dict[str, int], arch: str | None, realised: frozenset[str] | None
    ) -> core.Catalog:
        images = {i.name: i for i in self.images()}
        return core.Catalog(images, {s.name: s for s in self.specs()}, accelerators, arch, realised)

    def add_image(self, image: core.Image) -> core.Image:
        _check_image(image, self.images(), self.workspace_names())
        with self.session() as db, db.begin():
            if db.get(ImageRecord, image.name) is not None:
                raise CatalogError("name", f"image {image.name} already exists", "exists")
            db.add(_image_record(image))
        return image

    def update_image(self, name: str, **changes) -> core.Image:
        with self.session() as db, db.begin():
            record = get_named(db, ImageRecord, name, "image")
            updated = core.Image(**{**_image_dict(record.to_image()), **changes})
            _check_image(updated, self.images(), self.workspace_names())
            for key in IMAGE_FIELDS:
                setattr(record, key, getattr(updated, key))
            record.accelerator_types = list(updated.accelerator_types)
        return updated

    def record_digest(self, name: str, digest: str) -> None:
        """What a build made of a catalog image; an image not in the catalog is left alone."""
        with self.session() as db, db.begin():
            record = db.get(ImageRecord, name)
            if record is not None:
                record.digest = digest

    def delete_image(self, name: str) -> core.Image:
        """Remove it from the catalog; what it was (a snapshot's content is the backend's
        to remove)."""
        with self.session() as db, db.begin():
            record = get_named(db, ImageRecord, name, "image")
            db.delete(record)
            return record.to_image()

    def add_spec(self, spec: core.Spec) -> core.Spec:
        try:
            core.validate_spec_name(spec.name)
        except core.OptionsError as error:
            raise CatalogError("name", error.message) from None
        with self.session() as db, db.begin():
            if db.get(SpecRecord, spec.name) is not None:
                raise CatalogError("name", f"spec {spec.name} already exists", "exists")
            db.add(
                SpecRecord(name=spec.name, display_name=spec.display_name, disabled=spec.disabled)
            )
        return spec

    def update_spec(self, name: str, **changes) -> core.Spec:
        with self.session() as db, db.begin():
            record = get_named(db, SpecRecord, name, "spec")
            for key, value in changes.items():
                setattr(record, key, value)
            return record.to_spec()

    def delete_spec(self, name: str) -> None:
        with self.session() as db, db.begin():
            db.delete(get_named(db, SpecRecord, name, "spec"))

    # instances ---------------------------------------------------------------------------
    def instance_created(self, owner: str, name: str) -> datetime:
        """When the instance was first defined, recording it now if it is new."""
        with self.session() as db, db.begin():
            record = db.get(InstanceRecord, (owner, name))
            if record is None:
                record = InstanceRecord(owner=owner, name=name, created=utcnow())
                db.add(record)
            return as_utc(record.created)

    def instance_records(self, owner: str) -> dict[str, tuple[datetime, str | None, str | None]]:
        """Each instance of an owner: (created, workspace, failure reason)."""
        return self.all_instance_records(owner).get(owner, {})

    def all_instance_records(
        self, owner: str | None = None
    ) -> dict[str, dict[str, tuple[datetime, str | None, str | None]]]:
        """Instance records of every owner (or one), from one query:
        {owner: {name: (created, workspace, failure reason)}}."""
        query = select(
            InstanceRecord.owner,
            InstanceRecord.name,
            InstanceRecord.created,
            InstanceRecord.workspace,
            InstanceRecord.failure_reason,
        )
        if owner is not None:
            query = query.where(InstanceRecord.owner == owner)
        records: dict[str, dict] = {}
        with self.session() as db:
            for row_owner, name, created, workspace, failure in db.execute(query):
                records.setdefault(row_owner, {})[name] = (as_utc(created), workspace, failure)
        return records

    def failure(self, owner: str, name: str) -> str | None:
        """Why the instance failed: its last start failed or its process died; None if not."""
        with self.session() as db:
            record = db.get(InstanceRecord, (owner, name))
            return record.failure_reason if record else None

    def set_failure(self, owner: str, name: str, reason: str | None) -> None:
        """Record why the instance failed (kept across hub restarts); None clears it."""
        if reason is not None:
            self.instance_created(owner, name)
        with self.session() as db, db.begin():
            record = db.get(InstanceRecord, (owner, name))
            if record is not None:
                record.failure_reason = reason[:2000] if reason else None

    def place_instance(self, owner: str, name: str, workspace: str | None) -> None:
        self.instance_created(owner, name)
        with self.session() as db, db.begin():
            db.get(InstanceRecord, (owner, name)).workspace = workspace

    def ssh_access(self, owner: str, name: str) -> ssh.Access | None:
        """An instance's SSH settings; None when there is no such instance."""
        with self.session() as db:
            record = db.get(InstanceRecord, (owner, name))
            return record.ssh_access() if record else None

    def set_ssh_access(self, owner: str, name: str, access: ssh.Access) -> None:
        self.instance_created(owner, name)
        with self.session() as db, db.begin():
            record = db.get(InstanceRecord, (owner, name))
            record.ssh_enabled = access.enabled
            record.ssh_keypairs = list(access.keypairs)
            record.ssh_allowed_cidrs = list(access.allowed_cidrs)

    def workspace_usage(self, workspace: str) -> int:
        with self.session() as db:
            query = select(func.count()).where(InstanceRecord.workspace == workspace)
            return db.scalar(query.select_from(InstanceRecord))

    # volumes -------------------------------------------------------------------------------
    def volume_size(self, owner: str, name: str) -> int | None:
        with self.session() as db:
            record = db.get(VolumeRecord, (owner, name))
            return None if record is None else record.size_gb

    def reserve_volume(
        self, owner: str, name: str, size_gb: int, limits: core.Limits
    ) -> int | None:
        """Hold `size_gb` of the owner's quota for a volume about to be made, checked and
        recorded in one transaction, so concurrent starts cannot all pass one stale total.
        Returns the size to make it at: reserved now, or by an earlier start that never made
        it (the hub died, or giving it back failed); None when it is made already."""
        with self._quota_transaction(owner) as db:
            record = db.get(VolumeRecord, (owner, name))
            if record is not None:
                return None if record.made else record.size_gb
            core.check_volume_quota(_volume_total(db, owner) + size_gb, limits, "volume_gb")
            db.add(VolumeRecord(owner=owner, name=name, size_gb=size_gb, made=False))
            return size_gb

    def volume_made(self, owner: str, name: str) -> None:
        """The reserved volume exists now: from here on, losing it is refused, never remade."""
        with self.session() as db, db.begin():
            db.get(VolumeRecord, (owner, name)).made = True

    def release_volume(self, owner: str, name: str) -> None:
        """Give back the quota of a reservation never made (a made volume's record stays)."""
        with self.session() as db, db.begin():
            record = db.get(VolumeRecord, (owner, name))
            if record is not None and not record.made:
                db.delete(record)

    def expand_volume(
        self, owner: str, name: str, add_gb, limits: core.Limits, grow
    ) -> tuple[int, int]:
        """Check and record a volume's growth by `add_gb` in one transaction, calling
        `grow(new_size)` inside it: a refusal or a failed growth records nothing. Returns
        the sizes it had and has."""
        with self._quota_transaction(owner) as db:
            record = db.get(VolumeRecord, (owner, name))
            if record is None or not record.made:
                raise core.OptionsError(
                    "add_gb", "the volume is made when the instance first starts"
                )
            current = record.size_gb
            record.size_gb = core.check_expand(current, add_gb, _volume_total(db, owner), limits)
            grow(record.size_gb)
            return current, record.size_gb

    def volume_in_use(self, owner: str, instance: str) -> bool:
        """Whether a job or a deployment runs in the instance's work volume: it stays
        attached when the instance stops."""
        return bool(
            self.jobs_on_volume(owner, instance) or self.deployments_on_volume(owner, instance)
        )

    @contextlib.contextmanager
    def _quota_transaction(self, owner: str):
        """A transaction that decides on the owner's volume quota. It first writes their
        account row, which serialises it with every other one of theirs in any process
        (SQLite's write lock, PostgreSQL's row lock), so the total it reads stays true."""
        self.claim_account(owner)
        with self.session() as db, db.begin():
            account = update(AccountRecord).where(AccountRecord.hub_user == owner)
            db.execute(account.values(hub_user=owner))
            yield db

    def forget_volume(self, owner: str, name: str) -> None:
        with self.session() as db, db.begin():
            record = db.get(VolumeRecord, (owner, name))
            if record is not None:
                db.delete(record)

    def volume_total_gb(self, owner: str) -> int:
        with self.session() as db:
            return _volume_total(db, owner)

    # system accounts -----------------------------------------------------------------------
    def account(self, hub_user: str) -> str | None:
        with self.session() as db:
            query = select(AccountRecord.account).where(AccountRecord.hub_user == hub_user)
            return db.scalar(query)

    def claim_account(self, hub_user: str) -> str:
        """The hub user's system account name; on first use, the first candidate that no
        one has had, in this store or on the system (so two users never share a uid)."""
        for _ in range(3):  # another process may claim at the same moment
            if (account := self.account(hub_user)) is not None:
                return account
            with self.session() as db:
                account = next(
                    name
                    for name in account_candidates(hub_user)
                    if db.get(AccountRecord, name) is None and not system_account_exists(name)
                )
                db.add(AccountRecord(account=account, hub_user=hub_user, claimed=utcnow()))
                try:
                    db.commit()
                    return account
                except IntegrityError:
                    db.rollback()
        raise RuntimeError(f"could not claim a system account for {hub_user!r}")

    def forget_user(self, hub_user: str) -> str | None:
        """A deleted hub user leaves nothing behind: key pairs, instance records (their SSH
        settings with them), volume records, deployments, jobs; their account is retired.
        Returns it."""
        self.forget_deployments_of(hub_user)
        self.forget_jobs_of(hub_user)
        with self.session() as db, db.begin():
            for model in (KeyPairRecord, InstanceRecord, VolumeRecord):
                db.execute(delete(model).where(model.owner == hub_user))
            record = db.scalars(
                select(AccountRecord).where(AccountRecord.hub_user == hub_user)
            ).first()
            if record is None:
                return None
            record.hub_user, record.retired = None, utcnow()
            return record.account

    def forget_instance(self, owner: str, name: str) -> None:
        with self.session() as db, db.begin():
            record = db.get(InstanceRecord, (owner, name))
            if record is not None:
                db.delete(record)


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _volume_total(db: Session, owner: str) -> int:
    query = select(func.coalesce(func.sum(VolumeRecord.size_gb), 0))
    return db.scalar(query.where(VolumeRecord.owner == owner))


def _image_dict(image: core.Image) -> dict:
    """An image's fields; its digest is recorded by builds (`record_digest`), never set by
    a request (not in IMAGE_FIELDS)."""
    fields = {key: getattr(image, key) for key in IMAGE_FIELDS}
    return {"name": image.name, **fields, "digest": image.digest, "base": image.base}


def _image_record(image: core.Image) -> ImageRecord:
    return ImageRecord(**{**_image_dict(image), "accelerator_types": list(image.accelerator_types)})


def _check_image(image: core.Image, existing: list[core.Image], workspaces: set[str]) -> None:
    try:
        if image.base is None:  # a snapshot's name is its owner's and theirs (plan_snapshot)
            core.validate_image_name(image.name)
        check_text_fields({"display_name": image.display_name, "description": image.description})
    except core.OptionsError as error:
        raise CatalogError(error.field, error.message) from None
    if image.status not in core.IMAGE_STATUSES:
        raise CatalogError("status", f"must be one of {', '.join(core.IMAGE_STATUSES)}")
    if image.visibility not in core.IMAGE_VISIBILITIES:
        raise CatalogError("visibility", f"must be one of {', '.join(core.IMAGE_VISIBILITIES)}")
    if (image.visibility == "shared") != (image.workspace is not None):
        raise CatalogError("workspace", "a shared image names its workspace; others none")
    if (image.visibility == "private" or image.base is not None) != (image.owner is not None):
        raise CatalogError("owner", "a private image or a snapshot names its owner; others none")
    if image.workspace is not None and image.workspace not in workspaces:
        raise CatalogError("workspace", f"no workspace named {image.workspace!r}")
    names = {other.name for other in existing}
    if image.successor is not None and (
        image.successor == image.name or image.successor not in names
    ):
        raise CatalogError("successor", f"{image.successor!r} is not another image in the catalog")
