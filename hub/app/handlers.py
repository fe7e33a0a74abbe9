"""JupyterHub's own server API and spawn page, with Atelier's checks before anything is stored.

The hub's `POST/PUT/PATCH /hub/api/users/{user}/servers/{name}` would save any options and
fail later in the spawner; these subclasses validate with the same core as the form first,
so a bad request answers 400 naming the field and the hub's state does not change.
"""

from __future__ import annotations

import asyncio
import json

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.handlers.pages import SpawnHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from atelier.hub.web.pages import create_form, options_from_form
from atelier.spawner import checks, core
from atelier.spawner.checks import Refused
from atelier.spawner.core import audit


def json_object(handler) -> dict:
    """The request's JSON body ({} when empty); JupyterHub's handlers answer 500 on a list."""
    body = handler.get_json_body()
    if body is not None and not isinstance(body, dict):
        raise web.HTTPError(400, "the body must be a JSON object")
    return body or {}


def form_text(form: dict[str, list[bytes]]) -> dict[str, list[str]]:
    """A submitted form's fields as text; bytes that are not UTF-8 are refused by field."""
    text = {}
    for field, values in form.items():
        try:
            text[field] = [value.decode() for value in values]
        except UnicodeDecodeError:
            raise core.OptionsError(field, "must be UTF-8 text") from None
    return text


class InstanceChecks:
    @property
    def context(self):
        return self.settings["atelier"]

    def write_error(self, status_code: int, **kwargs) -> None:
        """JupyterHub's JSON error with a refusal's code and field beside its text, so that
        clients (the Atelier service first) read the field rather than parse the message."""
        refused = kwargs.get("exc_info", (None, None))[1]
        if not (isinstance(self, APIHandler) and isinstance(refused, Refused)):
            return super().write_error(status_code, **kwargs)
        error = refused.error
        body = {"status": status_code, "message": str(error), "code": error.code}
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({**body, "field": error.field, "detail": error.message}))

    def actor(self) -> tuple[str, str]:
        """Who is asking and from where; the Atelier service speaks for the user it serves."""
        user = self.current_user
        if getattr(user, "kind", "user") == "service":
            if user.name == ATELIER_SERVICE and self.request.headers.get("X-Atelier-Actor"):
                return (
                    self.request.headers["X-Atelier-Actor"],
                    self.request.headers.get("X-Atelier-Source-IP", self.request.remote_ip),
                )
            return f"service:{user.name}", self.request.remote_ip
        return (user.name if user else ""), self.request.remote_ip

    def audit(
        self, action: audit.Action, owner: str, name: str, result: str, reason: str = ""
    ) -> None:
        actor, source_ip = self.actor()
        event = audit.event(
            action,
            actor=actor,
            source_ip=source_ip,
            resource=f"{owner}/{name}",
            owner=owner,
            result=result,
            reason=reason,
        )
        self.context.store.record(**event)

    async def audited(self, action: audit.Action, owner: str, name: str, work) -> None:
        """Run `work` and record one audit event with its result; what the spawner does
        meanwhile (its volume events) is recorded as this request's too."""
        checks.requester.set(self.actor())
        try:
            await work
        except Exception as error:
            reason = getattr(error, "log_message", None) or str(error)
            self.audit(action, owner, name, "failure", reason)
            raise
        self.audit(action, owner, name, "success")

    def lifecycle_action(self, user_name: str, name: str) -> audit.Action:
        user = self.find_user(user_name)
        known = user is not None and name in user.orm_spawners
        return audit.Action.START_NOTEBOOK if known else audit.Action.CREATE_NOTEBOOK

    async def not_saving(self, user_name: str, name: str) -> None:
        """Refused (409) while the instance is being saved as an image: a stop or restart
        would cut the save off."""
        if f"{user_name}/{name}" in self.context.store.running_operations():
            message = f"{name} is being saved as an image; stop it when the save has ended"
            raise Refused(core.OptionsError("name", message, "conflict"), status_code=409)

    def check_name(self, name: str) -> None:
        try:
            core.validate_instance_name(name, self.context.limits)
        except core.OptionsError as error:
            raise Refused(error) from None

    def status(self, user, name: str) -> str:
        spawner = user.get_spawner(name)
        failure = self.context.store.failure(user.name, name)
        return core.instance_status(spawner.pending, spawner.ready, failure)

    def check_options(self, user_name: str, name: str, raw: dict | None) -> bool:
        """Run the one check every door runs on options for instance `name` (None: its
        stored options); True when the change needs the running instance to restart."""
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404)
        self.check_name(name)
        context = self.context
        orm_spawner = user.orm_spawners.get(name)
        stored = orm_spawner.user_options if orm_spawner is not None else None
        options = (stored or {}) if raw is None else raw
        try:
            plan = checks.check_instance(
                user,
                name,
                options,
                current_image=(stored or {}).get("image"),
                catalog=context.catalog(),
                store=context.store,
                allocator=context.allocator,
                limits=context.limits,
            )
            restart = False
            if stored and raw is not None:
                old = core.InstanceOptions(**{k: stored.get(k) for k in core.OPTION_FIELDS})
                restart = core.check_change(old, plan.options, self.status(user, name))
        except core.OptionsError as error:  # DevicesUnavailable too
            raise Refused(error) from None
        checks.checked.set(checks.Checked(f"{user.name}:{name}", dict(options), plan))
        return restart


