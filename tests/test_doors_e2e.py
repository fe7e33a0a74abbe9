"""Every door into an instance runs one check and one audit (issue 9, points 8, 13-15).

Attacks through the hub's own create form (`/hub/spawn/<user>/<name>`, signed in with a
session cookie and the xsrf token, as the home page posts it) and its GET URL; renames; an
instance whose start fails shows as failed, with the reason, across a hub restart; opening
JupyterLab in a browser session is audited once.
"""

import os
import re
import signal

import pytest
import requests
from conftest import BASE, sign_in, sign_up, xsrf

from atelier.sdk import Client
from atelier.spawner.local.envs import STAMP

pytestmark = pytest.mark.e2e

PRIVATE = "bobs_1.0-cpu-py_3.11-debian_12-x86_64"  # bob's own image
BROKEN = "broken_1.0-cpu-py_3.11-debian_12-x86_64"  # an environment that cannot start


@pytest.fixture(scope="module")
def mallory(hub, envs_dir) -> requests.Session:
    """A signed-in user (sign-up, then admin approval) next to bob, who has a private image."""
    if not (envs_dir / PRIVATE).exists():
        (envs_dir / PRIVATE).symlink_to(envs_dir / BASE)
    hub.add_user("bob")
    image = {"name": PRIVATE, "visibility": "private", "owner": "bob"}
    assert hub.atelier("POST", "/images", json=image).status_code == 201
    password = "correct-horse-battery"
    sign_up(hub, "mallory", password)
    admin = sign_in(hub, "admin", hub.admin_password)
    admin.get(f"{hub.url}/hub/authorize/mallory", timeout=30)
    session = sign_in(hub, "mallory", password)
    assert "Your instances" in session.get(f"{hub.url}/hub/home", timeout=30).text
    return session


def submit_form(hub, session, name: str, **fields) -> requests.Response:
    """POST the create form as the home page does (multipart, with the xsrf token)."""
    files = {key: (None, value) for key, value in {**fields, "_xsrf": xsrf(session)}.items()}
    return session.post(f"{hub.url}/hub/spawn/mallory/{name}", files=files, timeout=60)


def events(hub, action: str, resource: str) -> list[dict]:
    """Audit events (oldest first), as the admin reads them."""
    query = f"/audit?action={action}&resource={resource}"
    return hub.atelier("GET", query).json()["events"][::-1]


def test_the_form_refuses_a_volume_past_the_quota(hub, mallory):
    response = submit_form(hub, mallory, "big", image=BASE, spec="cpu.2u4g", volume_gb="1000")
    assert response.status_code == 400
    message = "volume_gb: your volumes would hold 1000 GB; the quota is 200 GB"
    assert message in response.text  # shown on the form
    assert "big" not in hub.servers("mallory")  # nothing defined, no volume made
    assert hub.atelier("GET", "/quotas", hub.cli("token", "mallory").strip()).json()[
        "volume_gb"
    ] == {"used": 0, "allowed": 200}
    [event] = events(hub, "createNotebook", "mallory/big")
    assert (event["actor"], event["result"], event["reason"]) == ("mallory", "failure", message)


def test_the_form_refuses_another_users_private_image(hub, mallory):
    page = mallory.get(f"{hub.url}/hub/home", timeout=30).text
    assert PRIVATE not in page  # not offered
    response = submit_form(hub, mallory, "theirs", image=PRIVATE, spec="cpu.2u4g")
    assert response.status_code == 400
    message = f"image: no image named {PRIVATE!r} in the catalog"
    assert message.replace("'", "&#39;") in response.text
    assert "theirs" not in hub.servers("mallory")
    [event] = events(hub, "createNotebook", "mallory/theirs")
    assert (event["result"], event["reason"]) == ("failure", message)


def test_a_get_with_options_starts_nothing_and_defines_nothing(hub, mallory):
    url = f"{hub.url}/hub/spawn/mallory/sneaky?image={BASE}&spec=cpu.2u4g&volume_gb=1000"
    response = mallory.get(url, timeout=60)
    assert response.status_code == 400
    assert "image: a GET never creates or starts an instance" in response.text
    assert "sneaky" not in hub.servers("mallory")
    [event] = events(hub, "createNotebook", "mallory/sneaky")
    assert event["result"] == "failure"

    opened = mallory.get(f"{hub.url}/hub/spawn/mallory/peek", timeout=60)  # the form, only
    assert opened.status_code == 200 and f'<option value="{BASE}"' in opened.text
    assert PRIVATE not in opened.text
    assert "peek" not in hub.servers("mallory")


