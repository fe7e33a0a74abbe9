"""The one builder of audit events and the one list of action names."""

import ast
from pathlib import Path

import pytest

from atelier.spawner.core import audit
from atelier.spawner.core.audit import Action

ROOT = Path(__file__).parent.parent
PURE_STDLIB = {"__future__", "enum", "functools", "re", "dataclasses", "datetime", "json"}
PURE_STDLIB |= {"math", "posixpath", "signal"}  # paths as text, signals' names: no I/O
PURE_STDLIB |= {"base64", "bisect", "hashlib", "hmac"}  # computations on what they are given


def test_an_event_is_built_whole_with_the_resource_type_of_its_action():
    event = audit.event(
        Action.EXPAND_VOLUME,
        actor="ann",
        source_ip="10.0.0.1",
        resource="ann/lab",
        owner="ann",
        reason="1 -> 3 GB",
    )
    assert event == {
        "actor": "ann",
        "source_ip": "10.0.0.1",
        "action": "expandVolume",
        "resource_type": "volume",
        "resource": "ann/lab",
        "owner": "ann",
        "result": "success",
        "reason": "1 -> 3 GB",
    }
    assert type(event["action"]) is str  # stored as plain text


@pytest.mark.parametrize(
    ("action", "resource_type"),
    [
        ("createNotebook", "instance"),
        ("sshLogin", "instance"),
        ("deleteVolume", "volume"),
        ("saveImage", "image"),
        ("updateSpec", "spec"),
        ("createWorkspace", "workspace"),
        ("deleteKeyPair", "keypair"),
        ("createTrainJob", "trainjob"),
        ("stopTrainJob", "trainjob"),
        ("deleteTrainJob", "trainjob"),
        ("login", "user"),
    ],
)
def test_the_resource_type_follows_from_the_action(action, resource_type):
    event = audit.event(action, actor="a", source_ip="", resource="r", result="failure")
    assert (event["action"], event["resource_type"], event["result"]) == (
        action,
        resource_type,
        "failure",
    )


def test_every_action_has_a_resource_type_and_only_a_refusal_names_its_own():
    assert set(audit.RESOURCE_TYPES) == set(Action)
    assert [a for a, kind in audit.RESOURCE_TYPES.items() if kind is None] == [Action.ACCESS_DENIED]
    denied = audit.event(
        Action.ACCESS_DENIED, actor="a", source_ip="", resource="/images", resource_type="images"
    )
    assert denied["resource_type"] == "images"
    with pytest.raises(ValueError, match="names the resource type"):
        audit.event(Action.ACCESS_DENIED, actor="a", source_ip="", resource="/images")


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"action": "createNoteBook"}, "unknown audit action 'createNoteBook'"),
        (
            {"action": "startNotebook", "resource_type": "volume"},
            "acts on resource type instance, not volume",
        ),
        ({"action": "login", "result": "ok"}, "result must be one of success, failure"),
    ],
)
def test_an_unknown_action_a_wrong_type_or_result_is_refused(changes, refusal):
    values = {"actor": "a", "source_ip": "", "resource": "r", **changes}
    with pytest.raises(ValueError, match=refusal):
        audit.event(values.pop("action"), **values)


def test_the_names_keep_the_spelling_operators_filter_on():
    assert {action.value for action in Action} == {
        "createNotebook",
        "startNotebook",
        "stopNotebook",
        "updateNotebook",
        "deleteNotebook",
        "openNotebook",
        "sshLogin",
        "createVolume",
        "expandVolume",
        "deleteVolume",
        "createImage",
        "updateImage",
        "deleteImage",
        "saveImage",
        "createSpec",
        "updateSpec",
        "deleteSpec",
        "createWorkspace",
        "updateWorkspace",
        "deleteWorkspace",
        "createKeyPair",
        "deleteKeyPair",
        "createTrainJob",
        "stopTrainJob",
        "resumeTrainJob",
        "deleteTrainJob",
        "createService",
        "updateService",
        "deleteService",
        "createAppKey",
        "deleteAppKey",
        "login",
        "accessDenied",
    }


@pytest.mark.parametrize("path", sorted((ROOT / "spawner" / "core").glob("*.py")), ids=str)
def test_the_core_is_pure(path):
    """The domain package (the audit builder among it) imports the standard library and
    itself only: no JupyterHub, no I/O library."""
    tree = ast.parse(path.read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    outside = {name for name in imported if not name.startswith("atelier.spawner.core")}
    assert {name.split(".")[0] for name in outside} <= PURE_STDLIB


def test_events_are_recorded_only_through_the_builder():
    """No door builds an event by hand: every `record(` passes what `audit.event` built."""
    for path in [*ROOT.glob("hub/**/*.py"), *ROOT.glob("spawner/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "record"
            ):
                assert not node.args and [k.arg for k in node.keywords] == [None], (
                    f"{path.name}:{node.lineno} builds an audit event by hand"
                )
