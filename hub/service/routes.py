"""The Atelier service's REST API v1: instances, their volumes and quotas."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from urllib.parse import quote

from atelier.hub import ssh
from atelier.hub.service.base import APIError, BaseHandler, Caller, not_found
from atelier.spawner import core
from atelier.spawner.core.audit import Action

INSTANCE_FIELDS = ("image", "spec", "tags", "autostop_hours", "volume_gb")


def instance_json(owner: str, name: str, server: dict, record: tuple | None) -> dict:
    created, workspace, failure = record or (None, None, None)
    options = server.get("user_options") or {}
    status = core.instance_status(server.get("pending"), server.get("ready"), failure)
    started = server.get("started") if status == "running" else None
    stop_at = core.autostop_at(
        datetime.fromisoformat(started.replace("Z", "+00:00")) if started else None,
        options.get("autostop_hours"),
    )
    return {
        "owner": owner,
        "name": name,
        "status": status,
        "reason": failure if status == "failed" else None,
        "image": options.get("image"),
        "spec": options.get("spec"),
        "tags": options.get("tags") or {},
        "autostop_hours": options.get("autostop_hours"),
        "volume_gb": options.get("volume_gb"),
        "autostop_at": stop_at.isoformat() if stop_at else None,
        "created": created.isoformat() if created else None,
        "workspace": workspace,
        "started": started,
        "last_activity": server.get("last_activity"),
        "url": server.get("url") if status == "running" else None,
    }


def visible_images(images: list[core.Image], caller: Caller, workspaces) -> list[core.Image]:
    """Public images, the caller's workspaces' shared ones and their own (admins: all)."""
    return [i for i in images if caller.acts_for_everyone or i.visible_to(caller.name, workspaces)]


def hub_error(code: int, data) -> APIError:
    """The hub's refusal: an Atelier check's code and field as the hub's handlers answer
    them; JupyterHub's own refusals name no field."""
    data = data or {}
    if code < 500 and data.get("field"):
        return APIError(code, data["code"], data["detail"], data["field"])
    return APIError(
        code if code < 500 else 502,
        "invalid" if code == 400 else "hub_error",
        data.get("message", "refused by the hub"),
    )


class InstanceBase(BaseHandler):
    def instance_records(self, owner: str) -> dict:
        """One store query a second answers every user's polling."""
        return self.recent.get("instances", self.context.store.all_instance_records).get(owner, {})

    async def owned_servers(self, caller: Caller, owner: str) -> dict:
        if not caller.acts_for_everyone and owner != caller.name:
            raise not_found(f"user {owner!r}")
        servers = await self.hub.servers(owner)
        if servers is None:
            raise not_found(f"user {owner!r}")
        return servers

    async def instance(self, caller: Caller, owner: str, name: str) -> dict:
        servers = await self.owned_servers(caller, owner)
        if name not in servers:
            raise not_found(f"instance {owner}/{name}")
        record = self.instance_records(owner).get(name)
        return {
            **instance_json(owner, name, servers[name], record),
            "saving": self.saving().get(f"{owner}/{name}"),
            "volume": self.volume(owner, name),
            "ssh": self.ssh(owner, name),
        }

    def saving(self) -> dict[str, dict]:
        """The save in progress of each instance being saved (its operation)."""
        return self.recent.get("saving", self.context.store.running_operations)

    def ssh(self, owner: str, name: str) -> dict | None:
        """The instance's SSH settings and how to connect; None where the gateway is off."""
        gateway = self.context.settings.ssh
        if not gateway.enabled:
            return None
        access = self.context.store.ssh_access(owner, name) or ssh.Access()
        host = gateway.host(self.context.settings.ip)
        return {
            **access.to_json(),
            "command": ssh.ssh_command(owner, name, host, gateway.port),
            "config": ssh.ssh_config(owner, name, host, gateway.port),
        }

    def volume(self, owner: str, name: str) -> dict | None:
        size = self.context.store.volume_size(owner, name)
        if size is None:
            return None  # created when the instance first starts
        return {
            "size_gb": size,
            "used_bytes": self.context.backend.volume_used_bytes(owner, name),
            "enforced": self.context.capabilities().volumes_enforced,
            "path": "work/",
        }

    async def settled(self, caller: Caller, owner: str, name: str) -> dict:
        """The instance once the hub has finished starting or stopping it: the hub answers
        202 while a start is slow, and the answer should show how the start ended. The hub's
        start timeout bounds the wait (it then shows the instance failed)."""
        while (instance := await self.instance(caller, owner, name))["status"] in core.TRANSIENT:
            await asyncio.sleep(0.5)
        return instance

    async def removed(self, caller: Caller, owner: str, name: str) -> None:
        """Wait until a deleted instance is gone: the hub answers 202 while it is still stopping
        a running one, and removes it after (bounded by the hub's stop timeout)."""
        while name in await self.owned_servers(caller, owner):
            await asyncio.sleep(0.5)

    async def hub_call(self, caller: Caller, method: str, owner: str, name: str, body=None):
        path = f"/users/{quote(owner)}/servers/{quote(name)}"
        code, data = await self.hub.request(method, path, caller, body)
        self.recent.clear()  # the hub's spawner may have changed the records (a failure)
        if code >= 400:
            raise hub_error(code, data)