def test_the_form_creates_and_opening_jupyterlab_is_audited_once(hub, mallory):
    response = submit_form(hub, mallory, "lab", image=BASE, spec="cpu.2u4g", volume_gb="2")
    assert response.status_code == 200, response.text
    hub.wait_for(lambda: hub.servers("mallory")["lab"]["ready"], what="mallory:lab ready")
    [created] = events(hub, "createNotebook", "mallory/lab")
    assert (created["actor"], created["result"]) == ("mallory", "success")
    [volume] = events(hub, "createVolume", "mallory/lab")  # from the form's request too
    assert (volume["actor"], volume["source_ip"]) == ("mallory", "127.0.0.1")

    lab = mallory.get(f"{hub.url}/user/mallory/lab/lab", timeout=60)  # OAuth, then JupyterLab
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    [opened] = events(hub, "openNotebook", "mallory/lab")
    assert (opened["actor"], opened["owner"], opened["result"]) == ("mallory", "mallory", "success")
    again = mallory.get(f"{hub.url}/user/mallory/lab/lab", timeout=60)  # a reload
    assert again.status_code == 200 and "/hub/api/oauth2" not in again.url
    mallory.get(f"{hub.url}/user/mallory/lab/api/status", timeout=60)
    assert len(events(hub, "openNotebook", "mallory/lab")) == 1  # once per session


def test_renaming_is_refused_and_keeps_everything(hub):
    token = hub.add_user("rena")
    hub.start("rena", "first", token, {"image": BASE, "spec": "cpu.2u4g", "volume_gb": 2})
    hub.api("DELETE", "/users/rena/servers/first", token)
    hub.wait_for(lambda: not hub.servers("rena")["first"]["ready"], what="rena:first stopped")
    response = hub.api("PATCH", "/users/rena/servers/first", token, json={"name": "second"})
    assert response.status_code == 400
    assert response.json()["message"].startswith("name: renaming instances is not supported")
    assert set(hub.servers("rena")) == {"first"}
    instance = hub.atelier("GET", "/instances/rena/first", token).json()
    assert instance["volume"]["size_gb"] == 2
    [event] = events(hub, "updateNotebook", "rena/first")
    assert event["result"] == "failure"


def test_a_jupyterlab_that_dies_shows_failed_until_started_again(hub):
    token = hub.add_user("dora")
    pid = hub.start("dora", "lab", token, {"image": BASE, "spec": "cpu.2u4g"})
    os.kill(pid, signal.SIGKILL)  # nobody stopped it: the hub notices at its next poll

    def failed() -> dict | None:
        instance = hub.atelier("GET", "/instances/dora/lab", token).json()
        return instance if instance["status"] == "failed" else None

    instance = hub.wait_for(failed, 90, "dora/lab failed")
    assert instance["reason"] == "JupyterLab exited unexpectedly (exit status -9)"
    started = hub.atelier("POST", "/instances/dora/lab/start", token)
    assert started.status_code == 200, started.text
    hub.wait_for(lambda: hub.servers("dora")["lab"]["ready"], what="dora/lab ready")
    again = hub.atelier("GET", "/instances/dora/lab", token).json()
    assert (again["status"], again["reason"]) == ("running", None)


def test_opening_another_users_jupyterlab_is_refused_and_audited(hub, mallory):
    token = hub.add_user("dora")
    if not hub.servers("dora").get("lab", {}).get("ready"):
        hub.start("dora", "lab", token, {"image": BASE, "spec": "cpu.2u4g"})
    response = mallory.get(f"{hub.url}/user/dora/lab/lab", timeout=60)
    assert response.status_code == 403
    [event] = events(hub, "openNotebook", "dora/lab")
    assert (event["actor"], event["owner"], event["result"]) == ("mallory", "dora", "failure")
    assert "do not have permission" in event["reason"]


