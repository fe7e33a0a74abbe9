"""Fixtures that run a real Atelier hub: `atelier run` with its proxy and JupyterLab servers."""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from sqlalchemy import select

from atelier.hub.cli import main as cli
from atelier.hub.settings import DEFAULT_CONFIG, SHARED_DIR
from atelier.hub.store.records import AccountRecord
from atelier.hub.store.store import Store
from atelier.spawner.local import accounts
from atelier.spawner.local.envs import build_env

pytest_plugins = ["dockerhub"]  # the Docker modules' fixtures: engine, alice, bob
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_ddp.py"  # the DDP training script the README uses
# Instances run as per-user accounts: their files must live where those accounts can reach.
WORK = Path(os.environ.get("ATELIER_TEST_DIR", "/var/tmp/atelier-tests"))
BASE = "python_3.11-cpu-py_3.11-debian_12-x86_64"
TORCH = "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64"
# A GPU image for the fake-GPU inventory; its local environment is the CPU PyTorch one.
FAKE_GPU = "python_3.11-cuda_12.4-py_3.11-debian_12-x86_64"


GIVEN_PORTS: set[int] = set()
# `make test` runs the modules on two pytest-xdist workers: each takes the ports of its own
# blocks of 1024, so that two workers never pick the same one (not by parity: Linux gives a
# bind to port 0 ports of one parity)
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def free_port() -> int:
    """A free loopback port, never one given before in this run (the kernel may hand out the
    same port to two binds in a row: a hub's SSH port was once its service's), nor one another
    worker may give."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in GIVEN_PORTS and port // 1024 % WORKERS == WORKER:
            GIVEN_PORTS.add(port)
            return port


@pytest.fixture(scope="session")
def envs_dir() -> Path:
    return image_envs()


def image_envs() -> Path:
    """The image environments where `make run` builds them on this machine (the newcomer's
    test, which goes first, builds them from nothing: minutes not spent twice), linked from
    WORK/envs beside the fake GPU image's, which is torch's CPU build: enough for a job's
    torchrun without a GPU."""
    envs = WORK / "envs"
    envs.mkdir(parents=True, exist_ok=True)
    WORK.chmod(0o711)
    envs.chmod(0o755)
    for image in (BASE, TORCH):
        link(envs / image, build_env(SHARED_DIR / "envs", image))
    link(envs / FAKE_GPU, envs / TORCH)
    return envs


def link(path: Path, to: Path) -> None:
    """`path` a symbolic link to `to`, whatever was there (an environment of an older run)."""
    if path.is_symlink() and path.readlink() == to:
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    path.symlink_to(to)


def pytest_collection_modifyitems(items: list) -> None:
    """The newcomer's test first: it starts from nothing, and what it builds the rest reuse."""
    items.sort(key=lambda item: item.module.__name__ != "test_newcomer_e2e")


# The modules that use the tests' Docker engine: one engine holds the images they build (a
# second, on a worker of its own, would build them again)
ON_DOCKER = re.compile(r"tests/(test_docker_\w+|test_newcomer_e2e|test_contract_e2e)\.py")


