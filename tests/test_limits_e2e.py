"""A spec's limits hold on a real hub: CPU quota, memory, process count and device access.

These machines run the hub as root on cgroup v1, so every check here is unconditional.
"""

import os
import stat
from pathlib import Path

import pytest
import yaml
from conftest import BASE, FAKE_GPU, Hub, pid_of
from kernels import run_in

from atelier.hub.settings import DEFAULT_CONFIG

pytestmark = pytest.mark.e2e
ONE_CORE = {"image": BASE, "spec": "cpu.1u2g"}
CONTROLLERS = ("cpu", "devices", "memory", "pids")


@pytest.fixture(scope="module")
def hub(envs_dir):
    specs = yaml.safe_load(DEFAULT_CONFIG.read_text())["specs"]
    hub = Hub(envs_dir, specs=[*specs, {"name": "cpu.1u2g"}])
    yield hub
    hub.stop()


def groups(hub, user, name) -> list[Path]:
    account = hub.servers(user)[name]["state"]["account"]
    return [Path("/sys/fs/cgroup", c, "atelier", f"{account}.{name}") for c in CONTROLLERS]


BUSY_TWO_PROCESSES = """
import os, resource, time
start, children = time.monotonic(), []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            pass
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print((usage.ru_utime + usage.ru_stime) / (time.monotonic() - start))
"""


def test_a_one_core_spec_holds_two_busy_processes_to_one_core(hub):
    token = hub.add_user("carol")
    pid = hub.start("carol", "busy", token, ONE_CORE)
    for group in groups(hub, "carol", "busy"):
        assert str(pid) in (group / "cgroup.procs").read_text().split(), group
    cpu, devices, memory, pids = groups(hub, "carol", "busy")
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "100000"
    assert int((memory / "memory.limit_in_bytes").read_text()) == 2 * 1024**3
    assert (pids / "pids.max").read_text().strip() == "4096"

    cores = float(run_in(hub, "carol", "busy", token, BUSY_TWO_PROCESSES))
    assert cores <= 1.15, f"two busy processes used {cores:.2f} cores on a 1-core spec"


@pytest.fixture
def fake_nvidia_nodes():
    """/dev/nvidia0, nvidia1 and nvidiactl as anyone may open them (no driver: ENXIO)."""
    made = []
    for name, minor in (("nvidia0", 0), ("nvidia1", 1), ("nvidiactl", 255)):
        node = Path("/dev", name)
        if not node.exists():
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(195, minor))
            node.chmod(0o666)
            made.append(node)
    yield
    for node in made:
        node.unlink()


OPEN_DEVICES = """
import errno
for path in ("/dev/null", "/dev/urandom", "/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia1"):
    try:
        open(path, "rb").close()
        print(path, "opened")
    except OSError as error:
        print(path, errno.errorcode[error.errno])
"""


def test_an_instance_opens_its_own_gpu_and_no_other(hub, fake_nvidia_nodes):
    token = hub.add_user("dave")
    hub.start("dave", "gpu", token, {"image": FAKE_GPU, "spec": "gpu.1xa100.8u64g"})
    assert hub.servers("dave")["gpu"]["state"]["devices"][0]["index"] == 0
    allowed = (groups(hub, "dave", "gpu")[1] / "devices.list").read_text().splitlines()
    assert "c 195:0 rwm" in allowed and "c 195:255 rwm" in allowed and "c 1:3 rwm" in allowed
    assert "c 195:1 rwm" not in allowed and "a *:* rwm" not in allowed

    opened = dict(
        line.split() for line in run_in(hub, "dave", "gpu", token, OPEN_DEVICES).split("\n") if line
    )
    assert opened["/dev/null"] == opened["/dev/urandom"] == "opened"
    assert opened["/dev/nvidia0"] != "EPERM" and opened["/dev/nvidiactl"] != "EPERM"
    assert opened["/dev/nvidia1"] == "EPERM", "an instance opened a GPU it was not given"


LEAVE_A_PROCESS = """
import subprocess
print(subprocess.Popen(["sleep", "600"], start_new_session=True).pid)
"""


def test_stopping_kills_what_the_instance_left_and_removes_its_groups(hub):
    token = hub.add_user("erin")
    hub.start("erin", "lab", token, ONE_CORE)
    leftover = int(run_in(hub, "erin", "lab", token, LEAVE_A_PROCESS))
    instance_groups = groups(hub, "erin", "lab")
    assert all(str(leftover) in (g / "cgroup.procs").read_text().split() for g in instance_groups)

    assert hub.api("DELETE", "/users/erin/servers/lab", token).status_code in (202, 204)
    hub.wait_for(lambda: not hub.servers("erin")["lab"]["ready"], what="lab stopped")
    hub.wait_for(lambda: not Path(f"/proc/{leftover}").exists(), 30, "the leftover killed")
    assert not any(group.exists() for group in instance_groups)


def test_users_whose_names_once_shared_a_group_keep_apart(hub):
    """`alice@corp/exp` and `alice_corp/exp` once shared a cgroup: stopping one killed both."""
    tokens = {user: hub.add_user(user) for user in ("alice@corp", "alice_corp")}
    for user, token in tokens.items():
        hub.start(user, "exp", token, ONE_CORE)
    first, second = (groups(hub, user, "exp") for user in tokens)
    assert set(first).isdisjoint(second)

    survivor = pid_of(hub, "alice_corp", "exp")
    response = hub.api("DELETE", "/users/alice@corp/servers/exp", tokens["alice@corp"])
    assert response.status_code in (202, 204)
    hub.wait_for(lambda: not hub.servers("alice@corp")["exp"]["ready"], what="exp stopped")
    assert Path(f"/proc/{survivor}").exists() and hub.servers("alice_corp")["exp"]["ready"]
    assert all(group.exists() for group in second)
    assert str(survivor) in (second[2] / "cgroup.procs").read_text().split()
