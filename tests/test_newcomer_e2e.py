"""A newcomer's first minutes, exactly as the README says: `make run` in a fresh copy of the
project inside a 0700 home directory, sign in with the printed password, create an instance
from the home page's form in a browser, and reach its JupyterLab.

Nothing is prepared by the harness: no virtual environment, no node_modules, no image
environment, no data dir. The local backend goes first, from nothing; Docker follows in the
same clone, as a newcomer trying both would (its own data dir, its own images). It takes a few
minutes (installs and image builds included).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
from conftest import ROOT
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

pytestmark = pytest.mark.e2e

# what the default atelier.yaml listens on: the proxy, its API, the hub, the service, the
# deployments' router, SSH
DEFAULT_PORTS = (8000, 8001, 8081, 8002, 8003, 2222)
SIGN_IN = re.compile(r"Atelier is at (\S+) - sign in as '(\w+)' with password (\S+) ")


def copy_of_the_project(home: Path) -> Path:
    """The project's files as a fresh clone has them (tracked and new ones, nothing ignored)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    clone = home / "atelier"
    for name in filter(None, listing.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    return clone


def in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def sign_in_line(log: Path, process: subprocess.Popen, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = SIGN_IN.search(log.read_text())
        if found:
            return found
        assert process.poll() is None, f"make run exited:\n{log.read_text()[-4000:]}"
        time.sleep(1)
    raise AssertionError(f"no sign-in line after {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def newcomer():
    """A 0700 home directory holding a copy of the project; removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="newcomer-", dir="/var/tmp"))  # mode 0700, like ~
    yield copy_of_the_project(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["local", "docker"])
def started_as_the_readme_says(request, newcomer) -> tuple[dict[str, str], Path]:
    """`make run` (the local backend), or `ATELIER_CONFIG=config/docker.yaml make run` on the
    tests' engine (README, "Running on Docker": DOCKER_HOST names another engine)."""
    busy = [port for port in DEFAULT_PORTS if in_use(port)]
    if busy:
        pytest.fail(f"ports {busy} are in use: stop the Atelier running here first")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER")}
    if request.param == "docker":
        engine = request.getfixturevalue("docker_engine")
        environment.update(ATELIER_CONFIG="config/docker.yaml", DOCKER_HOST=engine.url)
    return environment, newcomer


def test_make_run_then_create_an_instance_from_the_home_page(started_as_the_readme_says, browser):
    environment, newcomer = started_as_the_readme_says
    log = newcomer / "make-run.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            ["make", "run"],
            cwd=newcomer,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=environment,
        )
    try:
        url, user, password = sign_in_line(log, process, timeout=900).groups()
        printed = log.read_text()
        assert re.search(r"\[1/\d\] \S+", printed), "image builds print which image, how far"

        wait = WebDriverWait(browser, 120)
        browser.get(f"{url}hub/home")
        browser.find_element(By.NAME, "username").send_keys(user)
        browser.find_element(By.NAME, "password").send_keys(password)
        browser.find_element(By.NAME, "password").submit()
        wait.until(lambda b: "/hub/home" in b.current_url)

        images = Select(browser.find_element(By.ID, "atelier-image"))
        offered = [option.get_attribute("value") for option in images.options]
        assert any(name.startswith("pytorch_2.13.0-cpu") for name in offered), offered
        browser.find_element(By.ID, "atelier-name").send_keys("first")
        images.select_by_index(0)
        submit = browser.find_element(By.CSS_SELECTOR, "#create-instance button[type=submit]")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", submit)
        submit.click()
        wait.until(lambda b: "/user/admin/first/lab" in b.current_url)
        wait.until(lambda b: b.find_elements(By.ID, "jp-main-dock-panel"))  # JupyterLab answers

        token = subprocess.run(
            [".venv/bin/atelier", "token", user],
            cwd=newcomer,
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        deleted = requests.delete(
            f"{url}hub/api/users/{user}/servers/first",
            headers={"Authorization": f"token {token}"},
            json={"remove": True, "confirm": "delete-volume"},
            timeout=120,
        )
        assert deleted.status_code in (202, 204), deleted.text
        servers = f"{url}hub/api/users/{user}?include_stopped_servers"
        wait.until(
            lambda b: (
                "first"
                not in requests.get(
                    servers, headers={"Authorization": f"token {token}"}, timeout=30
                ).json()["servers"]
            )
        )
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # what the hub started (its proxy, its services) ends with it: the ports are free again
    deadline = time.monotonic() + 30
    while (busy := [port for port in DEFAULT_PORTS if in_use(port)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
    assert not busy, f"ports {busy} still answer after make run was stopped"
