"""JupyterHub's own server API and spawn page, with Atelier's checks before anything is stored.

The hub's `POST/PUT/PATCH /hub/api/users/{user}/servers/{name}` would save any options and
fail later in the spawner; these subclasses validate with the same core as the form first,
so a bad request answers 400 naming the field and the hub's state does not change.
"""

from __future__ import annotations

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.handlers.pages import SpawnHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from atelier.hub.pages import status_of
from atelier.spawner import core
from atelier.spawner.devices import DevicesUnavailable


class InstanceChecks:
    @property
    def context(self):
        return self.settings["atelier"]

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

    async def audited(self, action: str, owner: str, name: str, work) -> None:
        """Run `work` and record one audit event with its result."""
        actor, source_ip = self.actor()
        result, reason = "success", ""
        try:
            await work
        except web.HTTPError as error:
            result, reason = "failure", error.log_message or error.reason or ""
            raise
        finally:
            self.context.store.record(
                actor=actor,
                source_ip=source_ip,
                action=action,
                resource_type="instance",
                resource=f"{owner}/{name}",
                owner=owner,
                result=result,
                reason=reason,
            )

    def lifecycle_action(self, user_name: str, name: str) -> str:
        user = self.find_user(user_name)
        known = user is not None and name in user.orm_spawners
        return "startNotebook" if known else "createNotebook"

    def check_name(self, name: str) -> None:
        try:
            core.validate_instance_name(name, self.context.limits)
        except core.OptionsError as error:
            raise web.HTTPError(400, str(error)) from None

    def check_options(self, user_name: str, name: str, raw: dict | None) -> bool:
        """Validate options for instance `name` (None: reuse its stored options); True when
        the change needs the running instance to restart."""
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404)
        self.check_name(name)
        context = self.context
        orm_spawner = user.orm_spawners.get(name)
        stored = orm_spawner.user_options if orm_spawner is not None else None
        try:
            options = core.parse_options((stored or {}) if raw is None else raw, context.limits)
            catalog = context.catalog_for(user)
            plan = core.plan_instance(user.name, name, options, catalog, context.limits)
            restart = False
            if stored and raw is not None:
                old = core.InstanceOptions(**{k: stored.get(k) for k in core.OPTION_FIELDS})
                restart = core.check_change(old, options, status_of(user.get_spawner(name)))
            self.check_devices(f"{user.name}:{name}", plan)
            if context.store.volume_size(user.name, name) is None:
                total = context.store.volume_total_gb(user.name) + plan.volume_gb
                core.check_volume_quota(total, context.limits, "volume_gb")
        except (core.OptionsError, DevicesUnavailable) as error:
            raise web.HTTPError(400, str(error)) from None
        return restart

    def check_devices(self, holder: str, plan: core.InstancePlan) -> None:
        self.context.allocator.available(
            holder, plan.spec.name, plan.accelerator_type, plan.accelerator_count
        )


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
            "createNotebook", user_name, server_name, self._put(user_name, server_name)
        )

    async def _put(self, user_name, server_name):
        self.check_options(user_name, server_name, self.get_server_json_body()["user_options"])
        await super().put(user_name, server_name)
        self.context.store.instance_created(user_name, server_name)

    @needs_scope("start:servers")
    async def patch(self, user_name, server_name=""):
        await self.audited(
            "updateNotebook", user_name, server_name, self._patch(user_name, server_name)
        )

    async def _patch(self, user_name, server_name):
        body = self.get_json_body() or {}
        if isinstance(body, dict) and "name" in body:
            self.check_name(str(body["name"]))
        user = self.find_user(user_name)
        spawner = user.spawners.get(server_name) if user else None
        if spawner is not None and spawner.ready and set(body) == {"user_options"}:
            await self.change_running(user, spawner, body["user_options"])
            return
        if isinstance(body, dict) and isinstance(body.get("user_options"), dict):
            self.check_options(user_name, server_name, body["user_options"])
        await super().patch(user_name, server_name)
        # JupyterHub saves the new options in the database only; show them in the model too
        name = body.get("name", server_name)
        if name in user.spawners and name in user.orm_spawners:
            user.spawners[name].user_options = user.orm_spawners[name].user_options

    async def change_running(self, user, spawner, options: dict) -> None:
        """Tags and auto-stop change in place; a new spec restarts the instance."""
        if not isinstance(options, dict):
            raise web.HTTPError(400, "user_options: must be an object")
        if self.check_options(user.name, spawner.name, options):
            self.log.info("Restarting %s on spec %s", spawner._log_name, options["spec"])
            await self.stop_single_user(user, spawner.name)
            await self.spawn_single_user(user, spawner.name, options=options)
        else:
            spawner.user_options = spawner.orm_spawner.user_options = options
            self.db.commit()
        self.write(self.server_model(spawner, user=user))

    @needs_scope("delete:servers")
    async def delete(self, user_name, server_name=""):
        body = self.get_json_body() or {}
        remove = bool(body.get("remove"))
        if remove and body.get("confirm") != DELETE_VOLUME:
            raise web.HTTPError(
                400,
                f"confirm: deleting {server_name} deletes its work volume and every file on it; "
                f'send {{"remove": true, "confirm": "{DELETE_VOLUME}"}} to go ahead',
            )
        action = "deleteNotebook" if remove else "stopNotebook"
        await self.audited(action, user_name, server_name, super().delete(user_name, server_name))
        if remove:
            self.context.store.forget_instance(user_name, server_name)


class VolumeExpandAPIHandler(InstanceChecks, APIHandler):
    """POST /hub/api/users/<user>/servers/<name>/volume/expand {"add_gb": N}: what the home
    page's Expand button calls (scripts may use the Atelier API's route of the same name)."""

    @needs_scope("servers")
    async def post(self, user_name, server_name):
        user = self.find_user(user_name)
        if user is None or server_name not in user.orm_spawners:
            raise web.HTTPError(404)
        body = self.get_json_body() or {}
        actor, source_ip = self.actor()
        try:
            size = self.context.expand_volume(
                user.name, server_name, body.get("add_gb"), actor, source_ip
            )
        except core.OptionsError as error:
            raise web.HTTPError(400, str(error)) from None
        self.write({"size_gb": size})


class InstanceSpawnHandler(InstanceChecks, SpawnHandler):
    """/hub/spawn/<user>/<name>: refuse a bad instance name before a server record exists."""

    @web.authenticated
    def get(self, user_name=None, server_name=""):
        self.check_name(server_name)
        return super().get(user_name, server_name)

    @web.authenticated
    async def post(self, user_name=None, server_name="", display_name=""):
        self.check_name(server_name)
        action = self.lifecycle_action(user_name, server_name)
        work = super().post(user_name, server_name, display_name)
        await self.audited(action, user_name, server_name, work)


ATELIER_SERVICE = "atelier"
DELETE_VOLUME = "delete-volume"
HANDLERS = [
    (r"/api/users/([^/]+)/servers/([^/]*)", InstanceAPIHandler),
    (r"/api/users/([^/]+)/servers/([^/]+)/volume/expand", VolumeExpandAPIHandler),
    (r"/spawn/([^/]+)/([^/]+)", InstanceSpawnHandler),
]
