"""The Atelier service's REST API v1: the image catalog, specs and the audit log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from urllib.parse import quote

from atelier.hub.service.base import APIError, BaseHandler, Caller, not_found
from atelier.hub.service.routes import NAME, visible_images
from atelier.hub.service.snapshots import SAVE_SCOPE
from atelier.hub.store.store import IMAGE_FIELDS, SPEC_FIELDS, CatalogError
from atelier.spawner import core
from atelier.spawner.core.audit import Action


class CatalogBase(BaseHandler):
    def catalog_images(self) -> list[core.Image]:
        return self.recent.get("images", self.context.store.images)

    async def check_owner(self, body: dict) -> None:
        """A private image belongs to a hub user that exists."""
        owner = body.get("owner")
        if owner is not None and await self.hub.user(owner) is None:
            raise APIError(400, "invalid", f"no hub user named {owner!r}", "owner")

    def catalog_change(self, caller: Caller, action: Action, name: str, change):
        """Apply a catalog change, audit it, and map refusals to 400/404."""
        try:
            return self.context.store.audited_catalog_change(
                change,
                actor=caller.name,
                source_ip=caller.source_ip,
                action=action,
                name=name,
            )
        except CatalogError as error:
            raise APIError.refusal(error, 404 if error.code == "not_found" else 400) from None
        except (TypeError, ValueError) as error:
            raise APIError(400, "invalid", str(error)) from None


class ImagesHandler(CatalogBase):
    async def get(self):
        caller = self.require("custom:atelier:images:read")
        workspaces = await self.workspaces_of(caller)
        images = visible_images(self.catalog_images(), caller, workspaces)
        if self.get_argument("offered", None):  # what can start here now, as the form offers
            offered = {image.name for image in self.context.catalog().offered_images()}
            images = [image for image in images if image.name in offered]
        self.reply({"images": [core.image_json(i) for i in images]})

    async def post(self):
        caller = self.require("custom:atelier:images:admin")
        body = self.body(("name", *IMAGE_FIELDS), required=("name",))
        body["accelerator_types"] = tuple(body.get("accelerator_types") or ())
        await self.check_owner(body)
        image = self.catalog_change(
            caller,
            Action.CREATE_IMAGE,
            body["name"],
            lambda: self.context.store.add_image(core.Image(**body)),
        )
        self.reply(core.image_json(image), 201)


SNAPSHOT_OWNER_FIELDS = ("display_name", "description", "visibility", "workspace")


class ImageHandler(CatalogBase):
    """One image; a snapshot's owner may describe, share (with one of their workspaces) and
    delete it with the save scope, and only an admin may publish it."""

    async def owned_snapshot(self, name: str) -> tuple[Caller, core.Image | None]:
        """The caller, and the snapshot of theirs named `name` when they act as its owner
        (None: they act as an admin)."""
        caller = self.caller
        image = {i.name: i for i in self.catalog_images()}.get(name)
        if caller.may("custom:atelier:images:admin") or "/" not in name:
            return self.require("custom:atelier:images:admin"), None
        if image is None or image.owner != caller.name:  # another's is not there for them
            raise not_found(f"image {name!r}")
        return self.require(SAVE_SCOPE), image

    async def get(self, name):
        caller = self.require("custom:atelier:images:read")
        workspaces = await self.workspaces_of(caller)
        images = visible_images(self.catalog_images(), caller, workspaces)
        image = {i.name: i for i in images}.get(name)
        if image is None:
            raise not_found(f"image {name!r}")
        self.reply(core.image_json(image))

    async def patch(self, name):
        caller, snapshot = await self.owned_snapshot(name)
        body = self.body(IMAGE_FIELDS if snapshot is None else SNAPSHOT_OWNER_FIELDS)
        if snapshot is not None:
            await self.check_sharing(caller, body)
        if "accelerator_types" in body:
            body["accelerator_types"] = tuple(body["accelerator_types"] or ())
        await self.check_owner(body)
        image = self.catalog_change(
            caller, Action.UPDATE_IMAGE, name, lambda: self.context.store.update_image(name, **body)
        )
        self.reply(core.image_json(image))

    async def check_sharing(self, caller: Caller, body: dict) -> None:
        """An owner keeps a snapshot private or shares it with a workspace they are in."""
        if body.get("visibility", "private") not in ("private", "shared"):
            raise APIError(403, "forbidden", "only an admin publishes an image", "visibility")
        workspace = body.get("workspace")
        if workspace is not None and workspace not in await self.workspaces_of(caller):
            raise APIError(404, "not_found", f"no workspace {workspace!r} of yours", "workspace")

    async def delete(self, name):
        caller, _ = await self.owned_snapshot(name)
        image = self.catalog_change(
            caller, Action.DELETE_IMAGE, name, lambda: self.context.store.delete_image(name)
        )
        if image.base is not None:  # a snapshot: its content goes with it
            await asyncio.to_thread(self.context.backend.delete_saved_image, image)
        self.set_status(204)
        self.finish()


class SpecsHandler(CatalogBase):
    def get(self):
        self.require("custom:atelier:images:read")
        specs = self.context.store.specs()
        if self.get_argument("available", None):  # enabled, with the devices this hub has
            catalog = self.context.catalog()
            specs = [s for s in specs if not s.disabled and catalog.can_satisfy(s)]
        self.reply({"specs": [core.spec_json(s) for s in specs]})

    def post(self):
        caller = self.require("custom:atelier:images:admin")
        body = self.body(("name", *SPEC_FIELDS), required=("name",))
        spec = self.catalog_change(
            caller,
            Action.CREATE_SPEC,
            body["name"],
            lambda: self.context.store.add_spec(core.Spec(**body)),
        )
        self.reply(core.spec_json(spec), 201)


class SpecHandler(CatalogBase):
    def get(self, name):
        self.require("custom:atelier:images:read")
        spec = {s.name: s for s in self.context.store.specs()}.get(name)
        if spec is None:
            raise not_found(f"spec {name!r}")
        self.reply(core.spec_json(spec))

    def patch(self, name):
        caller = self.require("custom:atelier:images:admin")
        body = self.body(SPEC_FIELDS)
        spec = self.catalog_change(
            caller, Action.UPDATE_SPEC, name, lambda: self.context.store.update_spec(name, **body)
        )
        self.reply(core.spec_json(spec))

    def delete(self, name):
        caller = self.require("custom:atelier:images:admin")
        self.catalog_change(
            caller, Action.DELETE_SPEC, name, lambda: self.context.store.delete_spec(name)
        )
        self.set_status(204)
        self.finish()


class AuditHandler(BaseHandler):
    async def get(self):
        caller = self.require("custom:atelier:audit:read")
        filters = {
            "actor": self.get_argument("user", None),
            "resource_type": self.get_argument("resource_type", None),
            "resource": self.get_argument("resource", None),
            "action": self.get_argument("action", None),
        }
        since, visible_to = self.time_argument("since"), None
        if not caller.acts_for_everyone:  # their own events, since their user was made
            created = await self.created(caller.name)
            visible_to, since = caller.name, max(since or created, created)
        total, events = self.context.store.audit(
            visible_to=visible_to,
            since=since,
            until=self.time_argument("until"),
            limit=self.int_argument("limit", 100, 1, 1000),
            offset=self.int_argument("offset", 0, 0, 10**9),
            **{key: value for key, value in filters.items() if value is not None},
        )
        self.reply({"total": total, "events": events})

    async def created(self, user: str) -> datetime:
        """When the caller's hub user was made: a user of that name before, since deleted,
        left events that are for admins alone. Read afresh, as a copy may predate the
        deletion."""
        code, model = await self.hub.request("GET", f"/users/{quote(user)}")
        if code != 200:
            raise APIError(401, "unauthenticated", f"there is no user {user} any more")
        return datetime.fromisoformat(model["created"]).astimezone(UTC)

    def time_argument(self, name: str) -> datetime | None:
        value = self.get_argument(name, None)
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            # in UTC, as events are stored: the store compares times without their offset
            return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
        except (ValueError, OverflowError):
            raise APIError(400, "invalid", "must be an ISO 8601 time", name) from None


ROUTES = [
    ("/images", ImagesHandler),
    (r"/images/([^/]+(?:/[^/]+)?)", ImageHandler),  # a snapshot's: <owner>/<name>
    ("/specs", SpecsHandler),
    (f"/specs/{NAME}", SpecHandler),
    ("/audit", AuditHandler),
]
