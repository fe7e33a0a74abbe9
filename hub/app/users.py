"""The hub's doors that are not an instance's own: opening an instance in a browser (its
openNotebook audit) and a user's records (no rename, nothing inherited by a new user of a
deleted user's name)."""

from __future__ import annotations

import asyncio
import json

from jupyterhub.apihandlers.auth import OAuthAuthorizeHandler
from jupyterhub.apihandlers.users import UserAPIHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from atelier.hub.app.handlers import InstanceChecks, json_object
from atelier.spawner import checks, core
from atelier.spawner.checks import Refused
from atelier.spawner.core import audit


class OpenNotebookHandler(InstanceChecks, OAuthAuthorizeHandler):
    """/hub/api/oauth2/authorize: a browser opening an instance's JupyterLab passes here once
    per session (the instance's own cookie covers the rest), so openNotebook is audited here."""

    async def get(self):
        try:
            await super().get()
        except web.HTTPError as error:  # e.g. another user's instance: 403
            self.audit_open("failure", error.log_message or "")
            raise

    def send_oauth_response(self, headers, body, status):
        super().send_oauth_response(headers, body, status)
        if status == 302:
            self.audit_open("success")

    def audit_open(self, result: str, reason: str = "") -> None:
        """openNotebook for the instance whose OAuth client asks (other clients: nothing)."""
        client = self.oauth_provider.fetch_by_client_id(self.get_argument("client_id", ""))
        spawner = client.spawner if client is not None else None
        if spawner is not None:
            self.audit(audit.Action.OPEN_NOTEBOOK, spawner.user.name, spawner.name, result, reason)


STOP_WAIT_S = 30  # how long a user's delete waits for their instances to stop
# and for their jobs and deployments (a job node's grace period, a replica's drain)
WORKLOADS_WAIT_S = 90


class UserRecordsAPIHandler(InstanceChecks, UserAPIHandler):
    """/hub/api/users/<name>: Atelier's records (account, key pairs, instances, volumes) are
    keyed by the user's name, so they must never pass to another user of that name.

    DELETE: JupyterHub deletes the user's instances (and with them their volumes and homes,
    in delete_forever) but not while one runs, and keeps Atelier's records; here their
    instances, jobs and deployments stop first, and after, nothing of theirs is left: a user
    re-created with the name gets a fresh account and inherits nothing. PATCH: a rename is
    refused, since the records would stay with the old name for whoever takes it next."""

    @needs_scope("admin:users")
    async def patch(self, user_name):
        user = self.find_user(user_name)
        body = json_object(self)
        if user is not None and body.pop("name", user.name) != user.name:
            message = (
                "renaming users is not supported; their account, key pairs and volumes would "
                "pass to whoever takes the old name next"
            )
            raise Refused(core.OptionsError("name", message))
        # JupyterHub 6.1.1 sets the name to null when a PATCH repeats it, as the admin
        # page's edit box always does: pass on the rest only
        self.request.body = json.dumps(body).encode()
        await super().patch(user_name)

    @needs_scope("admin:users")
    async def delete(self, user_name):
        checks.requester.set(self.actor())  # who deleted their volumes
        user = self.find_user(user_name)
        if user is not None and user.name != self.current_user.name:
            await self.stop_instances(user)
            await self.end_workloads(user_name)
            await self.stop_instances(user)  # one started meanwhile
        await super().delete(user_name)
        account, forgotten = await asyncio.to_thread(self.context.forget_user, user_name)
        await asyncio.to_thread(self.audit_forgotten, user_name, forgotten)
        if account is not None:
            await asyncio.to_thread(self.context.backend.forget_user, user_name, account)

    async def stop_instances(self, user) -> None:
        for name, spawner in list(user.spawners.items()):
            if spawner.active:
                await self.stop_single_user(user, name)
        # JupyterHub answers after slow_stop_timeout (10 s) while a stop goes on: a busy
        # machine's is let finish, up to the spawner's own escalation to SIGKILL
        deadline = asyncio.get_running_loop().time() + STOP_WAIT_S
        while any(spawner.active for spawner in user.spawners.values()):
            if asyncio.get_running_loop().time() > deadline:
                raise web.HTTPError(400, f"{user.name}'s instances are still stopping; retry")
            await asyncio.sleep(0.1)

    async def end_workloads(self, user_name: str) -> None:
        """The user's jobs and deployments stop as a stop of each would (the service's
        supervisors release their volumes, homes and cgroups), before their records go."""
        why = f"its owner is deleted by {self.current_user.name}"
        deadline = asyncio.get_running_loop().time() + WORKLOADS_WAIT_S
        while not await asyncio.to_thread(self.context.end_workloads, user_name, why):
            if asyncio.get_running_loop().time() > deadline:
                raise web.HTTPError(
                    400, f"{user_name}'s jobs and deployments are still stopping; retry"
                )
            await asyncio.sleep(0.2)

    def audit_forgotten(self, user_name: str, forgotten: list[tuple[str, str]]) -> None:
        """Each job and deployment that went with its owner. Blocking."""
        for kind, name in forgotten:
            action = audit.Action.DELETE_TRAIN_JOB if kind == "job" else audit.Action.DELETE_SERVICE
            self.audit(action, user_name, name, "success", "its owner was deleted")
