"""Attacks on training jobs, for real, against a real hub running as root: another user
reaching alice's jobs, the job's own code (as alice's account) going after the root monitor,
the hub's data dir, its cgroup, the supervisor and the API, and bad input. Each test performs
the attack and asserts it is refused: a failing test is an open hole."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAKE_GPU, TORCH, Hub, environ_of

from atelier.hub.settings import DEFAULT_CONFIG
from atelier.spawner.jobnode import LOG_LIMIT

pytestmark = pytest.mark.e2e
FINISHED = ("completed", "failed", "stopped")
GPU_SPEC = "gpu.1xa100.8u64g"


@pytest.fixture(scope="module")
def hub(envs_dir):
    """A hub of its own: the attack jobs run at once, past the default 4 per user."""
    limits = yaml.safe_load(DEFAULT_CONFIG.read_text())["limits"]
    hub = Hub(envs_dir, limits={**limits, "instances_per_user": 4, "jobs_per_user": 40})
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def alice(hub):
    token = hub.add_user("alice")
    hub.start("alice", "lab", token, {"image": TORCH, "spec": "cpu.2u8g"})
    return token


@pytest.fixture(scope="module")
def bob(hub):
    return hub.add_user("bob")


def body(name: str, code: str | None = None, **fields) -> dict:
    command = ["python", "-c", code or "print('hello')"]
    return {"name": name, "image": TORCH, "spec": "cpu.2u8g", "volume": "lab",
            "command": command, **fields}  # fmt: skip


def submit(hub, token, name, code=None, **fields):
    return hub.atelier("POST", "/jobs", token, json=body(name, code, **fields))


def job(hub, token, name, owner="alice") -> dict:
    return hub.atelier("GET", f"/jobs/{owner}/{name}", token).json()


def wait_status(hub, token, name, statuses=FINISHED, timeout=120) -> dict:
    last = {}

    def there():
        last.update(job(hub, token, name))
        return last if last["status"] in statuses else None

    try:
        return hub.wait_for(there, timeout, f"job {name} to be {statuses}")
    except AssertionError:
        return last  # the caller asserts on it, with what it is


def log_of(hub, token, name, rank=0) -> str:
    return hub.atelier("GET", f"/jobs/alice/{name}/logs", token, params={"rank": rank}).text


def events(hub, token, name) -> list[str]:
    said = hub.atelier("GET", f"/jobs/alice/{name}/events", token).json()["events"]
    return [e["message"] for e in said]


def directory(hub, token, name) -> Path:
    return hub.dir / "data" / "jobs" / job(hub, token, name)["id"]


def monitor_pid(hub, token, name, timeout=60) -> int:
    state = directory(hub, token, name) / "attempt-1" / "node-0.state"
    hub.wait_for(state.exists, timeout, f"job {name}'s monitor")
    return json.loads(state.read_text())["monitor"]


def volume(hub) -> Path:
    return hub.volume("alice", "lab")


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def kill_job_processes(hub) -> None:
    """What the attacks left running as alice's account (their daemons), so nothing
    outlives the module on this shared machine."""
    uid = pwd.getpwnam(hub.account("alice")).pw_uid
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if entry.stat().st_uid == uid and "ATELIER_JOB" in environ_of(int(entry.name)):
                    os.kill(int(entry.name), signal.SIGKILL)


# the jobs' own code: each one attack ------------------------------------------------------

# what a rank can do to the root monitor two processes up (torchrun is its parent)
PROBE = r"""
import ctypes, json, os, signal
out = {}
def attempt(key, action):
    try:
        out[key] = "allowed: " + repr(action())[:200]
    except Exception as error:
        out[key] = "refused: " + type(error).__name__
agent = os.getppid()
monitor = int(open(f"/proc/{agent}/stat").read().rsplit(")", 1)[1].split()[1])
status = open(f"/proc/{monitor}/status").read()
out["monitor_uid"] = [l for l in status.splitlines() if l.startswith("Uid:")][0].split()[1]
cmdline = open(f"/proc/{monitor}/cmdline", "rb").read().split(b"\0")
out["monitor_cmdline"] = [c.decode() for c in cmdline]
jobdir = cmdline[3].decode() if len(cmdline) > 3 else "/nonexistent"
libc = ctypes.CDLL(None, use_errno=True)
def ptrace():
    if libc.ptrace(16, monitor, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "ptrace")
    libc.ptrace(17, monitor, 0, 0)
    return "attached"
