"""The hub's pages as a browser meets them: sign-in, sign-up approval, home, create form."""

import re
import subprocess

import pytest
import requests
from conftest import BASE, FAKE_GPU, TORCH, sign_in, sign_up
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e


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


def test_home_page_in_a_browser_creates_stops_and_deletes_an_instance(hub, browser):
    wait = browser_home(hub, browser)
    browser.find_element(By.ID, "atelier-name").send_keys("clicked")
    Select(browser.find_element(By.ID, "atelier-image")).select_by_value(BASE)
    Select(browser.find_element(By.ID, "atelier-spec")).select_by_value("cpu.2u4g")
    click(browser, browser.find_element(By.CSS_SELECTOR, "#create-instance button[type=submit]"))
    wait.until(lambda b: "/user/admin/clicked/" in b.current_url)  # JupyterLab opens
    assert hub.servers("admin")["clicked"]["ready"]

    def row():
        browser.get(f"{hub.url}/hub/home")
        return browser.find_element(By.CSS_SELECTOR, "tr[data-instance=clicked]")

    assert row().find_element(By.CLASS_NAME, "status").text == "running"
    click(browser, row().find_element(By.CSS_SELECTOR, "button[data-action=stop]"))
    wait.until(lambda b: not hub.servers("admin")["clicked"]["ready"])
    wait.until(lambda b: row().find_element(By.CLASS_NAME, "status").text == "stopped")
    click(browser, row().find_element(By.CSS_SELECTOR, "button[data-action=delete]"))
    alert = wait.until(lambda b: b.switch_to.alert)
    assert "Every file in work/ is lost" in alert.text
    alert.accept()
    wait.until(lambda b: "clicked" not in hub.servers("admin"))
    assert script_errors(browser) == []


def test_sign_up_waits_for_admin_approval(hub):
    password = "correct-horse-battery"
    sign_up(hub, "hank", password)
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
    assert (
        changed.json()["ssh"]["command"]
        == f"ssh -i ~/.ssh/atelier -p {hub.ssh_port} admin+sshpage@localhost"
    )
    listed = session.get(f"{api}/keypairs", headers=headers, timeout=30).json()["keypairs"]
    assert [key["name"] for key in listed] == ["page"]
    assert "private_key" not in listed[0]


def test_ssh_page_in_a_browser_from_new_key_to_a_working_login(hub, browser, tmp_path):
    """Sign in, open the SSH page from the home page, generate a key pair, allow it on a
    running instance, then log in with it; a bad CIDR shows the API's error on the page."""
    if not hub.servers("admin").get("sshpage", {}).get("ready"):
        hub.start("admin", "sshpage", hub.admin_token, {"image": BASE, "spec": "cpu.2u4g"})
    wait = browser_home(hub, browser)
    browser.find_element(By.ID, "ssh-page").click()
    card = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "[data-instance=sshpage]"))
    assert f"ssh -i ~/.ssh/atelier -p {hub.ssh_port} admin+sshpage@localhost" in card.text

    browser.find_element(By.ID, "key-name").send_keys("browser")
    click(browser, browser.find_element(By.CSS_SELECTOR, "#add-keypair button"))
    shown = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#private-key pre").text)
    assert shown.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    key_file = tmp_path / "atelier"
    key_file.write_text(shown + "\n")
    key_file.chmod(0o600)

    def card_form():
        return wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "[data-instance=sshpage] form"))

    wait.until(lambda b: "browser" in card_form().text)  # the new key pair is offered
    form = card_form()
    if not form.find_element(By.NAME, "enabled").is_selected():
        click(browser, form.find_element(By.NAME, "enabled"))
    for box in form.find_elements(By.NAME, "keypairs"):
        if box.find_element(By.XPATH, "..").text == "browser" and not box.is_selected():
            click(browser, box)
    cidrs = form.find_element(By.NAME, "allowed_cidrs")
    cidrs.clear()
    cidrs.send_keys("127.0.0.1/32")
    click(browser, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    wait.until(lambda b: "127.0.0.1/32" in str(ssh_settings(hub)["allowed_cidrs"]))
    ssh = subprocess.run(
        ["ssh", "-i", str(key_file), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
        + ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        + ["-p", str(hub.ssh_port), "admin+sshpage@127.0.0.1", "echo from-the-browser-key"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ssh.stdout.strip() == "from-the-browser-key", ssh.stderr

    form = card_form()
    cidrs = form.find_element(By.NAME, "allowed_cidrs")
    cidrs.clear()
    cidrs.send_keys("10.0.0.0/33")
    click(browser, form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    message = wait.until(lambda b: b.find_element(By.ID, "message").text)
    assert message.startswith("ssh.allowed_cidrs: '10.0.0.0/33' is not an IPv4/IPv6 CIDR")
    assert ssh_settings(hub)["allowed_cidrs"] == ["127.0.0.1/32"]  # nothing changed
    assert script_errors(browser) == []


def browser_home(hub, browser) -> WebDriverWait:
    """The home page in the browser, signed in as admin; a wait for what comes next."""
    # pages re-render after every change: an element may go stale while being read
    wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(f"{hub.url}/hub/home")
    if "/hub/login" in browser.current_url:
        browser.find_element(By.NAME, "username").send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys(hub.admin_password)
        browser.find_element(By.NAME, "password").submit()
        wait.until(lambda b: "/hub/home" in b.current_url)
    return wait


def script_errors(browser) -> list[str]:
    """What the pages' scripts (and their pattern attributes) raised since the last call."""
    messages = [entry["message"] for entry in browser.get_log("browser")]
    return [m for m in messages if "Uncaught" in m or "SyntaxError" in m]


def click(browser, element) -> None:
    """Click as a user would, after scrolling the element into the middle of the window."""
    script = "arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})"
    browser.execute_script(script, element)  # instant: Bootstrap makes scrolling smooth
    element.click()


def ssh_settings(hub) -> dict:
    return hub.atelier("GET", "/instances/admin/sshpage").json()["ssh"]
