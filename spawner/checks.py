"""The one check every door into creating or starting an instance runs.

The hub's server API, its spawn form and the spawner itself (the last line, whatever door
was used) all call `check_instance`, so what a user may run cannot differ by door. A start
a door has checked is checked once: the door hands its plan (`checked`) to the spawner the
request starts, which takes it for exactly those options instead of checking again.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from jupyterhub.spawner import SpawnException

from atelier.spawner import core
from atelier.spawner.devices import INSTANCE_HOLDER

# who asked for what a spawner does now, and from where (actor, source address): each door
# sets it for its request, and the tasks the request starts (a spawn, a delete) inherit it
requester: ContextVar[tuple[str, str] | None] = ContextVar("requester", default=None)


@dataclass(frozen=True)
class Checked:
    """The plan a door made for instance `holder` (user:name) from `options`."""

    holder: str
    options: dict
    plan: core.InstancePlan


# set by a door for its request; the spawn task it starts inherits it
checked: ContextVar[Checked | None] = ContextVar("checked", default=None)


class Refused(SpawnException):
    """A refusal as the hub answers it: 400 with JupyterHub's text ("field: message") for its
    pages and clients, and the error itself, whose code and field the hub's API answers
    beside it. JupyterHub's exception for refused options, so a refusal by the spawner
    (its last check) reaches the hub's handlers in the same shape as theirs."""

    def __init__(self, error: core.OptionsError, reason: str = "options", status_code: int = 400):
        super().__init__(str(error), reason=reason, status_code=status_code)
        self.error = error


def visible_catalog(catalog: core.Catalog, user) -> core.Catalog:
    """What a hub user may choose from: public images, their workspaces' shared ones and
    their own private ones. Admins too: another user's image is not theirs to run, and the
    hub's doors cannot tell an admin's full token from a narrowed one."""
    return catalog.for_user(user.name, frozenset(group.name for group in user.groups))


def check_instance(
    user,
    name: str,
    raw: object,
    *,
    current_image: str | None = None,
    catalog: core.Catalog,
    store,
    allocator,
    limits: core.Limits,
) -> core.InstancePlan:
    """The plan for `user`'s instance `name` with options `raw` (an existing instance: on
    `current_image`), or the first refusal (a `core.OptionsError`, `DevicesUnavailable` too):
    the number of instances, options and limits, the image's visibility and lifecycle, the
    flavor rules, the volume quota and free devices."""
    if name not in user.orm_spawners:
        core.check_instance_count(len(set(user.orm_spawners) - {""}), limits)
    options = core.parse_options(raw, limits)
    catalog = visible_catalog(catalog, user)
    plan = core.plan_instance(user.name, name, options, catalog, limits, current_image)
    if store.volume_size(user.name, name) is None:  # its volume is made at its first start
        total = store.volume_total_gb(user.name) + plan.volume_gb
        core.check_volume_quota(total, limits, "volume_gb")
    allocator.available(
        f"{INSTANCE_HOLDER}{user.name}:{name}",
        plan.spec.name,
        plan.accelerator_type,
        plan.accelerator_count,
    )
    return plan
