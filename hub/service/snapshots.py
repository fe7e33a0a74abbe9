"""Save as image through the Atelier API: start a save, follow its operation, and let a
snapshot's owner share or delete it.

A save answers 202 at once with its operation; the backend's `save_image` runs in a thread of
this service and reports progress into the store, where every door (the API, the SDK, the
instance's extension, the home page) reads it. The service dies with the hub, and with it a
save in progress: its next start marks that operation failed and sweeps away what it left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from atelier.hub.context import Context
from atelier.hub.service.base import APIError, BaseHandler, Caller, not_found
from atelier.hub.service.routes import NAME, InstanceBase
from atelier.spawner import core
from atelier.spawner.core import audit
from atelier.spawner.core.audit import Action
from atelier.spawner.core.snapshots import GB, saved

log = logging.getLogger(__name__)
SAVE_SCOPE = "custom:atelier:images:save"
PROGRESS_SECONDS = 0.5  # how often a save writes its progress to the store
SAVE_THREADS = 4  # saves and measures at once; more wait their turn
STATUS_OF_CODE = {"conflict": 409, "exists": 409, "not_found": 404}


def refusal(error: core.OptionsError) -> APIError:
    return APIError.refusal(error, STATUS_OF_CODE.get(error.code, 400))


def audit_save(context: Context, actor: str, source_ip: str, plan, result: str, reason: str):
    event = audit.event(
        Action.SAVE_IMAGE,
        actor=actor,
        source_ip=source_ip,
        resource=plan.image.name,
        owner=plan.owner,
        result=result,
        reason=reason or f"from {plan.owner}/{plan.instance}",
    )
    context.store.record(**event)


class Saves:
    """The saves this service runs; at most one per instance (the store refuses a second)."""

    def __init__(self, context: Context):
        self.context = context
        self.tasks: set[asyncio.Task] = set()
        self.measuring: set[str] = set()  # instances being measured: one request each
        # their own threads: slow homes never hold up the API's other work
        self.threads = ThreadPoolExecutor(SAVE_THREADS, thread_name_prefix="atelier-save")

    async def measure(self, plan: core.SnapshotPlan) -> int:
        """The image's size, once it is known to be within the limits (raises OptionsError)."""
        instance = f"{plan.owner}/{plan.instance}"
        if instance in self.measuring:
            raise core.OptionsError("instance", f"{instance} is being saved already", "conflict")
        self.measuring.add(instance)
        try:
            size, layers = await self.in_thread(self.context.backend.measure_snapshot, plan)
        except (OSError, RuntimeError) as error:
            log.error("measuring %s failed: %r", instance, error)
            raise core.OptionsError(
                "instance", "it could not be measured; ask the hub's operator", "unavailable"
            ) from None
        finally:
            self.measuring.discard(instance)
        core.check_snapshot_size(size, layers, self.context.limits)
        return size

    async def in_thread(self, work, *args):
        return await asyncio.get_running_loop().run_in_executor(self.threads, work, *args)

    def recover(self) -> None:
        """At start: saves cut off by the last stop are failed, audited, and what they left
        is removed (it has no catalog record). Blocking, before the API serves."""
        for operation in self.context.store.cut_off_operations():
            event = audit.event(
                Action.SAVE_IMAGE,
                actor=operation["owner"],
                source_ip="",
                resource=operation["target"],
                owner=operation["owner"],
                result="failure",
                reason=operation["reason"] or "",
            )
            self.context.store.record(**event)
        known = {image.digest for image in self.context.store.images() if image.digest}
        self.context.backend.sweep_saved_images(known)

    def start(self, operation: dict, plan: core.SnapshotPlan, caller: Caller) -> None:
        task = asyncio.ensure_future(self._save(operation["id"], plan, caller))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _save(self, id: str, plan: core.SnapshotPlan, caller: Caller) -> None:
        store, last = self.context.store, [0.0]
        limit = self.context.limits.snapshot_size_gb

        def progress(phase: str, done: int, total: int) -> None:
            if done > limit * GB:  # it grew after it was measured: the copy stops here
                raise core.OptionsError(
                    "instance",
                    f"it grew past the limit of {limit:g} GB (limits.snapshot_size_gb) while "
                    "it was saved",
                    "too_large",
                )
            now = time.monotonic()
            if now - last[0] >= PROGRESS_SECONDS or phase != "saving":
                last[0] = now
                store.progress_operation(id, phase, done, total)

        try:
            digest = await self.in_thread(self.context.backend.save_image, plan, progress)
            await self.in_thread(store.finish_snapshot, id, saved(plan, digest))
        except Exception as error:  # noqa: BLE001 - any failure ends the operation as failed
            log.error("saving %s/%s failed: %r", plan.owner, plan.instance, error)
            reason = error.message if isinstance(error, core.OptionsError) else str(error)
            store.fail_operation(id, f"the save failed: {reason}")  # save_image kept nothing
            audit_save(self.context, caller.name, caller.source_ip, plan, "failure", reason)
            return
        audit_save(self.context, caller.name, caller.source_ip, plan, "success", digest)


class SaveImageHandler(InstanceBase):
    async def post(self, owner, name):
        caller = self.require(SAVE_SCOPE)
        fields = self.body(core.SNAPSHOT_FIELDS, required=("name",))
        instance = await self.instance(caller, owner, name)
        images = {image.name: image for image in self.context.store.images()}
        source = images.get(instance["image"])
        try:
            if source is None:
                raise core.OptionsError(
                    "instance", f"its image {instance['image']} is no longer in the catalog"
                )
            plan = core.plan_snapshot(owner, name, instance["status"], source, fields, set(images))
        except core.OptionsError as error:
            raise refusal(error) from None
        try:
            size = await self.settings["saves"].measure(plan)
            operation = self.context.store.begin_operation(
                Action.SAVE_IMAGE, owner, f"{owner}/{name}", plan.image.name
            )
        except core.OptionsError as error:
            audit_save(self.context, caller.name, caller.source_ip, plan, "failure", str(error))
            raise refusal(error) from None
        self.context.store.progress_operation(operation["id"], "saving", 0, size)
        self.settings["saves"].start(operation, plan, caller)
        self.reply(self.context.store.operation(operation["id"]), 202)


class OperationsHandler(BaseHandler):
    def get(self):
        caller = self.require("custom:atelier:instances:read")
        owner = self.get_argument("owner", None)
        if not caller.acts_for_everyone:
            owner = caller.name
        self.reply({"operations": self.context.store.operations(owner)})


class OperationHandler(BaseHandler):
    def get(self, id):
        caller = self.require("custom:atelier:instances:read")
        operation = self.context.store.operation(id)
        if operation is None or not (caller.acts_for_everyone or operation["owner"] == caller.name):
            raise not_found(f"operation {id}")
        self.reply(operation)


ROUTES = [
    (f"/instances/{NAME}/{NAME}/images", SaveImageHandler),
    ("/operations", OperationsHandler),
    (f"/operations/{NAME}", OperationHandler),
]