def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist (`make test`): a module runs whole on one worker (its hub is the
    module's), the modules on Docker all on one, and they go out in the order of the files."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "docker" if ON_DOCKER.fullmatch(module) else module

    return ByModule(config, log)


class Hub:
    """One `atelier run` process on free loopback ports, with its own data dir inside a
    0700 directory (as a clone in root's home) and its own shared dir."""

    run_options: tuple[str, ...] = ()  # more options of `atelier run`
    environment: dict[str, str] = {}  # more environment for the hub and the CLI (PYTHONPATH)

    def __init__(self, envs: Path, **overrides):
        self.dir = WORK / f"hub-{secrets.token_hex(4)}"
        self.dir.mkdir(mode=0o700)
        self.shared_dir = WORK / f"{self.dir.name}-shared"
        self.port = free_port()
        self.ssh_port = free_port()
        config = yaml.safe_load(DEFAULT_CONFIG.read_text())
        config.update(
            data_dir=str(self.dir / "data"),
            shared_dir=str(self.shared_dir),
            envs_dir=str(envs),
            port=self.port,
            hub_port=free_port(),
            proxy_api_port=free_port(),
            service_port=free_port(),
            router_port=free_port(),
            devices=[{"kind": "gpu", "type": "a100", "index": i} for i in (0, 1)],
            culling={"idle_minutes": 0},
            autostop_every_seconds=1,
        )
        config["ssh"] = {
            "ip": "127.0.0.1",
            "max_failed_logins": 1000,
            **overrides.pop("ssh", {}),
            "port": self.ssh_port,
        }
        config["images"].append({"name": FAKE_GPU, "display_name": "Test GPU image"})
        config["limits"]["instances_per_user"] = 4
        for key, value in overrides.items():
            config[key] = value
        self.config = self.dir / "atelier.yaml"
        self.config.touch(mode=0o600)
        self.config.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.launch()
        try:
            self.sign_in_line = self.wait_for(self.sign_in, 60, "the hub to start")
        except AssertionError:
            log = self.log_text()
            self.stop()
            raise RuntimeError(f"hub did not start:\n{log[-3000:]}") from None
        password = self.dir / "data" / "admin-password"  # only with Atelier's own accounts
        self.admin_password = password.read_text().strip() if password.exists() else None
        try:
            self.admin_token = self.token("admin")
        except BaseException:
            self.stop()  # a hub no fixture holds would outlive the run
            raise

    def launch(self, preexec_fn=None) -> None:
        self.log = open(self.dir / "hub.log", "w")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "atelier.hub.cli.main", "--config", str(self.config)]
        self.process = subprocess.Popen(
            [*command, "run", "--no-build", *self.run_options],
            cwd=self.dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.environment, "ATELIER_CONFIG": str(self.config)},
            preexec_fn=preexec_fn,
        )

    def restart(self, kill: bool = False) -> None:
        """Stop the hub (SIGTERM, or SIGKILL with `kill`) and start it again on the same data;
        running instances keep running and the new hub picks them up."""
        self.halt(kill)
        self.launch()
        self.wait_for(self.sign_in, 60, "the hub to start again")

    def halt(self, kill: bool = False) -> float:
        """Stop the hub process alone (instances outlive it); returns how long it took."""
        started = time.monotonic()
        (self.process.kill if kill else self.process.terminate)()
        self.process.wait(60)
        self.log.close()
        return time.monotonic() - started

    def cli(self, *argv: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "atelier.hub.cli.main", "--config", str(self.config), *argv],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **self.environment},
        )
        return result.stdout

    def token(self, user: str) -> str:
        """A new API token of a hub user, as `atelier token` mints it, in this process (the
        command's own process would spend most of its time importing) unless the hub has an
        environment of its own (a backend on its PYTHONPATH, an engine's DOCKER_HOST)."""
        if self.environment:
            return self.cli("token", user).strip()
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            assert cli.main(["--config", str(self.config), "token", user]) == 0
        return output.getvalue().strip()

    def api(self, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
        headers = {"Authorization": f"token {token or self.admin_token}"}
        return requests.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=60, **kwargs
        )

    def atelier(
        self, method: str, path: str, token: str | None = None, **kwargs
    ) -> requests.Response:
        """A request to the Atelier service's API."""
        headers = {"Authorization": f"token {token or self.admin_token}"}
        url = f"{self.url}/services/atelier/api/v1{path}"
        return requests.request(method, url, headers=headers, timeout=60, **kwargs)

    def add_user(self, name: str, scopes: list[str] | None = None) -> str:
        """Create a hub user and return an API token of theirs (with these scopes only)."""
        assert self.api("POST", f"/users/{name}").status_code in (201, 409)
        body = {"note": "tests", **({"scopes": scopes} if scopes else {})}
        response = self.api("POST", f"/users/{name}/tokens", json=body)
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def start(self, user: str, name: str, token: str, options: dict | None = None) -> int:
        """Start an instance and wait until it is ready; returns its JupyterLab's process id."""
        response = self.api("POST", f"/users/{user}/servers/{name}", token, json=options)
        assert response.status_code in (201, 202), response.text
        self.wait_for(lambda: self.servers(user)[name]["ready"], what=f"{user}:{name} ready")
        return self.lab_pid(user, name)

    def lab_pid(self, user: str, name: str) -> int:
        """The process id of the instance's JupyterLab, as the host sees it."""
        return self.servers(user)[name]["state"]["pid"]

    def servers(self, user: str) -> dict:
        """The user's instances (named servers), running or stopped."""
        response = self.api("GET", f"/users/{user}?include_stopped_servers")
        return {name: s for name, s in response.json()["servers"].items() if name}

    def wait_for(self, predicate, timeout: float = 60, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")

    def sign_in(self) -> str | None:
        if self.process.poll() is not None:
            raise AssertionError("the hub exited")
        return next(
            (line for line in self.log_text().splitlines() if "Atelier is at" in line), None
        )

    def stop(self) -> None:
        """Stop every instance, then the hub (instances would outlive it)."""
        if self.process.poll() is None and hasattr(self, "admin_token"):
            self.stop_instances()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        if not os.environ.get("ATELIER_KEEP_TEST_HUBS"):  # keep logs and data for debugging
            self.remove_accounts()
            shutil.rmtree(self.dir, ignore_errors=True)
            shutil.rmtree(self.shared_dir, ignore_errors=True)

    def account(self, user: str) -> str | None:
        """The system account the hub gave a user (its store's word)."""
        return Store(f"sqlite:///{self.dir / 'data' / 'atelier.sqlite'}").account(user)

    def home(self, user: str, instance: str) -> Path:
        """An instance's home (its work/ links to the volume)."""
        return accounts.instance_home(self.shared_dir, self.account(user), instance)

    def volume(self, user: str, instance: str) -> Path:
        """Where the instance's work volume is mounted on the host."""
        return accounts.mount_point(self.shared_dir, self.account(user), instance)

    def upload(self, user: str, instance: str, source: Path, name: str) -> None:
        """Put `source` in the instance's work volume as `name`, owned as a file the user
        uploads there is."""
        target = self.volume(user, instance) / name
        shutil.copy(source, target)
        os.chown(target, *self.volume_owner(user))

    def volume_owner(self, user: str) -> tuple[int, int]:
        """Whose the files in the user's volumes are: their account's."""
        entry = pwd.getpwnam(self.account(user))
        return entry.pw_uid, entry.pw_gid

    def backing_file(self, user: str, instance: str) -> Path:
        return accounts.volumes_dir(self.shared_dir, self.account(user)) / f"{instance}.xfs"

    def remove_accounts(self) -> None:
        """Remove the system accounts this hub made (which a later hub would never reuse)."""
        database = self.dir / "data" / "atelier.sqlite"
        if not database.exists():
            return
        with Store(f"sqlite:///{database}").session() as db:
            for account in db.scalars(select(AccountRecord.account)):
                subprocess.run(["/usr/sbin/userdel", account], capture_output=True)

    def stop_instances(self) -> None:
        def active() -> list[str]:
            users = self.api("GET", "/users").json()
            return [f"/users/{u['name']}/servers/{n}" for u in users for n in u["servers"] if n]

        try:
            # jobs and deployments outlive the hub too, and hold their volumes: they go first
            for kind in ("jobs", "deployments"):
                for found in self.atelier("GET", f"/{kind}").json()[kind]:
                    self.atelier("DELETE", f"/{kind}/{found['owner']}/{found['name']}")
            for server in active():
                self.api("DELETE", server)
            self.wait_for(lambda: not active(), 60, "every instance to stop")
        except (requests.RequestException, AssertionError) as error:
            print(f"could not stop every instance: {error}")

    def log_text(self) -> str:
        return (self.dir / "hub.log").read_text()


def sign_in(hub: Hub, username: str, password: str) -> requests.Session:
    """A session signed in through the login page, as a browser would; `.last` is the
    login's answer."""
    session = requests.Session()
    session.get(f"{hub.url}/hub/login", timeout=30)
    session.last = session.post(
        f"{hub.url}/hub/login",
        data={"username": username, "password": password, "_xsrf": session.cookies["_xsrf"]},
        timeout=30,
    )
    return session


def xsrf(session: requests.Session) -> str:
    """The hub's xsrf token, as its pages send it back with a form."""
    return session.cookies.get("_xsrf", path="/hub/") or session.cookies["_xsrf"]


def sign_up(hub: Hub, username: str, password: str) -> None:
    """Sign up through the sign-up page; the account waits for an admin's approval."""
    visitor = requests.Session()
    visitor.get(f"{hub.url}/hub/signup", timeout=30)
    visitor.post(
        f"{hub.url}/hub/signup",
        data={
            "username": username,
            "signup_password": password,
            "signup_password_confirmation": password,
            "email": f"{username}@example.org",
            "_xsrf": visitor.cookies["_xsrf"],
        },
        timeout=30,
    )


@pytest.fixture(scope="module")
def hub(envs_dir):
    hub = Hub(envs_dir)
    yield hub
    hub.stop()


def pid_of(hub: Hub, user: str, name: str) -> int:
    return hub.servers(user)[name]["state"]["pid"]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))


def owner_of(pid: int) -> str:
    import pwd

    return pwd.getpwuid(uid_of(pid)).pw_name


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, driven through Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)  # --no-sandbox: the tests run as root
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_window_size(1280, 1024)
    yield driver
    driver.quit()


@pytest.fixture(scope="session")
def docker_engine():
    """The tests' own Docker engine (tests/dockerengine.py), stopped after the session."""
    if not Path("/usr/sbin/dockerd").exists():
        pytest.skip("no dockerd here (Debian's docker.io; `make` installs it)")
    from dockerengine import Engine

    engine = Engine()
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def docker_images(docker_engine) -> None:
    """The base image built in the tests' engine (kept in its data root for later runs, the
    debootstrap'd base in WORK's cache), and tagged as the fake GPU image too (as envs_dir
    links it)."""
    from atelier.spawner.docker import images

    with contextlib.closing(docker_engine.client()) as client:
        images.build(client, BASE, WORK / "docker-cache", print)
        client.images.get(images.image_tag(BASE)).tag(images.image_tag(FAKE_GPU))
