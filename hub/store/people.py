"""The store's key pairs and workspaces (a mixin of `Store`, which gives `session`)."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from atelier.hub.store.lookup import CatalogError, get_named
from atelier.hub.store.records import InstanceRecord, KeyPairRecord, WorkspaceRecord, utcnow
from atelier.spawner import core


class PeopleQueries:
    def keypairs(self, owner: str) -> list[dict]:
        with self.session() as db:
            query = select(KeyPairRecord).where(KeyPairRecord.owner == owner)
            return [row.to_json() for row in db.scalars(query.order_by(KeyPairRecord.created))]

    def add_keypair(
        self, owner: str, name: str, public_key: str, fingerprint: str, algorithm: str
    ) -> dict:
        with self.session() as db, db.begin():
            duplicate = select(KeyPairRecord).where(
                KeyPairRecord.owner == owner, KeyPairRecord.fingerprint == fingerprint
            )
            if db.scalars(duplicate).first() is not None:
                raise CatalogError(
                    "public_key", f"you registered this key already ({fingerprint})", "exists"
                )
            record = KeyPairRecord(
                id=secrets.token_hex(8),
                owner=owner,
                name=name,
                public_key=public_key,
                fingerprint=fingerprint,
                algorithm=algorithm,
                created=utcnow(),
            )
            db.add(record)
            try:  # the unique constraint decides, so two requests at once cannot both win
                db.flush()
            except IntegrityError:
                raise CatalogError(
                    "name", f"a key pair named {name} already exists", "exists"
                ) from None
            return record.to_json()

    def delete_keypair(self, owner: str, key_id: str) -> bool:
        with self.session() as db, db.begin():
            record = db.get(KeyPairRecord, key_id)
            if record is None or record.owner != owner:
                return False
            db.delete(record)
            instances = select(InstanceRecord).where(InstanceRecord.owner == owner)
            for instance in db.scalars(instances):
                if key_id in (instance.ssh_keypairs or ()):
                    instance.ssh_keypairs = [k for k in instance.ssh_keypairs if k != key_id]
            return True

    def keypair_owner(self, fingerprint: str) -> str | None:
        """Who registered a key (any one of them, if several did)."""
        with self.session() as db:
            query = select(KeyPairRecord.owner).where(KeyPairRecord.fingerprint == fingerprint)
            return db.scalars(query).first()

    def keypair_id(self, owner: str, fingerprint: str) -> str | None:
        """Which of the owner's key pairs has this fingerprint."""
        with self.session() as db:
            query = select(KeyPairRecord.id).where(
                KeyPairRecord.owner == owner, KeyPairRecord.fingerprint == fingerprint
            )
            return db.scalars(query).first()

    def workspaces(self) -> list[dict]:
        with self.session() as db:
            rows = db.scalars(select(WorkspaceRecord).order_by(WorkspaceRecord.name))
            return [row.to_json() for row in rows]

    def workspace_names(self) -> set[str]:
        return {w["name"] for w in self.workspaces()}

    def add_workspace(self, name: str, max_instances: int) -> dict:
        if not core.WORKSPACE_NAME.match(name):
            raise CatalogError("name", "must be 1 to 64 of a-z, 0-9 and '-', starting alphanumeric")
        with self.session() as db, db.begin():
            if db.get(WorkspaceRecord, name) is not None:
                raise CatalogError("name", f"workspace {name} already exists", "exists")
            record = WorkspaceRecord(name=name, max_instances=max_instances, created=utcnow())
            db.add(record)
            return record.to_json()

    def update_workspace(self, name: str, max_instances: int) -> dict:
        with self.session() as db, db.begin():
            record = get_named(db, WorkspaceRecord, name, "workspace")
            record.max_instances = max_instances
            return record.to_json()

    def delete_workspace(self, name: str) -> None:
        with self.session() as db, db.begin():
            record = get_named(db, WorkspaceRecord, name, "workspace")
            if self.workspace_usage(name):
                raise CatalogError(
                    "name", f"workspace {name} still has instances; delete them first", "conflict"
                )
            if any(image.workspace == name for image in self.images()):
                raise CatalogError("name", f"workspace {name} still has shared images", "conflict")
            db.delete(record)
