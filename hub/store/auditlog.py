"""The store's audit log: events recorded through the one builder, read by filter, expired
(a mixin of `Store`, which gives `session`)."""

from __future__ import annotations

import functools
from datetime import datetime

from sqlalchemy import delete, func, select

from atelier.hub.store.lookup import CatalogError
from atelier.hub.store.records import AuditEvent
from atelier.spawner.core import audit


class AuditLog:
    def record(self, **event) -> None:
        """One audit event, whatever text a refusal quotes: PostgreSQL stores no NUL, so it
        is kept as the four characters \\x00."""
        event = {
            k: v.replace("\x00", "\\x00") if isinstance(v, str) else v for k, v in event.items()
        }
        with self.session() as db, db.begin():
            db.add(AuditEvent(**event))

    def audited_catalog_change(
        self, change, *, actor: str, source_ip: str, action: audit.Action, name: str
    ):
        """Apply a catalog change and audit it, refused or done: the API and the CLI both
        change the catalog through here, so neither door goes unaudited."""
        event = functools.partial(
            audit.event, action, actor=actor, source_ip=source_ip, resource=name
        )
        try:
            result = change()
        except CatalogError as error:
            self.record(**event(result="failure", reason=str(error)))
            raise
        self.record(**event(result="success"))
        return result

    def audit(
        self,
        *,
        visible_to: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
        **filters: str,
    ) -> tuple[int, list[dict]]:
        """Events, newest first; `visible_to` limits them to one user's own (as actor or owner)."""
        query = select(AuditEvent)
        if visible_to is not None:
            query = query.where((AuditEvent.actor == visible_to) | (AuditEvent.owner == visible_to))
        for key, value in filters.items():
            query = query.where(getattr(AuditEvent, key) == value)
        if since is not None:
            query = query.where(AuditEvent.time >= since)
        if until is not None:
            query = query.where(AuditEvent.time < until)
        with self.session() as db:
            total = db.scalar(select(func.count()).select_from(query.subquery()))
            page = query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
            return total, [event.to_json() for event in db.scalars(page)]

    def expire_audit(self, older_than: datetime) -> int:
        with self.session() as db, db.begin():
            return db.execute(delete(AuditEvent).where(AuditEvent.time < older_than)).rowcount