def unshare():
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    return "a new user namespace"
def leave(controller):
    with open(f"/sys/fs/cgroup/{controller}/cgroup.procs", "w") as procs:
        procs.write(str(os.getpid()))
    return "moved"
attempt("signal_monitor", lambda: os.kill(monitor, 0))
attempt("sigstop_monitor", lambda: os.kill(monitor, signal.SIGSTOP))
attempt("monitor_environ", lambda: open(f"/proc/{monitor}/environ", "rb").read()[:80])
attempt("monitor_fds", lambda: os.listdir(f"/proc/{monitor}/fd"))
attempt("monitor_fd_open", lambda: open(f"/proc/{monitor}/fd/2", "a"))
attempt("monitor_mem", lambda: open(f"/proc/{monitor}/mem", "rb"))
attempt("monitor_cwd", lambda: os.readlink(f"/proc/{monitor}/cwd"))
attempt("ptrace_monitor", ptrace)
attempt("job_directory", lambda: os.listdir(jobdir))
attempt("launch_file", lambda: open(jobdir + "/attempt-1/node-0.json").read(80))
attempt("rank_log_write", lambda: open(jobdir + "/rank-0.log", "a"))
attempt("user_namespace", unshare)
for controller in ("memory", "pids", "cpu", "devices"):
    attempt(f"leave_{controller}_cgroup", lambda: leave(controller))
attempt("setuid_root", lambda: os.setuid(0))
out["uid"] = os.getuid()
out["cgroups"] = open("/proc/self/cgroup").read()
out["environment"] = sorted(os.environ)
os.write(1, ("PROBE " + json.dumps(out) + "\n").encode())  # one write: torchrun's tee cuts no line
print("\x1eatelier-metrics " + json.dumps({"step": 1, "values": {"loss": float("nan")}}))
"""

# Hooks: a sitecustomize.py in the volume that PYTHONPATH (the job's own environment) puts
# in the node's torchrun, a Python process as the owner's account whose stdout (fd 1) is the
# root monitor's pipe. (Reopening that pipe from a rank, /proc/<torchrun>/fd/1, is refused:
# root made it, 0600; the hook needs no such thing.)
IN_TORCHRUN = 'open("/proc/self/cmdline", "rb").read().split(b"\\0")[1].endswith(b"/torchrun")'

# 400 ranks the job does not have, then 260 MiB for the node's log
FLOOD_HOOK = r"""
import os
if IN_TORCHRUN:
    for n in range(1, 401):
        os.write(1, f"[rank{n}]: forged by torchrun\n".encode())
    os.write(1, b"[rank999999]: forged by torchrun\n")
    line = b"x" * 65535 + b"\n"
    for _ in range(260 * 16):
        os.write(1, line)
""".replace("IN_TORCHRUN", IN_TORCHRUN)
FLOOD = "print('flooded', flush=True)"

# 200 MiB without a newline: held in the root monitor's memory, whole?
LONG_LINE_HOOK = r"""
import os
if IN_TORCHRUN:
    chunk = b"y" * (1 << 20)
    for _ in range(200):
        os.write(1, chunk)
    os.write(1, b"\n")
""".replace("IN_TORCHRUN", IN_TORCHRUN)
# then the rank waits for the test to have looked (a file in the volume, its working dir)
LONG_LINE = r"""
import os, time
print("written", flush=True)
for _ in range(600):
    if os.path.exists("longline-looked"):
        break
    time.sleep(0.5)
"""

# a daemon (double fork, setsid) that keeps torchrun's stdout, the monitor's pipe, open
HOLDER_HOOK = r"""
import os, time
if IN_TORCHRUN and os.fork() == 0:
    os.setsid()
    if os.fork():
        os._exit(0)
    os.write(1, f"[rank0]:daemon {os.getpid()}\n".encode())
    time.sleep(900)
    os._exit(0)