class InstancesHandler(InstanceBase):
    async def get(self):
        caller = self.require("custom:atelier:instances:read")
        owner = self.get_argument("owner", None)
        if caller.acts_for_everyone and owner is None:
            servers_by_owner = await self.hub.all_servers()
        else:
            owner = owner or caller.name
            servers_by_owner = {owner: await self.owned_servers(caller, owner)}
        instances, saving = [], self.saving()
        for owner, servers in servers_by_owner.items():
            records = self.instance_records(owner)
            instances += [
                {**instance_json(owner, n, s, records.get(n)), "saving": saving.get(f"{owner}/{n}")}
                for n, s in servers.items()
            ]
        self.reply({"instances": sorted(instances, key=lambda i: (i["owner"], i["name"]))})

    async def post(self):
        caller = self.require("custom:atelier:instances:create")
        body = self.body(
            ("name", "owner", "workspace", *INSTANCE_FIELDS), required=("name", "image", "spec")
        )
        owner = body.pop("owner", None) or caller.name
        name = body.pop("name")
        workspace = body.pop("workspace", None)
        if name in await self.owned_servers(caller, owner):
            raise APIError(409, "exists", f"instance {owner}/{name} already exists", "name")
        if workspace is not None:
            await self.check_workspace_room(caller, workspace)
        await self.hub_call(caller, "POST", owner, name, {"user_options": body})
        self.context.store.place_instance(owner, name, workspace)
        self.reply(await self.settled(caller, owner, name), 201)

    async def check_workspace_room(self, caller: Caller, workspace: str) -> None:
        """The caller is a member, and the workspace's quota has room for one more instance."""
        quota = {w["name"]: w for w in self.context.store.workspaces()}.get(workspace)
        member = caller.acts_for_everyone or workspace in await self.workspaces_of(caller)
        if quota is None or not member:
            raise APIError(404, "not_found", f"no workspace {workspace!r}", "workspace")
        if self.context.store.workspace_usage(workspace) >= quota["max_instances"]:
            raise APIError(
                400,
                "quota_exceeded",
                f"workspace {workspace} allows at most {quota['max_instances']} instances",
                "workspace",
            )