def test_a_failed_start_shows_failed_with_the_reason_across_a_restart(hub, envs_dir):
    broken = envs_dir / BROKEN / "bin"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "jupyterhub-singleuser").write_text("not a program\n")  # present, not executable
    (envs_dir / BROKEN / STAMP).write_text("")  # built to the end, as far as the hub knows
    assert hub.atelier("POST", "/images", json={"name": BROKEN}).status_code == 201
    token = hub.add_user("fay")
    api = f"{hub.url}/services/atelier/api/v1"
    sdk = Client(api, token)
    created = hub.atelier(
        "POST", "/instances", token, json={"name": "lab", "image": BROKEN, "spec": "cpu.2u4g"}
    )
    assert created.status_code in (201, 400, 502), created.text

    def failed() -> dict | None:
        instance = sdk.instance("lab")
        return instance if instance["status"] == "failed" else None

    reason = hub.wait_for(failed, 60, "fay/lab failed")["reason"]
    assert "Permission denied" in reason and "jupyterhub-singleuser" in reason
    listing = hub.cli("instances", "list", "--url", api, "--token", token)
    assert re.search(r"fay\s+lab\s+failed\s.*Permission denied", listing), listing

    # ModelArts' rule: the image changes only while stopped; the spec also while failed
    image = hub.atelier("PATCH", "/instances/fay/lab", token, json={"image": BASE})
    assert image.status_code == 400
    assert image.json()["error"]["message"] == (
        "can change only while the instance is stopped, it is failed"
    )
    spec = hub.atelier("PATCH", "/instances/fay/lab", token, json={"spec": "cpu.2u8g"})
    assert spec.status_code == 200 and spec.json()["status"] == "failed"

    hub.restart()
    after = Client(api, token).instance("lab")
    assert (after["status"], after["reason"]) == ("failed", reason)

    stopped = hub.atelier("POST", "/instances/fay/lab/stop", token)
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["status"], stopped.json()["reason"]) == ("stopped", None)
    assert Client(api, token).instance("lab")["status"] == "stopped"


def test_renaming_a_user_is_refused_and_leaves_nothing_to_the_old_name(hub):
    token = hub.add_user("bert")
    generated = hub.atelier("POST", "/keypairs", token, json={"name": "laptop", "generate": True})
    assert generated.status_code == 201, generated.text
    account = hub.account("bert")

    response = hub.api("PATCH", "/users/bert", json={"name": "robert"})  # the admin page's edit
    assert response.status_code == 400
    assert response.json()["message"].startswith("name: renaming users is not supported")
    assert hub.api("GET", "/users/robert").status_code == 404
    assert hub.account("bert") == account
    [keypair] = hub.atelier("GET", "/keypairs", token).json()["keypairs"]
    assert keypair["name"] == "laptop"

    # the admin page's edit box sends the name unchanged (JupyterHub alone would null it)
    granted = hub.api("PATCH", "/users/bert", json={"name": "bert", "admin": True})
    assert granted.status_code == 200, granted.text
    assert (granted.json()["name"], granted.json()["admin"]) == ("bert", True)
    revoked = hub.api("PATCH", "/users/bert", json={"admin": False})
    assert revoked.status_code == 200, revoked.text
    assert hub.api("GET", "/users/bert").json()["admin"] is False
    assert hub.atelier("GET", "/keypairs", token).json()["keypairs"] == [keypair]

    # deleting the user deletes their instances' volumes: audited as the admin's request
    start = {"image": BASE, "spec": "cpu.2u4g"}  # started: an instance that never ran has no volume
    assert hub.api("POST", "/users/bert/servers/b1", token, json=start).status_code in (201, 202)
    hub.wait_for(lambda: hub.servers("bert")["b1"]["ready"], what="b1 running")
    assert hub.api("DELETE", "/users/bert").status_code == 204
    [deleted] = events(hub, "deleteVolume", "bert/b1")
    assert (deleted["actor"], deleted["source_ip"]) == ("admin", "127.0.0.1")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("volume_gb", "²"),
        ("volume_gb", "1" * 5000),
        ("volume_gb", "١٢"),
        ("autostop_hours", "nan"),
        ("autostop_hours", "inf"),
        ("autostop_hours", "1e999"),
        ("autostop_hours", "١٢"),
    ],
)
def test_the_form_refuses_odd_numbers_naming_the_field(hub, mallory, field, value):
    response = submit_form(hub, mallory, "odd", image=BASE, spec="cpu.2u4g", **{field: value})
    assert response.status_code == 400
    assert f"{field}: must be a" in response.text
    assert "odd" not in hub.servers("mallory")


def test_a_body_that_is_not_a_json_object_is_refused(hub):
    token = hub.add_user("nora")
    hub.start("nora", "lab", token, {"image": BASE, "spec": "cpu.2u4g", "volume_gb": 2})
    server = "/users/nora/servers/lab"
    for body in ([1], "x"):
        for method, path in [
            ("DELETE", server),
            ("POST", f"{server}/volume/expand"),
            ("PATCH", server),
        ]:
            response = hub.api(method, path, token, json=body)
            assert response.status_code == 400, (method, path, body, response.text)
            assert response.json()["message"] == "the body must be a JSON object"
    assert hub.servers("nora")["lab"]["ready"]
    assert hub.atelier("GET", "/instances/nora/lab", token).json()["volume"]["size_gb"] == 2