""".replace("IN_TORCHRUN", IN_TORCHRUN)
HOLDER = "import time; time.sleep(900)"

# a daemon (double fork, setsid, stdio on /dev/null) left behind; the rank waits
DAEMON = r"""
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.write(w, str(os.getpid()).encode())
    time.sleep(900)
    os._exit(0)
os.close(w)
print("daemon", os.read(r, 20).decode(), flush=True)
time.sleep(900)
"""

# a checkpoint step the SDK's save_checkpoint takes (any int >= 0), past SQLite's INTEGER
BIG_STEP = r"""
import json, time
print("\x1eatelier-metrics " + json.dumps({"step": 2**63, "checkpoint": True}), flush=True)
time.sleep(2)
"""

HOME = r"""
import json, os
home = os.environ["HOME"]
with open(os.path.join(home, "left-behind"), "w") as file:
    file.write("alice's")
st = os.statvfs(home)
print("HOME " + json.dumps({"home": home, "bytes": st.f_blocks * st.f_frsize}), flush=True)
"""

QUIET = "import time; time.sleep(120)"
# 24 MiB of metrics (2000 steps of 1000 values), as atelier.training.log_metrics prints them
METRICS = r"""
import json, sys
values = {f"k{i}": 0.5 for i in range(1000)}
for step in range(2000):
    sys.stdout.write("\x1eatelier-metrics " + json.dumps({"step": step, "values": values}) + "\n")
sys.stdout.flush()
"""
# its output and inputs are links alice left in her volume, to a root-owned directory
SYMLINKS = r"""
import os
for key in ("ATELIER_OUTPUT_DIR", "ATELIER_CHECKPOINT_DIR"):
    try:
        os.makedirs(os.environ[key], exist_ok=True)
        print("made", key, flush=True)
    except OSError as error:
        print("refused", key, type(error).__name__, flush=True)
