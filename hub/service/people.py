"""The Atelier API's routes about people: workspaces (groups plus quotas) and SSH key pairs."""

from __future__ import annotations

from jupyterhub.services.auth import HubOAuthenticated
from tornado import web

from atelier.hub.keypairs import (
    KEY_NAME,
    KEY_NAME_LENGTH,
    MIN_RSA_BITS,
    generate_key_pair,
    inspect_public_key,
)
from atelier.hub.service.base import APIError, BaseHandler, not_found
from atelier.hub.service.catalog import CatalogBase
from atelier.hub.ssh import MAX_CIDRS
from atelier.hub.store.store import CatalogError
from atelier.hub.web.pages import render
from atelier.spawner import core
from atelier.spawner.core.audit import Action


class WorkspaceBase(CatalogBase):
    async def workspace_json(self, workspace: dict) -> dict:
        members = await self.hub.group_members(workspace["name"]) or []
        usage = self.context.store.workspace_usage(workspace["name"])
        return {**workspace, "members": members, "instances": usage}

    def check_quota(self, body: dict) -> None:
        if not 0 <= body.get("max_instances", 0) <= 10000:
            raise APIError(400, "invalid", "must be from 0 to 10000", "max_instances")
        if not all(isinstance(member, str) for member in body.get("members", [])):
            raise APIError(400, "invalid", "must be a list of user names", "members")


class WorkspacesHandler(WorkspaceBase):
    async def get(self):
        self.require("custom:atelier:workspaces:admin")
        workspaces = [await self.workspace_json(w) for w in self.context.store.workspaces()]
        self.reply({"workspaces": workspaces})

    async def post(self):
        caller = self.require("custom:atelier:workspaces:admin")
        body = self.body(("name", "members", "max_instances"), required=("name",))
        self.check_quota(body)
        workspace = self.catalog_change(
            caller,
            Action.CREATE_WORKSPACE,
            body["name"],
            lambda: self.context.store.add_workspace(body["name"], body.get("max_instances", 10)),
        )
        await self.hub.set_group(workspace["name"], body.get("members"), caller)
        self.reply(await self.workspace_json(workspace), 201)


class WorkspaceHandler(WorkspaceBase):
    def known(self, name: str) -> dict:
        workspace = {w["name"]: w for w in self.context.store.workspaces()}.get(name)
        if workspace is None:
            raise not_found(f"workspace {name!r}")
        return workspace

    async def get(self, name):
        self.require("custom:atelier:workspaces:admin")
        self.reply(await self.workspace_json(self.known(name)))

    async def patch(self, name):
        caller = self.require("custom:atelier:workspaces:admin")
        body = self.body(("members", "max_instances"))
        self.check_quota(body)
        workspace = self.known(name)
        if "max_instances" in body:
            workspace = self.catalog_change(
                caller,
                Action.UPDATE_WORKSPACE,
                name,
                lambda: self.context.store.update_workspace(name, body["max_instances"]),
            )
        if "members" in body:
            await self.hub.set_group(name, body["members"], caller)
            self.audit(caller, Action.UPDATE_WORKSPACE, name)
        self.reply(await self.workspace_json(workspace))

    async def delete(self, name):
        caller = self.require("custom:atelier:workspaces:admin")
        self.known(name)
        try:
            self.context.store.delete_workspace(name)
        except CatalogError as error:
            self.audit(caller, Action.DELETE_WORKSPACE, name, "failure", str(error))
            raise APIError.refusal(error, 409) from None
        await self.hub.delete_group(name, caller)
        self.audit(caller, Action.DELETE_WORKSPACE, name)
        self.set_status(204)
        self.finish()


class KeyPairsHandler(BaseHandler):
    def get(self):
        caller = self.require("custom:atelier:keypairs:manage")
        owner = self.get_argument("owner", caller.name)
        if owner != caller.name and not caller.acts_for_everyone:
            raise not_found(f"user {owner!r}")
        self.reply({"keypairs": self.context.store.keypairs(owner)})

    def post(self):
        """Register a public key, or generate a pair and return its private key once."""
        caller = self.require("custom:atelier:keypairs:manage")
        body = self.body(("name", "public_key", "generate"), required=("name",))
        name = body["name"]
        if not KEY_NAME.match(name):
            raise APIError(
                400, "invalid", "must be 1 to 64 of a-z, A-Z, 0-9, '.', '_', '-'", "name"
            )
        allowed = self.context.limits.keypairs_per_user
        if len(self.context.store.keypairs(caller.name)) >= allowed:
            message = f"each user may have at most {allowed} key pairs"
            self.audit(caller, Action.CREATE_KEY_PAIR, name, "failure", message, caller.name)
            raise APIError(400, "quota_exceeded", message, "name")
        if body.get("generate") is True and "public_key" not in body:
            private_key, public_line = generate_key_pair(f"{caller.name}@atelier {name}")
        elif "public_key" in body and "generate" not in body:
            private_key, public_line = None, body["public_key"]
        else:
            raise APIError(400, "invalid", "send either public_key or generate: true", "public_key")
        try:
            key = inspect_public_key(public_line)
        except core.OptionsError as error:
            self.audit(caller, Action.CREATE_KEY_PAIR, name, "failure", str(error), caller.name)
            raise APIError.refusal(error) from None
        record = self.stored(
            caller,
            Action.CREATE_KEY_PAIR,
            name,
            lambda: self.context.store.add_keypair(
                caller.name, name, key.openssh, key.fingerprint, key.algorithm
            ),
        )
        self.reply({**record, "private_key": private_key} if private_key else record, 201)

    def stored(self, caller, action, name, change):
        try:
            result = change()
        except CatalogError as error:
            self.audit(caller, action, name, "failure", str(error), caller.name)
            raise APIError.refusal(error, 409) from None
        self.audit(caller, action, name, "success", result["fingerprint"], caller.name)
        return result


class KeyPairHandler(BaseHandler):
    def get(self, key_id):
        caller = self.require("custom:atelier:keypairs:manage")
        key = {k["id"]: k for k in self.context.store.keypairs(caller.name)}.get(key_id)
        if key is None:
            raise not_found(f"key pair {key_id!r}")
        self.reply(key)

    def delete(self, key_id):
        caller = self.require("custom:atelier:keypairs:manage")
        if not self.context.store.delete_keypair(caller.name, key_id):
            raise not_found(f"key pair {key_id!r}")
        self.audit(caller, Action.DELETE_KEY_PAIR, key_id, "success", "", caller.name)
        self.set_status(204)
        self.finish()


class SSHPage(BaseHandler):
    """The SSH page: key pairs, and each instance's SSH settings and how to connect."""

    def get_login_url(self):
        return HubOAuthenticated.get_login_url(self)  # a page: send the browser to sign in

    @web.authenticated
    def get(self):
        caller = self.require("custom:atelier:keypairs:manage")
        gateway = self.context.settings.ssh
        page = render(
            "ssh.html",
            api=self.settings["prefix"] + "/api/v1",
            user=caller.name,
            xsrf=self.xsrf_token.decode(),
            host=gateway.host(self.context.settings.ip),
            port=gateway.port,
            key_name_length=KEY_NAME_LENGTH,
            min_rsa_bits=MIN_RSA_BITS,
            max_cidrs=MAX_CIDRS,
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page)