class InstanceHandler(InstanceBase):
    async def get(self, owner, name):
        caller = self.require("custom:atelier:instances:read")
        self.reply(await self.instance(caller, owner, name))

    async def patch(self, owner, name):
        caller = self.require("custom:atelier:instances:update")
        changes = self.body((*INSTANCE_FIELDS, "ssh"))
        current = await self.instance(caller, owner, name)
        access = self.ssh_change(owner, name, changes.pop("ssh")) if "ssh" in changes else None
        if changes or access is None:
            options = {key: current[key] for key in INSTANCE_FIELDS} | changes
            await self.hub_call(caller, "PATCH", owner, name, {"user_options": options})
        if access is not None:
            self.context.store.set_ssh_access(owner, name, access)
            summary = json.dumps({"ssh": access.to_json()})
            self.audit(
                caller, Action.UPDATE_NOTEBOOK, f"{owner}/{name}", reason=summary, owner=owner
            )
        self.reply(await self.instance(caller, owner, name))

    def ssh_change(self, owner: str, name: str, value) -> ssh.Access:
        """The new SSH settings (changeable while running: the gateway reads them per login)."""
        if not self.context.settings.ssh.enabled:
            raise APIError(400, "invalid", "the SSH gateway is off in atelier.yaml", "ssh")
        current = self.context.store.ssh_access(owner, name) or ssh.Access()
        key_ids = {key["id"] for key in self.context.store.keypairs(owner)}
        try:
            return ssh.parse_access(value, current, key_ids)
        except core.OptionsError as error:
            raise APIError.refusal(error) from None

    async def delete(self, owner, name):
        caller = self.require("custom:atelier:instances:delete")
        await self.instance(caller, owner, name)
        if self.get_argument("confirm", None) != core.DELETE_VOLUME:
            raise APIError(
                400,
                "confirmation_required",
                f"deleting {owner}/{name} deletes its work volume and every file on it; "
                f"add ?confirm={core.DELETE_VOLUME} to go ahead",
                "confirm",
            )
        body = {"remove": True, "confirm": core.DELETE_VOLUME}
        await self.hub_call(caller, "DELETE", owner, name, body)
        await self.removed(caller, owner, name)
        self.set_status(204)
        self.finish()


class InstanceActionHandler(InstanceBase):
    async def post(self, owner, name, action):
        caller = self.require("custom:atelier:instances:update")
        self.body(())
        await self.instance(caller, owner, name)
        await self.hub_call(caller, "POST" if action == "start" else "DELETE", owner, name)
        self.reply(await self.settled(caller, owner, name))


class VolumeExpandHandler(InstanceBase):
    async def post(self, owner, name):
        caller = self.require("custom:atelier:instances:update")
        add_gb = self.body(("add_gb",), required=("add_gb",))["add_gb"]
        await self.instance(caller, owner, name)
        try:
            await asyncio.to_thread(
                self.context.expand_volume, owner, name, add_gb, caller.name, caller.source_ip
            )
        except core.OptionsError as error:
            raise APIError.refusal(error) from None
        self.reply(await self.instance(caller, owner, name))


class QuotasHandler(InstanceBase):
    async def get(self):
        caller = self.require("custom:atelier:instances:read")
        servers = await self.owned_servers(caller, caller.name)
        workspaces = await self.workspaces_of(caller)
        limits = self.context.limits
        self.reply(
            {
                "user": caller.name,
                "instances": {"used": len(servers), "allowed": limits.instances_per_user},
                "tags_per_instance": {"allowed": limits.tags_per_instance},
                "volume_gb": {
                    "used": self.context.store.volume_total_gb(caller.name),
                    "allowed": limits.volume_quota_gb,
                },
                "workspaces": {
                    w["name"]: {
                        "used": self.context.store.workspace_usage(w["name"]),
                        "allowed": w["max_instances"],
                    }
                    for w in self.context.store.workspaces()
                    if w["name"] in workspaces
                },
            }
        )


NAME = r"([^/]+)"
ROUTES = [
    ("/instances", InstancesHandler),
    (f"/instances/{NAME}/{NAME}", InstanceHandler),
    (f"/instances/{NAME}/{NAME}/(start|stop)", InstanceActionHandler),
    (f"/instances/{NAME}/{NAME}/volume/expand", VolumeExpandHandler),
    ("/quotas", QuotasHandler),
]