"""
FAILS = "raise SystemExit(3)"

HOOKS = {"flood": FLOOD_HOOK, "longline": LONG_LINE_HOOK, "holder": HOLDER_HOOK}
ATTACKS = {
    "probe": (PROBE, {}),
    "flood": (FLOOD, {"environment": {"PYTHONPATH": "hook-flood"}}),
    "longline": (LONG_LINE, {"environment": {"PYTHONPATH": "hook-longline"}}),
    "holder": (HOLDER, {"environment": {"PYTHONPATH": "hook-holder"}}),
    "daemon": (DAEMON, {}),
    "bigstep": (BIG_STEP, {"image": FAKE_GPU, "spec": GPU_SPEC}),
    "home": (HOME, {}),
    **{f"quiet-{n}": (QUIET, {}) for n in range(3)},
    "metrics": (METRICS, {}),
    "revoked": (FAILS, {}),
    "symlinks": (SYMLINKS, {"output": "evil-out", "inputs": ["evil-in"]}),
}


@pytest.fixture(scope="module")
def launched(hub, alice):
    """Every attack job, submitted at once (each takes torchrun's slow start)."""
    entry = pwd.getpwnam(hub.account("alice"))
    target = hub.shared_dir / "target"
    target.mkdir(mode=0o755)
    for link, to in (("evil-out", target), ("evil-in", Path("/etc"))):
        (volume(hub) / link).symlink_to(to)
        os.lchown(volume(hub) / link, entry.pw_uid, entry.pw_gid)
    for name, hook in HOOKS.items():  # what alice's own code could write there as well
        hooks = volume(hub) / f"hook-{name}"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(hook)
        for path in (hooks, hooks / "sitecustomize.py"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    for name, (code, fields) in ATTACKS.items():
        response = submit(hub, alice, name, code, **fields)
        assert response.status_code == 201, response.text
    yield alice
    kill_job_processes(hub)
    for name in ATTACKS:  # what a stop that failed left of its cgroups
        for group in Path("/sys/fs/cgroup").glob(f"*/atelier/{hub.account('alice')}.{name}.0"):
            for _ in range(50):
                with contextlib.suppress(OSError):
                    group.rmdir()
                    break
                time.sleep(0.1)


def test_the_attack_jobs_are_accepted(launched):
    pass  # they run while the cheap tests below go on


# (a) another user --------------------------------------------------------------------------


def test_bob_reaches_none_of_alices_jobs_under_any_spelling(hub, launched, bob):
    listed = hub.atelier("GET", "/jobs", bob, params={"owner": "alice"}).json()["jobs"]
    assert [j for j in listed if j["owner"] == "alice"] == []
    for path in ("alice/probe", "%61lice/probe", "alice/prob%65", "Alice/probe", "alice/PROBE"):
        for method, tail in [("GET", ""), ("GET", "/logs"), ("GET", "/logs?download=1"),
                             ("GET", "/logs?follow=1"), ("GET", "/events"),
                             ("GET", "/metrics"), ("POST", "/stop"), ("POST", "/resume"),
                             ("DELETE", "")]:  # fmt: skip
            response = hub.atelier(method, f"/jobs/{path}{tail}", bob)
            assert response.status_code == 404, (method, path, tail, response.text)
    assert job(hub, launched, "probe")["status"] != "stopped"


def test_bob_cannot_submit_as_alice_nor_into_her_volume(hub, launched, bob):
    for extra in ({"owner": "alice"}, {"owner": "alice", "volume": "lab"}):
        response = hub.atelier("POST", "/jobs", bob, json={**body("intruder"), **extra})
        assert response.status_code == 404, response.text
    response = hub.atelier("POST", "/jobs", bob, json=body("intruder"))  # his own "lab"? none
    assert response.status_code == 400 and response.json()["error"]["field"] == "volume"
    assert hub.atelier("GET", "/jobs/alice/intruder", launched).status_code == 404


def test_a_token_without_jobs_manage_changes_nothing_for_admins_too(hub, launched):
    scopes = ["access:services!service=atelier", "admin:users", "custom:atelier:jobs:read"]
    admin_reader = hub.add_user("admin", scopes)
    alice_reader = hub.add_user("alice", ["access:services!service=atelier",
                                          "custom:atelier:jobs:read"])  # fmt: skip
    assert hub.atelier("GET", "/jobs/alice/probe", admin_reader).status_code == 200
    for token, owner in ((admin_reader, "alice"), (admin_reader, None), (alice_reader, None)):
        refused = hub.atelier("POST", "/jobs", token, json={**body("scoped"), "owner": owner})
        assert refused.status_code == 403, refused.text
        for method, tail in [("POST", "/stop"), ("POST", "/resume"), ("DELETE", "")]:
            response = hub.atelier(method, f"/jobs/alice/quiet{tail}", token)
            assert response.status_code == 403, (method, tail, response.text)
    assert hub.atelier("GET", "/jobs/alice/scoped", launched).status_code == 404


def test_more_devices_than_the_hub_has_are_refused_at_once(hub, launched):
    response = submit(hub, launched, "greedy", image=FAKE_GPU, spec=GPU_SPEC, nodes=3)
    assert response.status_code == 400 and response.json()["error"]["field"] == "nodes"


# (c) bad input ---------------------------------------------------------------------------

BAD = [
    ({"name": "١٢"}, "name"),
    ({"name": "a" * 64}, "name"),
    ({"name": 5}, "name"),
    ({"name": "a\u0000b"}, "name"),
    ({"image": 5}, "image"),
    ({"spec": None}, "spec"),
    ({"volume": ["lab"]}, "volume"),
    ({"volume": ""}, "volume"),
    ({"nodes": 10**30}, "nodes"),
    ({"nodes": True}, "nodes"),
    ({"nodes": 1.0}, "nodes"),
    ({"processes_per_node": "٣"}, "processes_per_node"),
    ({"retries": 11}, "retries"),
    ({"time_limit_minutes": -1}, "time_limit_minutes"),
    ({"time_limit_minutes": 10**9}, "time_limit_minutes"),
    ({"environment": {"A": "x\u0000"}}, "environment"),
    ({"environment": {"A": 1}}, "environment"),
    ({"environment": {"1A": "x"}}, "environment"),
    ({"environment": {"JUPYTERHUB_API_TOKEN": "x"}}, "environment"),
    ({"environment": {f"V{i}": "x" for i in range(65)}}, "environment"),
    ({"environment": {"A": "x" * 4097}}, "environment"),
    ({"environment": "A=1"}, "environment"),
    ({"args": ["x" * 4097]}, "args"),
    ({"args": [1]}, "args"),
    ({"args": ["x"] * 257}, "args"),
    ({"command": []}, "command"),
    ({"command": [""]}, "command"),
    ({"command": "python"}, "command"),
    ({"command": ["python"] + ["a"] * 300}, "command"),
    ({"command": ["-h"]}, "command"),  # torchrun's own option, not a program
    ({"command": ["--nnodes=1", "python", "-c", "pass"]}, "command"),
    ({"command": None, "script": "-h.py"}, "script"),
    ({"script": "x.py"}, "script"),  # both script and command
    ({"command": None, "script": "a/../b.py"}, "script"),
    ({"command": None, "script": "x.sh"}, "script"),
    ({"hyperparameters": {"--lr": 1}}, "hyperparameters"),
    ({"hyperparameters": {"lr=1": 1}}, "hyperparameters"),
    ({"hyperparameters": {"": 1}}, "hyperparameters"),
    ({"hyperparameters": {"a" * 129: 1}}, "hyperparameters"),
    ({"hyperparameters": {"lr": [1]}}, "hyperparameters"),
    ({"hyperparameters": [["lr", 1]]}, "hyperparameters"),
    ({"hyperparameters": {"lr": "x" * 200_000}}, "hyperparameters"),  # past execve's 128 KiB
    ({"inputs": "data"}, "inputs"),
    ({"inputs": ["/etc"]}, "inputs"),
    ({"inputs": ["."]}, "inputs"),
    ({"inputs": ["d"] * 17}, "inputs"),
    ({"output": ""}, "output"),
    ({"output": "./"}, "output"),
    ({"output": 5}, "output"),
    ({"output": "a/../../b"}, "output"),
    ({"colour": "red"}, "colour"),
]


@pytest.mark.parametrize(("fields", "field"), BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(hub, alice, fields, field):
    before = hub.atelier("GET", "/jobs", alice).json()["jobs"]
    raw = {k: v for k, v in {**body("bad"), **fields}.items() if v is not None}
    response = hub.atelier("POST", "/jobs", alice, json=raw)
    if response.status_code == 201:  # accepted: it would run; take it back
        hub.atelier("DELETE", "/jobs/alice/bad", alice)
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert response.json()["error"]["field"] == field, response.text
    assert [j["name"] for j in hub.atelier("GET", "/jobs", alice).json()["jobs"]] == [
        j["name"] for j in before
    ]


def test_bodies_that_are_not_objects_or_too_big_are_4xx(hub, alice):
    for data in (b"[]", b'"x"', b"{", b"null", b'{"name": NaN}'):
        response = hub.atelier("POST", "/jobs", alice, data=data)
        assert 400 <= response.status_code < 500, (data, response.text)
    huge = body("huge", args=["x" * 4096] * 256, environment={"A": "x" * 4096})
    huge["hyperparameters"] = {"pad": "x" * (1 << 20)}
    assert hub.atelier("POST", "/jobs", alice, json=huge).status_code == 413
    assert hub.atelier("GET", "/jobs/alice/huge", alice).status_code == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"rank": "abc"}, "rank"),
        ({"rank": "-1"}, "rank"),
        ({"rank": "١"}, "rank"),
        ({"rank": "²"}, "rank"),
        ({"rank": "1"}, "rank"),  # world size 1
        ({"rank": ""}, "rank"),
        ({"rank": "9" * 30}, "rank"),
        ({"rank": "0x0"}, "rank"),
        ({"tail": "0"}, "tail"),
        ({"tail": "abc"}, "tail"),
        ({"tail": "100001"}, "tail"),
        ({"tail": "1e3"}, "tail"),
    ],
)
def test_bad_log_queries_are_400_naming_the_parameter(hub, launched, query, field):
    response = hub.atelier("GET", "/jobs/alice/probe/logs", launched, params=query)
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert response.json()["error"]["field"] == field


