"""What every query module of the store shares: the refusal of a catalog, workspace or key
pair change, and the lookup by name that refuses a missing one."""

from __future__ import annotations

from sqlalchemy.orm import Session

from atelier.spawner import core


class CatalogError(core.OptionsError):
    """A refused catalog, workspace or key pair change; `field` names the bad input."""


def get_named(db: Session, model: type, name: str, what: str):
    record = db.get(model, name)
    if record is None:
        raise CatalogError("name", f"no {what} named {name!r}", "not_found")
    return record
