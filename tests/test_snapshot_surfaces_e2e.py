"""Save as image through every door a user has, end to end on one hub and one instance: the SDK
in a notebook of the instance, the instance's own extension through the proxy (its owner
only), the CLI, and the home page in a headless Chromium (the save's progress, then the image
offered in the create form)."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import BASE, sign_in, sign_up
from kernels import run_in
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_pages_e2e import click, script_errors

pytestmark = pytest.mark.e2e
PASSWORD = "a-long-enough-password"


@pytest.fixture(scope="module")
def alice(hub) -> str:
    """A user who signed up (and was approved), with a token and a running instance `lab`."""
    sign_up(hub, "alice", PASSWORD)
    sign_in(hub, "admin", hub.admin_password).get(f"{hub.url}/hub/authorize/alice", timeout=30)
    assert sign_in(hub, "alice", PASSWORD).get(f"{hub.url}/hub/home", timeout=30).ok
    token = hub.cli("token", "alice").strip()
    hub.start("alice", "lab", token, {"image": BASE, "spec": "cpu.2u4g"})
    return token


@pytest.fixture(scope="module")
def bob(hub) -> str:
    return hub.add_user("bob")


def follow(hub, token: str, id: str) -> dict:
    def ended():
        now = hub.atelier("GET", f"/operations/{id}", token).json()
        return now if now["status"] != "running" else None

    return hub.wait_for(ended, 120, f"operation {id} to end")


SDK = """
from atelier.sdk import Client
operation = Client().save_image(name="from-sdk", description="from a notebook", wait=True)
print(operation["status"], operation["resource"], operation["target"])
"""


def test_the_sdk_in_a_notebook_saves_its_own_instance_with_no_setup(hub, alice):
    assert run_in(hub, "alice", "lab", alice, SDK) == "succeeded alice/lab alice/from-sdk\n"
    image = hub.atelier("GET", "/images/alice/from-sdk", alice).json()
    assert (image["base"], image["owner"], image["description"]) == (
        BASE,
        "alice",
        "from a notebook",
    )
    events = hub.atelier("GET", "/audit?action=saveImage", alice).json()["events"]
    assert [(e["actor"], e["resource"], e["result"]) for e in events] == [
        ("alice", "alice/from-sdk", "success")
    ]


def test_the_extension_saves_through_the_proxy_for_its_owner_alone(hub, alice, bob):
    url = f"{hub.url}/user/alice/lab/atelier"
    body = {"name": "from-lab"}
    for token in (bob, None):  # another user's token, and none at all
        headers = {"Authorization": f"token {token}"} if token else {}
        refused = requests.post(f"{url}/images", json=body, headers=headers, timeout=30)
        assert refused.status_code == 403, refused.text
    own = {"Authorization": f"token {alice}"}
    started = requests.post(f"{url}/images", json=body, headers=own, timeout=60)
    assert started.status_code == 202, started.text
    operation = started.json()
    assert (operation["kind"], operation["resource"], operation["target"]) == (
        "saveImage",
        "alice/lab",
        "alice/from-lab",
    )
    theirs = requests.get(
        f"{url}/operations/{operation['id']}", headers={"Authorization": f"token {bob}"}, timeout=30
    )
    assert theirs.status_code == 403
    followed = requests.get(f"{url}/operations/{operation['id']}", headers=own, timeout=30)
    assert followed.status_code == 200 and followed.json()["id"] == operation["id"]
    assert follow(hub, alice, operation["id"])["status"] == "succeeded"
    again = requests.post(f"{url}/images", json=body, headers=own, timeout=60)  # the API's refusal
    assert again.status_code == 409
    assert again.json() == {
        "error": {
            "code": "exists",
            "message": "you already have an image named from-lab",
            "field": "name",
        }
    }
    listed = requests.get(f"{url}/operations", headers=own, timeout=30).json()["operations"]
    assert [o["target"] for o in listed] == ["alice/from-lab", "alice/from-sdk"]


def test_the_cli_saves_and_follows_the_operation(hub, alice):
    api = ["--url", f"{hub.url}/services/atelier/api/v1", "--token", alice]
    out = hub.cli("images", "save", "alice/lab", "from-cli", "--wait", *api)
    assert out.splitlines()[-1] == "saved alice/lab as image alice/from-cli"
    listing = hub.cli("operations", "list", *api).splitlines()
    assert listing[0].split()[:5] == ["ID", "KIND", "RESOURCE", "TARGET", "STATUS"]
    assert [line.split()[3:5] for line in listing[1:]] == [
        ["alice/from-cli", "succeeded"],
        ["alice/from-lab", "succeeded"],
        ["alice/from-sdk", "succeeded"],
    ]
    newest = listing[1].split()[0]
    assert (
        hub.cli("operations", "show", newest, *api) == "saved alice/lab as image alice/from-cli\n"
    )


HOLD = Path("/sys/fs/cgroup/freezer/atelier-test-hold")  # cgroup v1, as on these machines


def catch_the_save(home: Path, caught: list, stop: threading.Event) -> None:
    """Freeze the save's tar, which runs in the instance's home as its account, as soon as it
    starts (a freezer cgroup: a tar stopped by a signal is killed, one frozen is only slow):
    the save then stays in its `saving` phase until the test thaws it (`release`)."""
    uid = os.stat(home).st_uid
    HOLD.mkdir(exist_ok=True)
    while not stop.is_set():
        for entry in Path("/proc").iterdir():
            try:
                if (
                    entry.name.isdigit()
                    and (entry / "comm").read_text().strip() == "tar"
                    and entry.stat().st_uid == uid
                    and os.readlink(entry / "cwd") == str(home)
                ):
                    (HOLD / "tasks").write_text(entry.name)
                    (HOLD / "freezer.state").write_text("FROZEN")
                    caught.append(int(entry.name))
                    return
            except OSError:
                continue  # it ended meanwhile
        time.sleep(0.005)


def release() -> None:
    (HOLD / "freezer.state").write_text("THAWED")
    while (HOLD / "tasks").read_text().strip():  # until the save's tar has ended
        time.sleep(0.1)
    HOLD.rmdir()


def test_the_home_page_shows_the_save_then_offers_the_image(hub, alice, browser):
    big = "import os; f = open(os.path.expanduser('~/big'), 'wb'); f.truncate(256 << 20)"
    run_in(hub, "alice", "lab", alice, big)  # 256 MB of zeros: the save reads them a while
    wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
    browser.delete_all_cookies()
    browser.get(f"{hub.url}/hub/login")
    browser.find_element(By.NAME, "username").send_keys("alice")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.NAME, "password").submit()
    wait.until(lambda b: "/hub/home" in b.current_url)

    saved = browser.find_element(By.ID, "snapshots").text  # the earlier saves, listed
    assert all(f"alice/from-{door}" in saved for door in ("sdk", "lab", "cli"))
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-instance=lab]")
    row.find_element(By.CSS_SELECTOR, "form.save-image input[name=name]").send_keys("from-page")
    home = hub.home("alice", "lab").resolve()
    caught, stop = [], threading.Event()
    catcher = threading.Thread(target=catch_the_save, args=(home, caught, stop))
    catcher.start()
    try:
        click(browser, row.find_element(By.CSS_SELECTOR, "form.save-image button"))

        def saving_text(b):
            shown = b.find_elements(By.CSS_SELECTOR, "tr[data-instance=lab] .saving")
            return shown[0].text if shown else None

        text = wait.until(saving_text)
        catcher.join(30)
        assert caught, "the save's tar was not seen"
        assert re.fullmatch(r"saving as alice/from-page: (measuring|saving) \d+%", text), text
        instance = hub.atelier("GET", "/instances/alice/lab", alice).json()
        assert instance["saving"]["target"] == "alice/from-page"  # what the page follows
        time.sleep(2.5)  # the page follows it (once a second) and still shows it saving
        assert saving_text(browser).startswith("saving as alice/from-page")
        lab_row = browser.find_element(By.CSS_SELECTOR, "tr[data-instance=lab]")
        assert lab_row.find_elements(By.CSS_SELECTOR, "form.save-image") == []  # one at a time
        assert not lab_row.find_element(By.CSS_SELECTOR, "button[data-action=stop]").is_enabled()
    finally:
        stop.set()
        catcher.join(5)
        release()

    # the page saved with a token the hub gave the session for it: for minutes, saves alone
    tokens = hub.api("GET", "/users/alice/tokens").json()["api_tokens"]
    [given] = [t for t in tokens if t["note"] == "home page: save as image"]
    granted = {scope for scope in given["scopes"] if not scope.startswith("read:users:")}
    assert given["expires_at"] and granted == {
        "access:services!service=atelier",
        "custom:atelier:images:save",
    }

    # once it ends, the page reloads itself: the image is listed and offered in the create form
    wait.until(
        lambda b: "saved as image alice/from-page" in b.find_element(By.ID, "instances").text
    )
    image = Select(browser.find_element(By.ID, "atelier-image"))
    saved_group = browser.find_element(
        By.CSS_SELECTOR, '#atelier-image optgroup[label="Saved images"]'
    )
    offered = [o.get_attribute("value") for o in saved_group.find_elements(By.TAG_NAME, "option")]
    assert offered == [f"alice/from-{door}" for door in ("cli", "lab", "page", "sdk")]
    image.select_by_value("alice/from-page")
    spec = Select(browser.find_element(By.ID, "atelier-spec"))
    allowed = [o.get_attribute("value") for o in spec.options if o.is_enabled()]
    assert allowed and all(name.startswith("cpu.") for name in allowed)  # its base's specs

    # a refusal of the API shows on the row, and nothing is saved
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-instance=lab]")
    row.find_element(By.CSS_SELECTOR, "form.save-image input[name=name]").send_keys("from-page")
    click(browser, row.find_element(By.CSS_SELECTOR, "form.save-image button"))
    error = wait.until(
        lambda b: b.find_element(By.CSS_SELECTOR, "tr[data-instance=lab] .save-error").text
    )
    assert error == "name: you already have an image named from-page"
    assert script_errors(browser) == []
    run_in(hub, "alice", "lab", alice, "import os; os.remove(os.path.expanduser('~/big'))")