# (b) the job's own code ------------------------------------------------------------------


def probe_results(hub, token) -> dict:
    done = wait_status(hub, token, "probe")
    assert done["status"] == "completed", (done, events(hub, token, "probe"))
    line = next(ln for ln in log_of(hub, token, "probe").splitlines() if ln.startswith("PROBE "))
    return json.loads(line.removeprefix("PROBE "))


def test_a_rank_cannot_signal_trace_or_read_the_root_monitor(hub, launched):
    found = probe_results(hub, launched)
    assert found["monitor_uid"] == "0" and "atelier.spawner.jobnode" in found["monitor_cmdline"]
    assert found["uid"] == pwd.getpwnam(hub.account("alice")).pw_uid
    keys = ("signal_monitor", "sigstop_monitor", "monitor_environ", "monitor_fds",
            "monitor_fd_open", "monitor_mem", "monitor_cwd", "ptrace_monitor")  # fmt: skip
    allowed = {key: found[key] for key in keys if not found[key].startswith("refused")}
    assert not allowed, allowed


def test_a_rank_cannot_reach_the_job_directory_or_leave_its_confinement(hub, launched):
    found = probe_results(hub, launched)
    keys = ["job_directory", "launch_file", "rank_log_write", "user_namespace", "setuid_root"]
    keys += [f"leave_{c}_cgroup" for c in ("memory", "pids", "cpu", "devices")]
    allowed = {key: found[key] for key in keys if not found[key].startswith("refused")}
    assert not allowed, allowed
    group = f"atelier/{hub.account('alice')}.probe.0"
    for controller in ("memory", "pids", "devices"):
        assert f"{controller}:/{group}" in found["cgroups"], found["cgroups"]


