"""The hub's pages as a browser meets them: sign-in, sign-up approval, home, create form."""

import re

import pytest
import requests
from conftest import BASE, FAKE_GPU, TORCH

pytestmark = pytest.mark.e2e


def sign_in(hub, username, password) -> requests.Session:
    session = requests.Session()
    session.get(f"{hub.url}/hub/login", timeout=30)
    session.last = session.post(
        f"{hub.url}/hub/login",
        data={"username": username, "password": password, "_xsrf": session.cookies["_xsrf"]},
        timeout=30,
    )
    return session


def submit_form(hub, session, name: str, **fields) -> requests.Response:
    """POST the create form, as the home page does, for instance `name`."""
    data = {**fields, "_xsrf": session.cookies["_xsrf"]}
    return session.post(f"{hub.url}/hub/spawn/admin/{name}", data=data, timeout=60)


def home(hub, session) -> str:
    response = session.get(f"{hub.url}/hub/home", timeout=30)
    assert response.status_code == 200
    return response.text


def test_admin_signs_in_with_the_generated_password(hub):
    assert "Your instances" in home(hub, sign_in(hub, "admin", hub.admin_password))
    wrong = sign_in(hub, "admin", "not-the-password")
    assert "Invalid username or password." in wrong.last.text
    assert "/hub/login" in wrong.get(f"{hub.url}/hub/home", timeout=30).url


def test_sign_up_waits_for_admin_approval(hub):
    visitor = requests.Session()
    visitor.get(f"{hub.url}/hub/signup", timeout=30)
    password = "correct-horse-battery"
    visitor.post(
        f"{hub.url}/hub/signup",
        data={
            "username": "hank",
            "signup_password": password,
            "signup_password_confirmation": password,
            "email": "hank@example.org",
            "_xsrf": visitor.cookies["_xsrf"],
        },
        timeout=30,
    )
    waiting = sign_in(hub, "hank", password)
    assert "User hank has not been authorized by an administrator yet." in waiting.last.text
    assert "/hub/login" in waiting.get(f"{hub.url}/hub/home", timeout=30).url
    admin = sign_in(hub, "admin", hub.admin_password)
    admin.get(f"{hub.url}/hub/authorize/hank", timeout=30)
    assert "Your instances" in home(hub, sign_in(hub, "hank", password))
    logins = hub.atelier("GET", "/audit?action=login&user=hank").json()["events"]
    assert [event["result"] for event in logins] == ["success", "failure"]
    assert logins[1]["reason"] == "wrong password, unknown user or not yet approved"


def test_create_form_groups_images_and_filters_specs(hub):
    page = home(hub, sign_in(hub, "admin", hub.admin_password))
    groups = re.findall(r'<optgroup label="([^"]+)">', page)
    assert groups == ["CPU", "GPU (CUDA)"]  # no Ascend NPUs on this machine: no Ascend images
    assert "pytorch_2.4.0-cuda_12.4" not in page  # its environment is not built here
    option = re.search(rf'<option value="{TORCH}"\s+data-specs="([^"]*)"', page)
    assert option and set(option.group(1).split()) == {"cpu.2u4g", "cpu.2u8g", "cpu.8u32g"}
    gpu = re.search(rf'<option value="{FAKE_GPU}"\s+data-specs="([^"]*)"', page)
    assert gpu and set(gpu.group(1).split()) == {"gpu.1xa100.8u64g", "gpu.2xa100.16u128g"}
    assert "ascend.1x910b" not in page  # specs this machine cannot satisfy are not offered