class InstanceAPIHandler(InstanceChecks, UserServerAPIHandler):
    @needs_scope("start:servers")
    async def post(self, user_name, server_name=""):
        action = self.lifecycle_action(user_name, server_name)
        await self.audited(action, user_name, server_name, self._post(user_name, server_name))

    async def _post(self, user_name, server_name):
        self.check_options(user_name, server_name, self.get_server_json_body()["user_options"])
        await super().post(user_name, server_name)

    @needs_scope("start:servers")
    async def put(self, user_name, server_name=""):
        await self.audited(
            audit.Action.CREATE_NOTEBOOK, user_name, server_name, self._put(user_name, server_name)
        )

    async def _put(self, user_name, server_name):
        self.check_options(user_name, server_name, self.get_server_json_body()["user_options"])
        await super().put(user_name, server_name)
        self.context.store.instance_created(user_name, server_name)

    @needs_scope("start:servers")
    async def patch(self, user_name, server_name=""):
        await self.audited(
            audit.Action.UPDATE_NOTEBOOK,
            user_name,
            server_name,
            self._patch(user_name, server_name),
        )

    async def _patch(self, user_name, server_name):
        body = json_object(self)
        if "name" in body:
            # JupyterHub would move only its own record: the volume, SSH settings and
            # workspace would stay behind under the old name
            message = (
                "renaming instances is not supported; create a new instance and copy what you "
                "need from this one's work volume"
            )
            raise Refused(core.OptionsError("name", message))
        unknown = sorted(set(body) - set(PATCH_FIELDS))
        if unknown:
            raise web.HTTPError(
                400, f"{unknown[0]!r}: unknown field; allowed: {', '.join(PATCH_FIELDS)}"
            )
        if "display_name" in body and not isinstance(body["display_name"], str):
            raise Refused(core.OptionsError("display_name", "must be a string"))
        if "user_options" in body and not isinstance(body["user_options"], dict):
            raise Refused(core.OptionsError("user_options", "must be an object"))
        user = self.find_user(user_name)
        orm_spawner = user.orm_spawners.get(server_name) if user else None
        if "user_options" in body and orm_spawner is not None:
            # a change names what changes; the rest stays as it is
            body["user_options"] = {**(orm_spawner.user_options or {}), **body["user_options"]}
            self.request.body = json.dumps(body).encode()
        spawner = user.spawners.get(server_name) if user else None
        if spawner is not None and spawner.ready and set(body) == {"user_options"}:
            await self.change_running(user, spawner, body["user_options"])
            return
        if "user_options" in body:
            self.check_options(user_name, server_name, body["user_options"])
        await super().patch(user_name, server_name)
        # JupyterHub saves the new options in the database only; show them in the model too
        if server_name in user.spawners and server_name in user.orm_spawners:
            user.spawners[server_name].user_options = user.orm_spawners[server_name].user_options

    async def change_running(self, user, spawner, options: dict) -> None:
        """Tags and auto-stop change in place; a new spec restarts the instance, and the
        answer shows it restarted."""
        if self.check_options(user.name, spawner.name, options):
            await self.not_saving(user.name, spawner.name)
            checks.checked.set(None)  # checked before the stop: the restart checks afresh
            self.log.info("Restarting %s on spec %s", spawner._log_name, options["spec"])
            await self.stop_single_user(user, spawner.name)
            await self.spawn_single_user(user, spawner.name, options=options)
            spawner = user.spawners[spawner.name]
            if spawner._spawn_future is not None:  # still starting after the hub's short wait
                await spawner._spawn_future
        else:
            spawner.user_options = spawner.orm_spawner.user_options = options
            self.db.commit()
        self.write(self.server_model(spawner, user=user))

    @needs_scope("delete:servers")
    async def delete(self, user_name, server_name=""):
        body = json_object(self)
        remove = bool(body.get("remove"))
        if remove and body.get("confirm") != core.DELETE_VOLUME:
            message = (
                f"deleting {server_name} deletes its work volume and every file on it; "
                f'send {{"remove": true, "confirm": "{core.DELETE_VOLUME}"}} to go ahead'
            )
            raise Refused(core.OptionsError("confirm", message, "confirmation_required"))
        action = audit.Action.DELETE_NOTEBOOK if remove else audit.Action.STOP_NOTEBOOK
        deleted = self._delete(user_name, server_name, remove)
        await self.audited(action, user_name, server_name, deleted)
        if remove:
            self.context.store.forget_instance(user_name, server_name)
        else:  # stopped on purpose: no longer failed
            self.context.store.set_failure(user_name, server_name, None)

    async def _delete(self, user_name, server_name, remove: bool):
        await self.not_saving(user_name, server_name)
        if remove and self.context.store.volume_in_use(user_name, server_name):
            message = (
                f"{server_name}'s work volume holds what a training job or a deployment runs; "
                "delete those first (its stop keeps the volume for them)"
            )
            raise Refused(core.OptionsError("name", message, "conflict"), status_code=409)
        await super().delete(user_name, server_name)