def test_a_rank_gets_none_of_the_hubs_secrets(hub, launched):
    environment = probe_results(hub, launched)["environment"]
    secret = [k for k in environment if k.startswith(("JUPYTERHUB_", "JPY_", "CONFIGPROXY"))]
    assert not secret and "ATELIER_CONFIG" not in environment, environment


def test_metrics_answer_strict_json_whatever_a_rank_prints(hub, launched):
    probe_results(hub, launched)
    response = hub.atelier("GET", "/jobs/alice/probe/metrics", launched)
    assert response.status_code == 200

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON (JSON.parse in the widget refuses it)")

    json.loads(response.text, parse_constant=refuse)


def test_a_rank_cannot_make_logs_for_ranks_the_job_does_not_have(hub, launched):
    done = wait_status(hub, launched, "flood", timeout=180)
    assert done["status"] == "completed", (done, events(hub, launched, "flood"))
    logs = sorted(p.name for p in directory(hub, launched, "flood").glob("rank-*.log"))
    assert set(logs) <= {"rank-0.log"}, f"{len(logs)} rank logs in the hub's data dir: {logs[:5]}"


def test_the_node_log_is_bounded_like_a_rank_log(hub, launched):
    wait_status(hub, launched, "flood", timeout=180)
    node_log = directory(hub, launched, "flood") / "node-0.log"
    size = node_log.stat().st_size
    try:
        assert size <= LOG_LIMIT + (1 << 20), f"node-0.log holds {size >> 20} MiB of the job's"
    finally:
        node_log.unlink(missing_ok=True)  # disk of a shared machine


def test_a_line_without_end_stays_out_of_the_root_monitors_memory(hub, launched):
    monitor = monitor_pid(hub, launched, "longline")
    try:
        hub.wait_for(lambda: "written" in log_of(hub, launched, "longline"), 120, "the line")
        status = Path(f"/proc/{monitor}/status").read_text().splitlines()
        peak = int(next(ln for ln in status if ln.startswith("VmHWM:")).split()[1])  # KiB
    finally:
        (volume(hub) / "longline-looked").touch()
    assert wait_status(hub, launched, "longline")["status"] == "completed"
    assert peak < 100 * 1024, f"the root monitor's peak memory was {peak >> 10} MiB"


