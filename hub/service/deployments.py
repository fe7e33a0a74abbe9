"""Deployments through the Atelier API: deploy a model, show it (status, replicas, request
metrics, its URL), change it (a new version rolls out; replicas and timeout change in place),
roll back, stop, start and delete it; its events and each replica's log; its app keys. A
deployment is its owner's alone: anyone else gets 404. The supervisor is serving.py's."""

from __future__ import annotations

import asyncio
import secrets

from atelier.hub.service.base import APIError, Caller, not_found
from atelier.hub.service.jobs import read_tail, refusal
from atelier.hub.service.routes import NAME, InstanceBase
from atelier.spawner import core
from atelier.spawner.core import deployments, rollout
from atelier.spawner.core.audit import Action

READ = "custom:atelier:deployments:read"
MANAGE = "custom:atelier:deployments:manage"
ROUTE = "/deployments"  # on the hub's address: the router's


class DeploymentBase(InstanceBase):
    @property
    def serving(self):
        return self.settings["serving"]

    def deployment(self, caller: Caller, owner: str, name: str) -> dict:
        deployment = self.context.store.deployment(owner, name)
        if deployment is None or not (caller.acts_for_everyone or owner == caller.name):
            raise not_found(f"deployment {owner}/{name}")
        return deployment

    def audit_deployment(self, caller, action, owner, name, result="success", reason=""):
        self.audit(caller, action, f"{owner}/{name}", result, reason, owner=owner)

    def public(self, deployment: dict, detail: bool = False) -> dict:
        shown = {k: v for k, v in deployment.items() if k not in ("history", "stopped")}
        shown["url"] = f"{ROUTE}/{deployment['owner']}/{deployment['name']}"
        if detail:
            store = self.context.store
            shown["replicas_now"] = [
                {k: v for k, v in r.items() if k != "endpoint"}
                for r in store.replicas(deployment["id"])
            ]
            requests, errors, histogram = store.request_metrics(deployment["id"])
            shown["metrics"] = {
                "requests": requests,
                "errors": errors,
                "latency_ms": {
                    "p50": rollout.latency_quantile(histogram, 0.5),
                    "p99": rollout.latency_quantile(histogram, 0.99),
                },
            }
        return shown

    def check_backend(self) -> None:
        backend = self.context.backend
        if not backend.serves_models:
            raise core.OptionsError(
                "image", f"the {backend.name} backend does not serve models (yet)", "unavailable"
            )

    async def sources(self, caller: Caller, owner: str) -> deployments.Sources:
        """Where the owner's models may come from: their instances' volumes, their completed
        jobs' outputs."""
        servers = await self.owned_servers(caller, owner)
        outputs = {
            job["name"]: (job["volume"], job["output"])
            for job in self.context.store.jobs(owner)
            if job["status"] == "completed"
        }
        return deployments.Sources(set(servers) - {""}, outputs)

    async def catalog(self, owner: str) -> core.Catalog:
        return self.context.catalog().for_user(owner, await self.hub.memberships(owner))


class DeploymentsHandler(DeploymentBase):
    def get(self):
        caller = self.require(READ)
        owner = self.get_argument("owner", None) if caller.acts_for_everyone else caller.name
        found = self.context.store.deployments(owner)
        self.reply({"deployments": [self.public(d) for d in found]})

    async def post(self):
        caller = self.require(MANAGE)
        raw = self.body((*deployments.DEPLOYMENT_FIELDS, "owner"), required=("name",))
        owner = raw.pop("owner", None) or caller.name
        sources = await self.sources(caller, owner)
        limits = self.context.limits
        try:
            self.check_backend()
            plan = deployments.plan_deployment(
                owner, raw, await self.catalog(owner), sources, limits
            )
            made = self.context.store.create_deployment(owner, plan.name, plan.to_json(), limits)
        except core.OptionsError as error:
            self.audit_deployment(
                caller, Action.CREATE_SERVICE, owner, str(raw["name"]), "failure", str(error)
            )
            raise refusal(error) from None
        self.audit_deployment(caller, Action.CREATE_SERVICE, owner, plan.name)
        self.reply(self.public(self.context.store.deployment(owner, made["name"]), True), 201)


class DeploymentHandler(DeploymentBase):
    def get(self, owner, name):
        self.reply(self.public(self.deployment(self.require(READ), owner, name), True))

    async def patch(self, owner, name):
        """A change: a new version (model, image, spec, environment) rolls out; the replica
        count and the timeout change in place."""
        caller = self.require(MANAGE)
        deployment = self.deployment(caller, owner, name)
        raw = self.body(deployments.CHANGEABLE)
        try:
            catalog = await self.catalog(owner)
            current = deployments.plan_from_json(owner, name, deployment, catalog)
            sources = await self.sources(caller, owner)
            plan, new_version = deployments.plan_change(
                current, raw, catalog, sources, self.context.limits
            )
        except core.OptionsError as error:
            self.audit_deployment(caller, Action.UPDATE_SERVICE, owner, name, "failure", str(error))
            raise refusal(error) from None
        store, changed = self.context.store, ", ".join(sorted(raw))
        if new_version:
            store.new_version(
                deployment["id"], plan.to_json(), f"{changed} changed by {caller.name}"
            )
        else:
            store.update_deployment(
                deployment["id"], f"{changed} changed by {caller.name}", plan=plan.to_json()
            )
        self.audit_deployment(caller, Action.UPDATE_SERVICE, owner, name, reason=changed)
        self.reply(self.public(store.deployment(owner, name), True))

    async def delete(self, owner, name):
        caller = self.require(MANAGE)
        deployment = self.deployment(caller, owner, name)
        store = self.context.store
        store.update_deployment(deployment["id"], f"deleted by {caller.name}", stopped=True)
        for _ in range(1200):  # the supervisor drains and stops every replica
            if not store.replicas(deployment["id"]):
                break
            await asyncio.sleep(0.1)
        else:
            raise APIError(503, "unavailable", "the replicas did not stop in time; try again")
        await asyncio.to_thread(self.serving.forget, deployment)
        self.audit_deployment(caller, Action.DELETE_SERVICE, owner, name)
        self.set_status(204)
        self.finish()