class VolumeExpandAPIHandler(InstanceChecks, APIHandler):
    """POST /hub/api/users/<user>/servers/<name>/volume/expand {"add_gb": N}: what the home
    page's Expand button calls (scripts may use the Atelier API's route of the same name)."""

    @needs_scope("servers")
    async def post(self, user_name, server_name):
        user = self.find_user(user_name)
        if user is None or server_name not in user.orm_spawners:
            raise web.HTTPError(404)
        body = json_object(self)
        actor, source_ip = self.actor()
        try:
            size = await asyncio.to_thread(
                self.context.expand_volume,
                user.name,
                server_name,
                body.get("add_gb"),
                actor,
                source_ip,
            )
        except core.OptionsError as error:
            raise Refused(error) from None
        self.write({"size_gb": size})


class InstanceSpawnHandler(InstanceChecks, SpawnHandler):
    """/hub/spawn/<user>/<name>, the home page's create form. A GET only shows the form: it
    refuses options in the query and defines no server. A POST runs the API's check and audit
    before JupyterHub defines or starts anything, and shows a refusal on the form (400)."""

    @needs_scope("servers")
    async def _get(self, user_name, server_name, display_name):
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404)
        self.check_name(server_name)
        asked = sorted(set(self.request.query_arguments) - {"next", "display_name", "_xsrf"})
        if asked:
            refused = Refused(
                core.OptionsError(
                    asked[0].removeprefix("opt-"),
                    "a GET never creates or starts an instance; submit the form or call the API",
                )
            )
            action = self.lifecycle_action(user.name, server_name)
            self.audit(action, user.name, server_name, "failure", refused.message)
            return await self.show_form(user, server_name, refused)
        if server_name not in user.orm_spawners:
            return await self.show_form(user, server_name)
        return await super()._get(user_name, server_name, display_name)

    @needs_scope("servers")
    async def _post(self, user_name, server_name, display_name):
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404)
        action = self.lifecycle_action(user.name, server_name)
        form = self.request.body_arguments
        work = self.spawn_from_form(user, server_name, display_name, form)
        try:
            await self.audited(action, user.name, server_name, work)
        except web.HTTPError as error:
            await self.show_form(user, server_name, error)

    async def spawn_from_form(self, user, name: str, display_name: str, form: dict) -> None:
        self.check_name(name)
        try:
            options = options_from_form(form_text(form), self.context.limits)
        except core.OptionsError as error:
            raise Refused(error) from None
        self.check_options(user.name, name, options)
        await self._check_named_server_request(user, name, display_name)
        spawner = user.get_or_create_spawner(name, display_name, replace_failed=True)
        if spawner.active:
            raise web.HTTPError(400, f"instance {name} is already {self.status(user, name)}")
        pending_url = self._get_pending_url(user, name)
        await self._wrap_spawn_single_user(user, name, display_name, spawner, pending_url, options)

    async def show_form(self, user, name: str, refused: web.HTTPError | None = None) -> None:
        """The form for instance `name`, with only the images `user` may see, showing why
        it was refused and marking the field at fault."""
        orm_spawner = user.orm_spawners.get(name)
        chosen = orm_spawner.user_options if orm_spawner is not None else None
        error = getattr(refused, "error", None)
        self.set_status(refused.status_code if refused else 200)
        form = create_form(self.context, user, chosen, error.field if error else None)
        message = refused.log_message if refused else ""
        self.finish(await self._render_form(user, form, message=message))


ATELIER_SERVICE = "atelier"
PATCH_FIELDS = ("display_name", "user_options")  # "name" (a rename) is refused on its own