def daemon_of(hub, token, name) -> int:
    hub.wait_for(lambda: "daemon " in log_of(hub, token, name), 90, f"{name}'s daemon")
    pid = int(log_of(hub, token, name).split("daemon ", 1)[1].split()[0])
    assert "ATELIER_JOB" in environ_of(pid)
    return pid


def test_a_double_forked_daemon_does_not_survive_a_stop(hub, launched):
    pid = daemon_of(hub, launched, "daemon")
    assert hub.atelier("POST", "/jobs/alice/daemon/stop", launched).status_code == 202
    done = wait_status(hub, launched, "daemon", timeout=60)
    assert done["status"] == "stopped", (done, events(hub, launched, "daemon"))
    assert not alive(pid)


def test_a_daemon_holding_the_monitors_pipe_does_not_survive_a_stop_nor_a_delete(hub, launched):
    pid = daemon_of(hub, launched, "holder")
    try:
        assert hub.atelier("POST", "/jobs/alice/holder/stop", launched).status_code == 202
        done = wait_status(hub, launched, "holder", timeout=75)
        said = events(hub, launched, "holder")
        survived = alive(pid)
        deleted = hub.atelier("DELETE", "/jobs/alice/holder", launched).status_code
        assert (done["status"], survived) == ("stopped", False), (done["reason"], said)
        assert deleted == 204 and not alive(pid)
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_a_huge_checkpoint_step_does_not_wedge_the_job_or_its_devices(hub, launched):
    done = wait_status(hub, launched, "bigstep", timeout=20)
    if done["status"] not in FINISHED:
        hub.atelier("POST", "/jobs/alice/bigstep/stop", launched)
        done = wait_status(hub, launched, "bigstep", timeout=15)
    assert done["status"] in FINISHED, (
        f"{done['status']} with devices {done['devices']}: not even a stop ends it",
        events(hub, launched, "bigstep"),
    )


def home_of(hub, token) -> dict:
    done = wait_status(hub, token, "home")
    log = log_of(hub, token, "home")
    assert done["status"] == "completed", (done, events(hub, token, "home"), log[-2000:])
    line = next(ln for ln in log.splitlines() if ln.startswith("HOME "))
    return json.loads(line.removeprefix("HOME "))


def test_the_job_home_is_bounded_like_an_instance_home(hub, launched):
    limit = yaml.safe_load(hub.config.read_text())["limits"]
    size = home_of(hub, launched)["bytes"]
    assert size <= (limit["ephemeral_storage_gb"] + 1) * 1024**3, (
        f"the job's HOME is on a {size >> 30} GiB filesystem (the host's), not bounded by "
        f"ephemeral_storage_gb={limit['ephemeral_storage_gb']}"
    )


def test_the_job_home_goes_with_the_job(hub, launched):
    home = Path(home_of(hub, launched)["home"])
    assert hub.atelier("DELETE", "/jobs/alice/home", launched).status_code == 204
    left = sorted(p.name for p in home.iterdir()) if home.exists() else []
    assert left == [], f"{home} still holds {left} after the job was deleted"


def test_root_follows_no_link_the_job_left_for_its_output_or_inputs(hub, launched):
    done = wait_status(hub, launched, "symlinks")
    assert done["status"] == "completed", (done, events(hub, launched, "symlinks"))
    target = hub.shared_dir / "target"
    assert list(target.iterdir()) == []
    assert (target.stat().st_uid, oct(target.stat().st_mode & 0o7777)) == (0, "0o755")
    assert not Path("/etc/checkpoints").exists()


def test_following_a_log_while_the_job_is_deleted_is_no_500(hub, launched):
    answers = []
    for name in (f"quiet-{n}" for n in range(3)):  # a race: three tries
        wait_status(hub, launched, name, ("running",), timeout=90)
        answer = {"job": name}

        def follow(name=name, answer=answer):
            path = f"/jobs/alice/{name}/logs"
            response = hub.atelier("GET", path, launched, params={"follow": 1})
            answer.update(status=response.status_code, text=response.text[:100])

        follower = threading.Thread(target=follow)
        follower.start()
        time.sleep(1.5)
        assert hub.atelier("DELETE", f"/jobs/alice/{name}", launched).status_code == 204
        follower.join(60)
        answers.append(answer)
    assert all(a.get("status") in (200, 404, 410) for a in answers), answers