class RollbackHandler(DeploymentBase):
    def post(self, owner, name):
        """Back to the version before the one asked for now: a new version with its plan."""
        caller = self.require(MANAGE)
        deployment = self.deployment(caller, owner, name)
        earlier = [e for e in deployment["history"] if e["version"] < deployment["version"]]
        good = [e for e in earlier if e.get("served")]
        if not good:
            reason = "there is no earlier version that served"
            self.audit_deployment(caller, Action.UPDATE_SERVICE, owner, name, "failure", reason)
            raise APIError(409, "conflict", reason, "version")
        back = good[-1]
        event = f"rolled back to version {back['version']} by {caller.name}"
        self.context.store.new_version(deployment["id"], back["plan"], event)
        self.audit_deployment(caller, Action.UPDATE_SERVICE, owner, name, reason=event)
        self.reply(self.public(self.context.store.deployment(owner, name), True), 202)


class StopHandler(DeploymentBase):
    def post(self, owner, name):
        caller = self.require(MANAGE)
        deployment = self.deployment(caller, owner, name)
        self.context.store.update_deployment(
            deployment["id"], f"stopped by {caller.name}", stopped=True, status="stopped",
            serving=None,
        )  # fmt: skip
        self.audit_deployment(caller, Action.UPDATE_SERVICE, owner, name, reason="stop")
        self.reply(self.public(self.context.store.deployment(owner, name), True), 202)


class StartHandler(DeploymentBase):
    def post(self, owner, name):
        caller = self.require(MANAGE)
        deployment = self.deployment(caller, owner, name)
        if not deployment["stopped"] and deployment["status"] != "failed":
            self.audit_deployment(caller, Action.UPDATE_SERVICE, owner, name, "failure", "runs")
            raise APIError(409, "conflict", f"the deployment is {deployment['status']}", "status")
        self.context.store.update_deployment(
            deployment["id"], f"started by {caller.name}", stopped=False, status="deploying",
            serving=None, reason=None,
        )  # fmt: skip
        self.audit_deployment(caller, Action.UPDATE_SERVICE, owner, name, reason="start")
        self.reply(self.public(self.context.store.deployment(owner, name), True), 202)


class EventsHandler(DeploymentBase):
    def get(self, owner, name):
        deployment = self.deployment(self.require(READ), owner, name)
        self.reply({"events": self.context.store.deployment_events(deployment["id"])})


class LogsHandler(DeploymentBase):
    """One replica's log as text (its last `tail` lines, default 1000)."""

    async def get(self, owner, name):
        deployment = self.deployment(self.require(READ), owner, name)
        every = self.context.store.replicas(deployment["id"], live=False)
        numbers = [r["number"] for r in every]
        if not numbers:
            raise APIError(404, "not_found", "the deployment has had no replica yet", "replica")
        number = self.int_argument("replica", numbers[-1], 1, 2**31 - 1)
        if number not in numbers:
            raise APIError(404, "not_found", f"no replica {number}; it has {numbers}", "replica")
        tail = self.int_argument("tail", 1000, 1, 100_000)
        path = self.serving.directory(deployment["id"]) / f"node-{number}.log"
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(await asyncio.to_thread(read_tail, path, tail))


class KeysHandler(DeploymentBase):
    def get(self, owner, name):
        deployment = self.deployment(self.require(READ), owner, name)
        self.reply({"keys": self.context.store.app_keys(deployment["id"])})

    def post(self, owner, name):
        """A new app key: its secret is in this answer only."""
        caller = self.require(MANAGE)
        deployment = self.deployment(caller, owner, name)
        self.body(())
        prefix, key = deployments.new_app_key(secrets.token_bytes(deployments.KEY_ENTROPY))
        try:
            made = self.context.store.create_app_key(
                deployment["id"], prefix, deployments.key_digest(key), self.context.limits
            )
        except core.OptionsError as error:
            self.audit_deployment(caller, Action.CREATE_APP_KEY, owner, name, "failure", str(error))
            raise refusal(error) from None
        self.audit_deployment(caller, Action.CREATE_APP_KEY, owner, name, reason=prefix)
        self.reply({**made, "key": key}, 201)


class KeyHandler(DeploymentBase):
    def delete(self, owner, name, prefix):
        caller = self.require(MANAGE)
        deployment = self.deployment(caller, owner, name)
        if not self.context.store.revoke_app_key(deployment["id"], prefix):
            raise not_found(f"app key {prefix} of deployment {owner}/{name}")
        self.audit_deployment(caller, Action.DELETE_APP_KEY, owner, name, reason=prefix)
        self.set_status(204)
        self.finish()


BASE = f"/deployments/{NAME}/{NAME}"
ROUTES = [
    ("/deployments", DeploymentsHandler),
    (BASE, DeploymentHandler),
    (f"{BASE}/rollback", RollbackHandler),
    (f"{BASE}/stop", StopHandler),
    (f"{BASE}/start", StartHandler),
    (f"{BASE}/events", EventsHandler),
    (f"{BASE}/logs", LogsHandler),
    (f"{BASE}/keys", KeysHandler),
    (f"{BASE}/keys/{NAME}", KeyHandler),
]