def test_create_from_the_form_then_list_and_open(hub):
    session = sign_in(hub, "admin", hub.admin_password)
    home(hub, session)
    response = submit_form(
        hub,
        session,
        "web-1",
        image=BASE,
        spec="cpu.2u4g",
        tags="project=atlas\nstage=dev",
        autostop_hours="3",
        volume_gb="2",
    )
    assert response.status_code == 200
    hub.wait_for(lambda: hub.servers("admin")["web-1"]["ready"], what="web-1 ready")
    assert hub.servers("admin")["web-1"]["user_options"] == {
        "image": BASE,
        "spec": "cpu.2u4g",
        "tags": {"project": "atlas", "stage": "dev"},
        "autostop_hours": 3.0,
        "volume_gb": 2,
    }
    page = home(hub, session)
    row = re.search(r'<tr data-instance="web-1">(.*?)</tr>', page, re.S).group(1)
    for text in (
        "running",
        BASE,
        "cpu.2u4g",
        "project=atlas",
        "stage=dev",
        "UTC",
        "/user/admin/web-1/",
        "2 GB",
        "MB used)",
    ):
        assert text in row, text
    assert "at 20" in row  # the auto-stop time is shown
    assert 'data-action="expand"' in row
    expand = "/users/admin/servers/web-1/volume/expand"  # what the Expand button calls
    assert hub.api("POST", expand, json={"add_gb": 1}).json() == {"size_gb": 3}
    refused = hub.api("POST", expand, json={"add_gb": 0})
    assert refused.status_code == 400
    assert refused.json()["message"] == "add_gb: volumes never shrink; add at least 1 GB, got 0"
    assert "3 GB" in home(hub, session)
    lab = session.get(f"{hub.url}/user/admin/web-1/lab", timeout=60)
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    hub.api(
        "DELETE", "/users/admin/servers/web-1", json={"remove": True, "confirm": "delete-volume"}
    )


def test_form_errors_are_shown_and_nothing_is_created(hub):
    session = sign_in(hub, "admin", hub.admin_password)
    home(hub, session)
    response = submit_form(hub, session, "bad-1", image=BASE, spec="cpu.2u4g", tags="no equals")
    assert response.status_code == 400
    assert "tags: line 1 must be key=value" in response.text
    response = submit_form(hub, session, "bad-2", image=BASE, spec="cpu.2u4g", volume_gb="lots")
    assert (
        response.status_code == 400 and "volume_gb: must be a whole number of GB" in response.text
    )
    response = submit_form(hub, session, "Bad_Name", image=BASE, spec="cpu.2u4g")
    assert response.status_code == 400 and "may contain only a-z, 0-9" in response.text
    assert "Bad_Name" not in hub.servers("admin")


def test_deprecated_image_notice_names_the_successor(hub):
    options = {"image": BASE, "spec": "cpu.2u4g"}
    assert (
        hub.api("PUT", "/users/admin/servers/old", json={"user_options": options}).status_code
        == 201
    )
    hub.cli("images", "update", BASE, "--status", "deprecated", "--successor", TORCH)
    try:
        page = home(hub, sign_in(hub, "admin", hub.admin_password))
        assert f"image {BASE} is deprecated; its successor is {TORCH}" in page
        assert f'<option value="{BASE}"' not in page  # no longer offered for new instances
    finally:
        hub.cli("images", "update", BASE, "--status", "active")


def test_ssh_page_adds_key_pairs_and_sets_instance_access(hub):
    hub.start("admin", "sshpage", hub.admin_token, {"image": BASE, "spec": "cpu.2u4g"})
    session = sign_in(hub, "admin", hub.admin_password)
    assert 'href="/services/atelier/ssh#sshpage"' in home(hub, session)
    page = session.get(f"{hub.url}/services/atelier/ssh", timeout=30)  # signs in by OAuth
    assert page.status_code == 200
    assert f"port <code>{hub.ssh_port}</code>" in page.text
    xsrf = re.search(r'data-xsrf="([^"]+)"', page.text).group(1)
    api = f"{hub.url}/services/atelier/api/v1"

    # the page's script calls the API with the service's cookie and the page's xsrf token
    forged = session.post(f"{api}/keypairs", json={"name": "forged", "generate": True}, timeout=30)
    assert forged.status_code == 401  # a cookie without the xsrf token is not enough
    headers = {"X-XSRFToken": xsrf}
    generated = session.post(
        f"{api}/keypairs", json={"name": "page", "generate": True}, headers=headers, timeout=30
    )
    assert generated.status_code == 201, generated.text
    assert generated.json()["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    access = {"ssh": {"enabled": True, "keypairs": [generated.json()["id"]], "allowed_cidrs": []}}
    changed = session.patch(
        f"{api}/instances/admin/sshpage", json=access, headers=headers, timeout=30
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["ssh"]["command"] == f"ssh -p {hub.ssh_port} admin+sshpage@localhost"
    listed = session.get(f"{api}/keypairs", headers=headers, timeout=30).json()["keypairs"]
    assert [key["name"] for key in listed] == ["page"]
    assert "private_key" not in listed[0]