def service_peak_mib(hub) -> int:
    """The Atelier service's peak memory (VmHWM) so far."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            environment = environ_of(int(entry.name))
            if environment.get("JUPYTERHUB_SERVICE_NAME") == "atelier" and environment.get(
                "ATELIER_CONFIG"
            ) == str(hub.config):
                status = (entry / "status").read_text().splitlines()
                return int(next(ln for ln in status if ln.startswith("VmHWM:")).split()[1]) >> 10
    raise AssertionError("no Atelier service process found")


def test_reading_a_jobs_metrics_stays_bounded_in_the_shared_service(hub, launched):
    done = wait_status(hub, launched, "metrics", timeout=180)
    assert done["status"] == "completed", (done, events(hub, launched, "metrics"))
    size = (directory(hub, launched, "metrics") / "metrics.jsonl").stat().st_size >> 20
    before = service_peak_mib(hub)
    response = hub.atelier("GET", "/jobs/alice/metrics/metrics", launched)
    assert response.status_code == 200
    grown, answer = service_peak_mib(hub) - before, len(response.content) >> 20
    assert grown < 100 and answer < 4, (
        f"{size} MiB of metrics (limit {LOG_LIMIT >> 20} MiB a node) made the root service "
        f"grow by {grown} MiB and answer {answer} MiB"
    )


def test_a_job_does_not_resume_on_an_image_its_owner_may_no_longer_use(hub, launched):
    done = wait_status(hub, launched, "revoked")
    assert done["status"] == "failed", done
    hidden = {"visibility": "private", "owner": "admin"}
    assert hub.atelier("PATCH", f"/images/{TORCH}", json=hidden).status_code == 200
    try:
        refused = submit(hub, launched, "after-revoke")
        assert refused.status_code == 400 and refused.json()["error"]["field"] == "image"
        resumed = hub.atelier("POST", "/jobs/alice/revoked/resume", launched)
        if resumed.status_code == 202:
            ran = wait_status(hub, launched, "revoked")["status"]
            assert 400 <= resumed.status_code < 500, (ran, events(hub, launched, "revoked"))
    finally:
        public = {"visibility": "public", "owner": None}
        assert hub.atelier("PATCH", f"/images/{TORCH}", json=public).status_code == 200


def test_a_deleted_users_jobs_stop_and_go_with_them(hub):
    """A running job of a deleted user stops as a stop would (nothing of theirs left mounted
    or running) and no one who later takes the name sees it, its logs or its events."""
    token = hub.add_user("dora")
    hub.start("dora", "lab", token, {"image": TORCH, "spec": "cpu.2u8g"})
    made = submit(hub, token, "long", QUIET)
    assert made.status_code == 201, made.text
    found = hub.wait_for(
        lambda: (j := job(hub, token, "long", owner="dora"))["status"] == "running" and j,
        120,
        "dora's job to run",
    )
    account, logs = hub.account("dora"), hub.dir / "data" / "jobs" / found["id"]
    uid = pwd.getpwnam(account).pw_uid
    assert hub.api("DELETE", "/users/dora").status_code == 204
    running = [p for p in Path("/proc").iterdir() if p.name.isdigit() and owned(p, uid)]
    assert running == [], [(p / "cmdline").read_bytes() for p in running]
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    assert not [m for m in mounts if m.startswith(f"{hub.shared_dir}/homes/{account}/")]
    assert not logs.exists()
    audit = hub.atelier("GET", "/audit", params={"resource": "dora/long"}).json()["events"]
    assert any(e["action"] == "deleteTrainJob" and "owner" in e["reason"] for e in audit)
    again = hub.add_user("dora")  # a new person of the name
    assert hub.atelier("GET", "/jobs", again).json()["jobs"] == []
    assert hub.atelier("GET", "/jobs/dora/long", again).status_code == 404


def owned(process: Path, uid: int) -> bool:
    with contextlib.suppress(OSError):
        return process.stat().st_uid == uid
    return False
