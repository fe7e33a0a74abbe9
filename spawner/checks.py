"""The one check every door into creating or starting an instance runs.

The hub's server API, its spawn form and the spawner itself (the last line, whatever door
was used) all call `check_instance`, so what a user may run cannot differ by door.
"""

from __future__ import annotations

from atelier.spawner import core


def visible_catalog(catalog: core.Catalog, user) -> core.Catalog:
    """What a hub user may choose from: public images, their workspaces' shared ones and
    their own private ones. Admins too: another user's image is not theirs to run, and the
    hub's doors cannot tell an admin's full token from a narrowed one."""
    return catalog.for_user(user.name, frozenset(group.name for group in user.groups))


def check_instance(
    user, name: str, raw: object, *, catalog: core.Catalog, store, allocator, limits: core.Limits
) -> core.InstancePlan:
    """The plan for `user`'s instance `name` with options `raw`, or the first refusal
    (`core.OptionsError`, `DevicesUnavailable`): options and limits, the image's visibility,
    the flavor rules, the volume quota and free devices."""
    options = core.parse_options(raw, limits)
    plan = core.plan_instance(user.name, name, options, visible_catalog(catalog, user), limits)
    if store.volume_size(user.name, name) is None:  # its volume is made at its first start
        total = store.volume_total_gb(user.name) + plan.volume_gb
        core.check_volume_quota(total, limits, "volume_gb")
    allocator.available(
        f"{user.name}:{name}", plan.spec.name, plan.accelerator_type, plan.accelerator_count
    )
    return plan
