"""Audit events: one enumeration of action names and one builder of the event record.

Every door (the hub's handlers, the Atelier service, sign-in, the SSH gateway, the CLI, the
spawner) records through `event`, so an event has the same fields and spelling wherever it
comes from. Action names are ModelArts' trace names, which operators already filter on.
Pure: no I/O, stdlib only; the store writes what this builds.
"""

from __future__ import annotations

from enum import StrEnum

RESULTS = ("success", "failure")


class Action(StrEnum):
    CREATE_NOTEBOOK = "createNotebook"
    START_NOTEBOOK = "startNotebook"
    STOP_NOTEBOOK = "stopNotebook"
    UPDATE_NOTEBOOK = "updateNotebook"
    DELETE_NOTEBOOK = "deleteNotebook"
    OPEN_NOTEBOOK = "openNotebook"
    SSH_LOGIN = "sshLogin"
    CREATE_VOLUME = "createVolume"
    EXPAND_VOLUME = "expandVolume"
    DELETE_VOLUME = "deleteVolume"
    CREATE_IMAGE = "createImage"
    UPDATE_IMAGE = "updateImage"
    DELETE_IMAGE = "deleteImage"
    SAVE_IMAGE = "saveImage"
    CREATE_SPEC = "createSpec"
    UPDATE_SPEC = "updateSpec"
    DELETE_SPEC = "deleteSpec"
    CREATE_WORKSPACE = "createWorkspace"
    UPDATE_WORKSPACE = "updateWorkspace"
    DELETE_WORKSPACE = "deleteWorkspace"
    CREATE_KEY_PAIR = "createKeyPair"
    DELETE_KEY_PAIR = "deleteKeyPair"
    CREATE_TRAIN_JOB = "createTrainJob"
    STOP_TRAIN_JOB = "stopTrainJob"
    RESUME_TRAIN_JOB = "resumeTrainJob"
    DELETE_TRAIN_JOB = "deleteTrainJob"
    CREATE_SERVICE = "createService"  # a deployment (ModelArts' real-time service)
    UPDATE_SERVICE = "updateService"  # upgrade, scale, rollback, stop, start
    DELETE_SERVICE = "deleteService"
    CREATE_APP_KEY = "createAppKey"
    DELETE_APP_KEY = "deleteAppKey"
    LOGIN = "login"
    ACCESS_DENIED = "accessDenied"


# what each action acts on; None: whatever the refused request named (its scope's noun)
RESOURCE_TYPES: dict[Action, str | None] = {
    **dict.fromkeys(
        (
            Action.CREATE_NOTEBOOK,
            Action.START_NOTEBOOK,
            Action.STOP_NOTEBOOK,
            Action.UPDATE_NOTEBOOK,
            Action.DELETE_NOTEBOOK,
            Action.OPEN_NOTEBOOK,
            Action.SSH_LOGIN,
        ),
        "instance",
    ),
    **dict.fromkeys((Action.CREATE_VOLUME, Action.EXPAND_VOLUME, Action.DELETE_VOLUME), "volume"),
    **dict.fromkeys(
        (Action.CREATE_IMAGE, Action.UPDATE_IMAGE, Action.DELETE_IMAGE, Action.SAVE_IMAGE),
        "image",
    ),
    **dict.fromkeys((Action.CREATE_SPEC, Action.UPDATE_SPEC, Action.DELETE_SPEC), "spec"),
    **dict.fromkeys(
        (Action.CREATE_WORKSPACE, Action.UPDATE_WORKSPACE, Action.DELETE_WORKSPACE), "workspace"
    ),
    **dict.fromkeys((Action.CREATE_KEY_PAIR, Action.DELETE_KEY_PAIR), "keypair"),
    **dict.fromkeys(
        (
            Action.CREATE_TRAIN_JOB,
            Action.STOP_TRAIN_JOB,
            Action.RESUME_TRAIN_JOB,
            Action.DELETE_TRAIN_JOB,
        ),
        "trainjob",
    ),
    **dict.fromkeys(
        (Action.CREATE_SERVICE, Action.UPDATE_SERVICE, Action.DELETE_SERVICE), "deployment"
    ),
    **dict.fromkeys((Action.CREATE_APP_KEY, Action.DELETE_APP_KEY), "appkey"),
    Action.LOGIN: "user",
    Action.ACCESS_DENIED: None,
}


def event(
    action: Action | str,
    *,
    actor: str,
    source_ip: str,
    resource: str,
    owner: str = "",
    result: str = "success",
    reason: str = "",
    resource_type: str | None = None,
) -> dict[str, str]:
    """The audit event of `action` on `resource`, ready for `Store.record(**event)`.

    The resource type follows from the action; only an action without one of its own
    (accessDenied) names it. An unknown action, a conflicting type or another result is
    refused (ValueError): a misspelt name would make events that no filter finds."""
    try:
        action = Action(action)
    except ValueError:
        raise ValueError(f"unknown audit action {action!r}; add it to Action") from None
    fixed = RESOURCE_TYPES[action]
    if fixed is None and not resource_type:
        raise ValueError(f"{action} names the resource type of the refused request")
    if fixed is not None and resource_type not in (None, fixed):
        raise ValueError(f"{action} acts on resource type {fixed}, not {resource_type}")
    if result not in RESULTS:
        raise ValueError(f"result must be one of {', '.join(RESULTS)}, got {result!r}")
    return {
        "actor": actor,
        "source_ip": source_ip,
        "action": action.value,
        "resource_type": fixed or resource_type,
        "resource": resource,
        "owner": owner,
        "result": result,
        "reason": reason,
    }
