"""Bad input anywhere answers 400 naming the field and changes nothing, never a 500
(issue 9, second review): the hub's PATCH on an instance, the create form's bytes, and NUL
or control characters that PostgreSQL cannot store in the service's arguments and bodies.
"""

import re

import pytest
from conftest import BASE, sign_in, xsrf

pytestmark = pytest.mark.e2e

OPTIONS = {"image": BASE, "spec": "cpu.2u4g", "volume_gb": 2}


@pytest.fixture(scope="module")
def defined(hub) -> str:
    """A user with a defined (not started) instance `lab`; returns their token."""
    token = hub.add_user("dana")
    response = hub.api("PUT", "/users/dana/servers/lab", token, json={"user_options": OPTIONS})
    assert response.status_code == 201, response.text
    return token


def reasons(hub, action: str, resource: str) -> list[str]:
    query = {"action": action, "resource": resource}
    return [
        event["reason"] for event in hub.atelier("GET", "/audit", params=query).json()["events"]
    ]


@pytest.mark.parametrize(
    ("server", "body", "message"),
    [
        ("lab", {"foo": 1}, "'foo': unknown field; allowed: display_name, user_options"),
        ("none", {"display_name": 5}, "display_name: must be a string"),
        ("lab", {"user_options": {**OPTIONS, "tags": {"a": "b"}}, "display_name": 5}, None),
        ("lab", {"user_options": [1]}, "user_options: must be an object"),
    ],
)
def test_a_bad_patch_is_refused_and_changes_nothing(hub, defined, server, body, message):
    before = hub.servers("dana")
    response = hub.api("PATCH", f"/users/dana/servers/{server}", defined, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["message"] == (message or "display_name: must be a string")
    assert hub.servers("dana") == before


def test_a_refusal_answers_its_code_and_field_beside_jupyterhubs_message(hub, defined):
    response = hub.api("PATCH", "/users/dana/servers/lab", defined, json={"display_name": 5})
    assert response.json() == {
        "status": 400,
        "message": "display_name: must be a string",
        "code": "invalid",
        "field": "display_name",
        "detail": "must be a string",
    }
    unconfirmed = hub.api("DELETE", "/users/dana/servers/lab", defined, json={"remove": True})
    assert (unconfirmed.json()["code"], unconfirmed.json()["field"]) == (
        "confirmation_required",
        "confirm",
    )


def test_the_form_marks_the_field_it_refuses(hub):
    session = sign_in(hub, "admin", hub.admin_password)
    fields = {"image": BASE, "spec": "cpu.2u4g", "volume_gb": "x", "_xsrf": xsrf(session)}
    response = session.post(f"{hub.url}/hub/spawn/admin/marked", data=fields, timeout=60)
    assert response.status_code == 400 and "volume_gb: must be a whole number" in response.text
    marked = re.findall(r'name="(\w+)"[^>]*class="[^"]*is-invalid', response.text)
    assert marked == ["volume_gb"]


def test_the_form_refuses_bytes_that_are_not_utf8_naming_the_field(hub):
    session = sign_in(hub, "admin", hub.admin_password)
    fields = {"image": BASE, "spec": "cpu.2u4g", "autostop_hours": b"\xff", "_xsrf": xsrf(session)}
    files = {key: (None, value) for key, value in fields.items()}
    response = session.post(f"{hub.url}/hub/spawn/admin/bytes", files=files, timeout=60)
    assert response.status_code == 400
    assert "autostop_hours: must be UTF-8 text" in response.text
    assert "bytes" not in hub.servers("admin")
    assert reasons(hub, "createNotebook", "admin/bytes") == ["autostop_hours: must be UTF-8 text"]


def test_options_quoting_nul_are_refused_and_audited(hub, defined):
    for options in ({**OPTIONS, "\x00": 1}, {**OPTIONS, "tags": {"\x00": 1}}):
        body = {"user_options": options}
        response = hub.api("POST", "/users/dana/servers/nul", defined, json=body)
        assert response.status_code == 400, response.text
    assert "nul" not in hub.servers("dana")
    assert reasons(hub, "createNotebook", "dana/nul") == [
        "tags.\\x00: value must be a string",  # newest first, NUL shown as text
        "\\x00: unknown field; allowed: image, spec, tags, autostop_hours, volume_gb",
    ]


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/audit?user=%00", "user"),
        ("GET", "/audit?resource=a%01b", "resource"),
        ("GET", "/audit?action=%00", "action"),
        ("GET", "/audit?resource_type=%1f", "resource_type"),
        ("GET", "/keypairs?owner=%00", "owner"),
        ("GET", "/specs/%00", "name"),
        ("GET", "/images/%00", "name"),
        ("DELETE", "/instances/dana/lab%00", "name"),
    ],
)
def test_control_characters_in_arguments_are_refused_naming_the_field(
    hub, defined, method, path, field
):
    response = hub.atelier(method, path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field
    assert "lab" in hub.servers("dana")


def test_nul_in_a_body_is_refused_naming_the_field(hub):
    change = {"description": "a\x00b"}
    response = hub.atelier("PATCH", f"/images/{BASE}", json=change)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == "description"
    assert hub.atelier("GET", f"/images/{BASE}").json().get("description") != "a\x00b"
