"""Attacks on save as image, local backend: by another hub user (bob) on alice's snapshots,
operations and saves; by alice from inside her own instance on what the hub does as root
while it saves or restores her home; on what a snapshot shared with a workspace carries; with
bad input on every field; and with races. One hub, four instance starts for the module.

Each test performs one attack and asserts its refusal; the one hole left open (outside
Atelier's code: configurable-http-proxy) is `xfail(strict=True)` with the hole as its reason.

Several attacks watch, from alice's instance, for the `du` and `tar` the hub runs as her
account (`WATCHER`): what she can read of them (/proc/<pid>/environ, fds), whether she can
read their memory (process_vm_readv: ptrace's check) or signal them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import BASE, Hub, environ_of
from kernels import run_in
from saving import follow, save

from atelier.hub.settings import DEFAULT_CONFIG
from atelier.spawner.local.snapshots import layer_path, snapshots_dir

pytestmark = pytest.mark.e2e
ON_BASE = {"image": BASE, "spec": "cpu.2u4g"}
LIMIT_GB = 0.75  # limits.snapshot_size_gb: the base environment (~350 MB) and some room
TRAP_FILES = 20000  # a directory du and tar take a while over (they are caught inside it)
# what a helper the hub runs as the user may carry in its environment
HARMLESS_ENV = {"PATH", "LANG", "LC_ALL", "LANGUAGE", "HOME", "USER", "LOGNAME", "SHELL", "TZ"}
SECRET_KEYS = ("TOKEN", "SECRET", "CREDENTIAL", "PASSWORD", "KEY")

PREPARE = r"""
import errno, json, os, pathlib, socket
home = pathlib.Path.home()
trap = home / "trap"
trap.mkdir()
for i in range(TRAP_FILES):
    (trap / f"f{i:05}").touch()
tried = {}
os.mkfifo(home / "fifo")
sock = socket.socket(socket.AF_UNIX)
sock.bind(str(home / "sock"))
sock.close()
for what, attempt in (
    ("mknod", lambda: os.mknod(home / "null2", 0o20666, os.makedev(1, 3))),
    ("hardlink", lambda: os.link("/etc/shadow", home / "shadow-hard")),
    ("hardlink-data", lambda: os.link(DATA_DIR + "/jupyterhub_cookie_secret", home / "cs")),
):
    try:
        attempt()
        tried[what] = "made"
    except OSError as error:
        tried[what] = errno.errorcode[error.errno]
(home / "new\nline").write_text("newline kept")
for name in NAMES:
    (home / name).write_text("just a name")
(home / "sub" / "work").mkdir(parents=True)
(home / "sub" / "work" / "keep.txt").write_text("not the volume")
(home / "hub-data").symlink_to(DATA_DIR)
(home / "hub-secret").symlink_to(DATA_DIR + "/jupyterhub_cookie_secret")
with open(home / ".bashrc", "a") as rc:
    rc.write("export KEPT=1\n")
print(json.dumps(tried))
"""
# names tar would read as options, or as excludes, were they ever on its command line
NAMES = [
    "--checkpoint=1",
    "--checkpoint-action=exec=touch pwned",
    "--to-command=touch pwned",
    "--exclude=.bashrc",
    "--exclude=trap",
    "-P",
]

LOOK = r"""
import json, os, pathlib, stat
home = pathlib.Path.home()
print(json.dumps({
    "fifo": stat.S_ISFIFO(os.lstat(home / "fifo").st_mode),
    "newline": (home / "new\nline").read_text(),
    "names": sorted(p.name for p in home.iterdir() if p.name.startswith("-")),
    "bashrc": "export KEPT=1" in (home / ".bashrc").read_text(),
    "keep": (home / "sub" / "work" / "keep.txt").read_text(),
    "trap": len(os.listdir(home / "trap")),
    "hub-data": os.readlink(home / "hub-data"),
    "reach": os.access(home / "hub-secret", os.R_OK),
    "work": os.readlink(home / "work"),
    "owner": os.lstat(home / ".bashrc").st_uid == os.getuid(),
}))
"""

# Runs detached in alice's instance, as her: records every du and tar of her uid that her
# own processes did not start (the hub's), and stops those named in FREEZE. Ends when the
# control file appears (continuing what it stopped).
WATCHER = r"""
import ctypes, json, os, select, signal, sys, time

out, control, freeze, trap, seconds = sys.argv[1:6]
freeze = set(filter(None, freeze.split(",")))
deadline = time.monotonic() + float(seconds)
me = str(os.getuid())
libc = ctypes.CDLL(None, use_errno=True)


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


libc.process_vm_readv.argtypes = [
    ctypes.c_int, ctypes.POINTER(IOVec), ctypes.c_ulong, ctypes.POINTER(IOVec),
    ctypes.c_ulong, ctypes.c_ulong,
]
libc.process_vm_readv.restype = ctypes.c_ssize_t


def log(record):
    with open(out, "a") as file:
        file.write(json.dumps(record) + "\n")


def attempt(action):
    try:
        return action()
    except OSError as error:
        return f"errno {error.errno}"


def memory(pid):
    with open(f"/proc/{pid}/maps") as maps:
        start = int(maps.readline().split("-")[0], 16)
    buffer = ctypes.create_string_buffer(16)
    local, remote = IOVec(ctypes.addressof(buffer), 16), IOVec(start, 16)
    n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return True if n == 16 else f"errno {ctypes.get_errno()}"


def environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as file:
        items = file.read().split(b"\0")
    return dict(i.decode(errors="replace").split("=", 1) for i in items if b"=" in i)


def fds(pid):
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = attempt(lambda: os.readlink(f"/proc/{pid}/fd/{fd}"))
        entry = {"target": target}
        if target.startswith("/") and not target.startswith("/dev/"):
            def peek():
                opened = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
                try:
                    return len(os.read(opened, 64))
                finally:
                    os.close(opened)
            entry["reopened_bytes"] = attempt(peek)
        found[fd] = entry
    return found


def read(path, mode="r"):
    with open(path, mode) as file:
        return file.read()


inotify = libc.inotify_init1(os.O_NONBLOCK)
if trap != "-":
    libc.inotify_add_watch(inotify, trap.encode(), 0x20)  # IN_OPEN: du or tar is in there
seen, frozen = set(), []
log({"ready": True})
while time.monotonic() < deadline and not os.path.exists(control):
    if select.select([inotify], [], [], 0.02)[0]:
        attempt(lambda: os.read(inotify, 65536))
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in seen:
            continue
        pid = int(name)
        try:
            status = read(f"/proc/{pid}/status")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        comm, uids = fields.get("Name", "").strip(), fields.get("Uid", "").split()
        if comm not in ("tar", "du") or me not in uids:
            continue
        seen.add(pid)
        record = {"pid": pid, "comm": comm, "uids": uids}
        if comm in freeze:
            record["stopped"] = attempt(lambda: os.kill(pid, signal.SIGSTOP) or True)
            if record["stopped"] is True:
                frozen.append(pid)
        record["seccomp"] = fields.get("Seccomp", "").strip()
        record["cmdline"] = attempt(lambda: read(f"/proc/{pid}/cmdline", "rb").decode().split("\0"))
        record["signal"] = attempt(lambda: os.kill(pid, 0) or True)
        record["memory"] = attempt(lambda: memory(pid))
        record["environ"] = attempt(lambda: environ(pid))
        record["fds"] = attempt(lambda: fds(pid))
        record["cgroup"] = attempt(lambda: read(f"/proc/{pid}/cgroup"))
        log(record)
for pid in frozen:
    attempt(lambda: os.kill(pid, signal.SIGCONT))
log({"done": True, "frozen": frozen})
"""

START_WATCHER = """
import pathlib, subprocess, sys
work = pathlib.Path.home() / "work"
(work / "watch.py").write_text(WATCHER)
for name in (OUT, CONTROL):
    (work / name).unlink(missing_ok=True)
subprocess.Popen(
    [sys.executable, str(work / "watch.py"), str(work / OUT), str(work / CONTROL), FREEZE,
     str(pathlib.Path.home() / "trap"), "600"],
    start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    stderr=open(work / (OUT + ".err"), "w"),
)
print("started")
"""


class Watcher:
    """WATCHER in alice's instance `src`, read and ended from here (root reads her volume)."""

    count = 0

    def __init__(self, hub: Hub, token: str, freeze: str = ""):
        Watcher.count += 1
        self.hub, self.work = hub, hub.home("alice", "src") / "work"
        self.out, self.control = f"watch-{Watcher.count}.jsonl", f"watch-{Watcher.count}.stop"
        code = (
            f"WATCHER = {WATCHER!r}\nOUT = {self.out!r}\nCONTROL = {self.control!r}\n"
            f"FREEZE = {freeze!r}\n{START_WATCHER}"
        )
        assert run_in(hub, "alice", "src", token, code) == "started\n"
        hub.wait_for(lambda: any("ready" in r for r in self.lines()), 30, "the watcher")

    def lines(self) -> list[dict]:
        path = self.work / self.out
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def helpers(self) -> list[dict]:
        return [r for r in self.lines() if "pid" in r]

    def frozen(self) -> list[int]:
        return [r["pid"] for r in self.helpers() if r.get("stopped") is True]

    def stop(self) -> list[dict]:
        (self.work / self.control).touch()
        self.hub.wait_for(lambda: any("done" in r for r in self.lines()), 30, "the watcher's end")
        return self.helpers()


# fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub(envs_dir):
    limits = yaml.safe_load(DEFAULT_CONFIG.read_text())["limits"]
    limits.update(instances_per_user=4, snapshot_size_gb=LIMIT_GB)
    hub = Hub(envs_dir, limits=limits)
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def alice(hub):
    return hub.add_user("alice")


@pytest.fixture(scope="module")
def bob(hub):
    return hub.add_user("bob")


@pytest.fixture(scope="module")
def src(hub, alice) -> dict:
    """alice's instance `src`, its home holding every odd thing she can make there."""
    hub.start("alice", "src", alice, ON_BASE)
    code = (
        f"TRAP_FILES = {TRAP_FILES}\nNAMES = {NAMES!r}\nDATA_DIR = {str(hub.dir / 'data')!r}\n"
        f"{PREPARE}"
    )
    return json.loads(run_in(hub, "alice", "src", alice, code))


def layers(hub) -> set[str]:
    directory = snapshots_dir(hub.dir / "data")
    return {path.name for path in directory.iterdir()} if directory.exists() else set()


def catalog_layers(hub) -> set[str]:
    """The layer files the catalog's snapshots name."""
    images = hub.atelier("GET", "/images").json()["images"]
    return {
        layer_path(snapshots_dir(hub.dir / "data"), i["digest"]).name
        for i in images
        if i.get("base") and i.get("digest")
    }


def image_names(hub) -> set[str]:
    return {i["name"] for i in hub.atelier("GET", "/images").json()["images"]}


def operation_ids(hub, owner: str = "alice") -> set[str]:
    answer = hub.atelier("GET", f"/operations?owner={owner}").json()["operations"]
    return {o["id"] for o in answer}


def settle(hub, owner: str = "alice", timeout: float = 300) -> None:
    """Wait until none of `owner`'s saves runs."""

    def quiet():
        answer = hub.atelier("GET", f"/operations?owner={owner}").json()["operations"]
        return all(o["status"] != "running" for o in answer)

    hub.wait_for(quiet, timeout, f"{owner}'s saves to end")


def forget(hub, *names: str) -> None:
    """Delete these images if they exist (as admin, with the CLI: any name)."""
    for name in names:
        if name in image_names(hub):
            hub.cli("images", "delete", name)


def service_token(hub) -> str:
    """The Atelier service's own JupyterHub token, as root reads it."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"atelier.hub.service" in command and str(hub.process.pid).encode() in command:
                return environ_of(int(pid))["JUPYTERHUB_API_TOKEN"]
    raise AssertionError("no Atelier service process found")


@pytest.fixture(scope="module")
def snap(hub, alice, src) -> dict:
    """`src` saved as alice/snap and restored into alice's `two`, with a watcher in `src`
    over both (the save's du and tar run in the Atelier service, the restore's tar in the
    hub)."""
    watcher = Watcher(hub, alice)
    try:
        response = save(hub, alice, "src", "snap")
        assert response.status_code == 202, response.text
        operation = follow(hub, alice, response.json())
        assert operation["status"] == "succeeded", operation
        hub.start("alice", "two", alice, {**ON_BASE, "image": "alice/snap"})
    finally:
        helpers = watcher.stop()
    image = hub.atelier("GET", "/images/alice/snap", alice).json()
    return {
        "operation": operation,
        "image": image,
        "layer": layer_path(snapshots_dir(hub.dir / "data"), image["digest"]),
        "helpers": helpers,
    }


@pytest.fixture(scope="module")
def team(hub, alice, bob) -> str:
    body = {"name": "team", "members": ["alice", "bob"]}
    assert hub.atelier("POST", "/workspaces", json=body).status_code == 201
    return "team"


@pytest.fixture(scope="module")
def shared(hub, alice, bob, snap, team) -> dict:
    """alice/snap shared with the team, and bob's `b1` started from it."""
    share = {"visibility": "shared", "workspace": team}
    assert hub.atelier("PATCH", "/images/alice/snap", alice, json=share).status_code == 200
    hub.start("bob", "b1", bob, {**ON_BASE, "image": "alice/snap"})
    return snap


# (5) bad input ------------------------------------------------------------------------------
BAD_SAVE_BODIES = [
    (b"not json", None),
    (b"[]", None),
    (b'"name"', None),
    (b"{}", "name"),
    ({"name": 5}, "name"),
    ({"name": None}, "name"),
    ({"name": ["x"]}, "name"),
    ({"name": {"x": 1}}, "name"),
    ({"name": True}, "name"),
    ({"name": ""}, "name"),
    ({"name": "A"}, "name"),
    ({"name": "-x"}, "name"),
    ({"name": ".x"}, "name"),
    ({"name": "_x"}, "name"),
    ({"name": ".."}, "name"),
    ({"name": "../x"}, "name"),
    ({"name": "a/b"}, "name"),
    ({"name": "bob/x"}, "name"),
    ({"name": "x" * 64}, "name"),
    ({"name": "x" * 100_000}, "name"),
    ({"name": "é"}, "name"),
    ({"name": "ａ"}, "name"),  # fullwidth
    ({"name": "a b"}, "name"),
    ({"name": "a\x00"}, "name"),
    ({"name": "a\tb"}, "name"),
    ({"name": "\nab"}, "name"),
    ({"name": "a\u202eb"}, "name"),
    ({"name": "ok-1", "display_name": 5}, "display_name"),
    ({"name": "ok-1", "display_name": None}, "display_name"),
    ({"name": "ok-1", "display_name": "a\x00"}, "display_name"),
    ({"name": "ok-1", "description": ["x"]}, "description"),
    ({"name": "ok-1", "description": "a\x00"}, "description"),
    ({"name": "ok-1", "owner": "bob"}, "owner"),
    ({"name": "ok-1", "base": BASE}, "base"),
    ({"name": "ok-1", "digest": "sha256:" + "0" * 64}, "digest"),
    ({"name": "ok-1", "visibility": "public"}, "visibility"),
    ({"name": "ok-1", "instance": "two"}, "instance"),
    ({"name": "ok-1", "\x00": 1}, "\x00"),
]


def post_save(hub, token, instance: str, body, owner: str = "alice") -> requests.Response:
    path = f"/instances/{owner}/{instance}/images"
    if isinstance(body, bytes):
        return hub.atelier("POST", path, token, data=body)
    return hub.atelier("POST", path, token, json=body)


def test_bad_save_bodies_answer_4xx_naming_the_field_and_change_nothing(hub, alice, src):
    images, operations = image_names(hub), operation_ids(hub)
    wrong = []
    for body, field in BAD_SAVE_BODIES:
        answer = post_save(hub, alice, "src", body)
        error = (
            answer.json().get("error", {})
            if answer.headers.get("Content-Type", "").startswith("application/json")
            else {}
        )
        if not (400 <= answer.status_code < 500) or (field and error.get("field") != field):
            wrong.append((repr(body)[:80], answer.status_code, answer.text[:200]))
    too_big = post_save(hub, alice, "src", {"name": "big", "description": "x" * (2 << 20)})
    assert too_big.status_code == 413, too_big.text
    assert wrong == []
    assert (image_names(hub), operation_ids(hub)) == (images, operations)


def test_a_save_of_an_instance_path_that_is_odd_answers_4xx(hub, alice, src):
    for path in (
        "/instances/alice/src%00/images",
        "/instances/alice/src%0a/images",
        "/instances/alice/..%2Fsrc/images",
        "/instances/alice/" + "x" * 5000 + "/images",
        "/instances/al%C3%AFce/src/images",
        "/instances/alice/src/images/extra",
    ):
        answer = hub.atelier("POST", path, alice, json={"name": "odd"})
        assert 400 <= answer.status_code < 500, (path[:60], answer.status_code, answer.text)
    assert "alice/odd" not in image_names(hub)


def test_a_name_with_a_trailing_newline_is_refused(hub, alice, src):
    before = image_names(hub)
    try:
        answer = post_save(hub, alice, "src", {"name": "nl\n"})
        if answer.status_code == 202:
            follow(hub, alice, answer.json())
        made = image_names(hub) - before
    finally:
        settle(hub)
        forget(hub, "alice/nl\n")
    assert answer.status_code == 400 and answer.json()["error"]["field"] == "name", answer.text
    assert made == set()


def test_display_names_and_descriptions_past_the_stores_columns_are_refused(hub, alice, src, snap):
    before, answers = image_names(hub), {}
    try:
        for field, size in (("display_name", 256), ("description", 2001)):
            answer = post_save(hub, alice, "src", {"name": f"long-{size}", field: "x" * size})
            answers[f"save {field}"] = answer
            if answer.status_code == 202:
                follow(hub, alice, answer.json())
            patched = hub.atelier("PATCH", "/images/alice/snap", alice, json={field: "y" * size})
            answers[f"patch {field}"] = patched
        made = image_names(hub) - before
    finally:
        settle(hub)
        forget(hub, "alice/long-256", "alice/long-2001")
        restore = {
            "display_name": snap["image"]["display_name"],
            "description": snap["image"]["description"],
        }
        hub.atelier("PATCH", "/images/alice/snap", alice, json=restore)
    wrong = {
        what: (a.status_code, a.text[:120])
        for what, a in answers.items()
        if a.status_code != 400 or a.json()["error"]["field"] not in what
    }
    assert wrong == {}
    assert made == set()


def test_an_unreadable_directory_in_the_home_is_a_4xx_naming_the_instance(hub, alice, src):
    run_in(hub, "alice", "src", alice, "import os; os.mkdir(os.path.expanduser('~/locked'), 0)")
    try:
        answer = post_save(hub, alice, "src", {"name": "locked"})
        if answer.status_code == 202:
            follow(hub, alice, answer.json())
    finally:
        run_in(hub, "alice", "src", alice, "import os; os.rmdir(os.path.expanduser('~/locked'))")
        settle(hub)
        forget(hub, "alice/locked")
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["error"]["field"] == "instance"


def test_bad_patch_bodies_answer_4xx_naming_the_field_and_change_nothing(hub, alice, snap, team):
    before = hub.atelier("GET", "/images/alice/snap", alice).json()
    bodies = [
        (b"not json", None),
        (b"[]", None),
        ({"visibility": 1}, "visibility"),
        ({"visibility": None}, "visibility"),
        ({"visibility": "public"}, "visibility"),
        ({"visibility": "bogus"}, "visibility"),
        ({"visibility": "shared"}, "workspace"),
        ({"visibility": "shared", "workspace": "nope"}, "workspace"),
        ({"visibility": "shared", "workspace": "../team"}, "workspace"),
        ({"visibility": "shared", "workspace": "team\x00"}, "workspace"),
        ({"visibility": "private", "workspace": team}, "workspace"),
        ({"workspace": team}, "workspace"),
        ({"workspace": 5}, "workspace"),
        ({"display_name": None}, "display_name"),
        ({"display_name": 5}, "display_name"),
        ({"description": "a\x00"}, "description"),
        ({"owner": "bob"}, "owner"),
        ({"owner": None}, "owner"),
        ({"status": "disabled"}, "status"),
        ({"successor": BASE}, "successor"),
        ({"accelerator_types": ["a100"]}, "accelerator_types"),
        ({"digest": "sha256:" + "0" * 64}, "digest"),
        ({"base": None}, "base"),
        ({"name": "alice/other"}, "name"),
    ]
    wrong = []
    for body, field in bodies:
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        answer = hub.atelier("PATCH", "/images/alice/snap", alice, **kwargs)
        error = answer.json().get("error", {})
        if not (400 <= answer.status_code < 500) or (field and error.get("field") != field):
            wrong.append((repr(body)[:80], answer.status_code, answer.text[:200]))
    assert wrong == []
    assert hub.atelier("GET", "/images/alice/snap", alice).json() == before


def test_odd_operation_ids_answer_4xx_to_everyone(hub, alice, bob, snap):
    known = snap["operation"]["id"]
    for id in (
        "x" * 10_000,
        "..",
        "%2e%2e",
        "..%2F..%2Fimages",
        f"{known}%2F",
        known.upper(),
        f"{known}%20",
        "%C3%A9",
        "' OR '1'='1",
        "%00",
        "%0a",
        "%ff%fe",
        "*",
        "%25",
    ):
        for token in (alice, bob, None):
            answer = service(hub, f"/operations/{id}", token)  # the proxy: see below
            assert 400 <= answer.status_code < 500, (id[:40], answer.status_code, answer.text)
            if "%ff" not in id:
                answer = hub.atelier("GET", f"/operations/{id}", token)
                assert 400 <= answer.status_code < 500, (id[:40], answer.status_code)
    for weird in ("%00", "x" * 10_000, "' OR 1=1 --"):
        answer = hub.atelier("GET", f"/operations?owner={weird}", alice)
        assert answer.status_code in (200, 400), answer.text
        assert all(o["owner"] == "alice" for o in answer.json().get("operations", []))


def service(hub, path: str, token: str | None) -> requests.Response:
    """A GET of the Atelier API on the service's own port (not through the proxy)."""
    port = yaml.safe_load(hub.config.read_text())["service_port"]
    url = f"http://127.0.0.1:{port}/services/atelier/api/v1{path}"
    headers = {"Authorization": f"token {token or hub.admin_token}"}
    return requests.get(url, headers=headers, timeout=60)


@pytest.mark.xfail(
    strict=True,
    reason="HOLE (low, not the feature's own): configurable-http-proxy decodes the path with "
    "decodeURIComponent (targetForReq) and answers 500 to malformed percent-encoding "
    "(%ff) on any path of the public port, before the Atelier API sees it",
)
def test_a_malformed_percent_encoding_of_an_operation_id_is_a_4xx_through_the_proxy(hub, alice):
    answer = hub.atelier("GET", "/operations/%ff%fe", alice)
    assert 400 <= answer.status_code < 500, answer.status_code


# (1) another user ---------------------------------------------------------------------------
def test_bob_can_neither_see_use_change_delete_nor_learn_of_alices_snapshots(hub, alice, bob, snap):
    operation = snap["operation"]["id"]
    nothing = hub.atelier("GET", "/images/alice/nothing-here", bob).json()["error"]["message"]
    seen = hub.atelier("GET", "/images/alice/snap", bob)
    assert seen.status_code == 404
    assert seen.json()["error"]["message"] == nothing.replace("nothing-here", "snap")
    assert not any(
        i["name"].startswith("alice/") for i in hub.atelier("GET", "/images", bob).json()["images"]
    )
    assert hub.atelier("GET", f"/operations/{operation}", bob).status_code == 404
    for query in ("", "?owner=alice"):
        listed = hub.atelier("GET", f"/operations{query}", bob).json()["operations"]
        assert all(o["owner"] == "bob" for o in listed)
    assert hub.atelier("GET", "/instances/alice/src", bob).status_code == 404
    assert hub.atelier("GET", "/instances?owner=alice", bob).status_code == 404
    events = hub.atelier("GET", "/audit?resource=alice/snap", bob).json()
    assert events["total"] == 0
    # change, share (with a workspace of bob's), delete, save as alice
    for method, body in (
        ("PATCH", {"display_name": "bob's now"}),
        ("PATCH", {"visibility": "shared", "workspace": "team"}),
        ("DELETE", None),
    ):
        answer = hub.atelier(method, "/images/alice/snap", bob, json=body)
        assert answer.status_code == 404, answer.text
    assert post_save(hub, bob, "src", {"name": "mine"}).status_code == 404
    assert post_save(hub, bob, "two", {"name": "snap"}).status_code == 404
    # use it: through the Atelier API and the hub's own server API; no existence oracle
    refusals = {}
    for image in ("alice/snap", "alice/nothing-here"):
        body = {"name": "steal", **ON_BASE, "image": image}
        answer = hub.atelier("POST", "/instances", bob, json=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["field"] == "image"
        refusals[image] = answer.json()["error"]["message"].replace(image, "<image>")
        direct = hub.api("POST", "/users/bob/servers/steal2", bob, json={**ON_BASE, "image": image})
        assert direct.status_code == 400, direct.text
    assert refusals["alice/snap"] == refusals["alice/nothing-here"]
    assert "steal" not in hub.servers("bob") and "steal2" not in hub.servers("bob")
    # alice's own instance's save door (the JupyterLab extension) with bob's token
    for path, method in (
        ("atelier/images", "POST"),
        ("atelier/operations", "GET"),
        (f"atelier/operations/{operation}", "GET"),
    ):
        answer = requests.request(
            method,
            f"{hub.url}/user/alice/src/{path}",
            headers={"Authorization": f"token {bob}"},
            json={"name": "via-lab"},
            timeout=30,
            allow_redirects=False,
        )
        assert answer.status_code in (302, 403, 404), (path, answer.status_code, answer.text)
        assert "alice/" not in answer.text or answer.status_code != 200
    assert "alice/via-lab" not in image_names(hub)
    after = hub.atelier("GET", "/images/alice/snap", alice).json()
    assert after == snap["image"]


def test_a_workspace_member_uses_a_shared_snapshot_but_it_stays_its_owners(hub, alice, bob, shared):
    assert hub.atelier("GET", "/images/alice/snap", bob).json()["owner"] == "alice"
    for method, body in (
        ("PATCH", {"visibility": "private"}),
        ("PATCH", {"description": "bob was here"}),
        ("DELETE", None),
    ):
        assert hub.atelier(method, "/images/alice/snap", bob, json=body).status_code == 404
    assert hub.atelier("GET", f"/operations/{shared['operation']['id']}", bob).status_code == 404
    image = hub.atelier("GET", "/images/alice/snap", alice).json()
    assert (image["visibility"], image["workspace"]) == ("shared", "team")


# (3) what a shared snapshot carries ---------------------------------------------------------
def alices_secrets(hub) -> dict[str, bytes]:
    """Every secret of alice's instance `src` and of the hub, as root reads them."""
    secrets = {}
    for key, value in environ_of(hub.lab_pid("alice", "src")).items():
        if any(word in key for word in SECRET_KEYS) and len(value) >= 8:
            secrets[f"env {key}"] = value.encode()
    runtime = hub.home("alice", "src") / ".local/share/jupyter/runtime"
    for path in runtime.iterdir():
        if path.name == "jupyter_cookie_secret":
            secrets["cookie secret"] = path.read_bytes().strip()
        elif path.name.startswith("kernel-") and path.suffix == ".json":
            secrets[f"kernel key {path.name}"] = json.loads(path.read_text())["key"].encode()
        elif path.name.startswith("jpserver-") and path.suffix == ".json":
            token = json.loads(path.read_text()).get("token")
            if token:
                secrets[f"server token {path.name}"] = token.encode()
    data = hub.dir / "data"
    secrets["hub cookie secret"] = (data / "jupyterhub_cookie_secret").read_bytes().strip()
    secrets["service token"] = service_token(hub).encode()
    secrets["/etc/shadow"] = Path("/etc/shadow").read_bytes().splitlines()[0]
    return secrets


def test_a_shared_snapshot_carries_no_secret_of_the_instance_or_the_hub(hub, alice, bob, shared):
    secrets = alices_secrets(hub)
    assert any(k.startswith("env JUPYTERHUB_API_TOKEN") for k in secrets)
    assert any(k.startswith("kernel key") for k in secrets)  # kernels ran before the save
    layer = shared["layer"].read_bytes()
    assert [what for what, secret in secrets.items() if secret in layer] == []
    with tarfile.open(shared["layer"]) as archive:
        names = archive.getnames()
    assert not [
        n
        for n in names
        if ".local/share/jupyter/runtime/" in n or n.startswith(("./work/", "work/"))
    ]
    # what bob's instance got (unpacked as bob, nothing of alice's secrets)
    home, found = hub.home("bob", "b1"), []
    bobs_uid = (home / ".bashrc").lstat().st_uid
    for directory, subdirectories, files in os.walk(home):
        if Path(directory) == home:
            subdirectories[:] = [d for d in subdirectories if d != "work"]
        for name in files:
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            content = path.read_bytes()
            found += [(str(path), what) for what, s in secrets.items() if s in content]
            assert path.lstat().st_uid == bobs_uid, path  # unpacked as bob
    assert found == []
    assert bobs_uid != (hub.home("alice", "src") / ".bashrc").lstat().st_uid


# (2) alice against the hub, from inside her instance ----------------------------------------
def test_odd_files_in_the_home_are_saved_as_they_are_and_read_nothing_of_root(
    hub, alice, src, snap
):
    assert all(result != "made" for result in src.values()), src  # no device, no root file
    look = json.loads(run_in(hub, "alice", "two", alice, LOOK))
    data = str(hub.dir / "data")
    assert look == {
        "fifo": True,
        "newline": "newline kept",
        "names": sorted(NAMES),
        "bashrc": True,
        "keep": "not the volume",
        "trap": TRAP_FILES,
        "hub-data": data,
        "reach": False,
        "work": look["work"],
        "owner": True,
    }
    assert look["work"] != os.readlink(hub.home("alice", "src") / "work")  # two's own volume
    for instance in ("src", "two"):
        assert not (hub.home("alice", instance) / "pwned").exists()
    assert not Path("/tmp/pwned").exists() and not (hub.dir / "pwned").exists()
    layer = snap["layer"].read_bytes()
    assert (hub.dir / "data" / "jupyterhub_cookie_secret").read_bytes().strip() not in layer


def test_a_work_that_is_no_link_to_the_volume_stays_out_of_the_image(hub, alice, snap):
    swap = """
import os, pathlib
home = pathlib.Path.home()
os.rename(home / "work", home / "work-link")
(home / "work").mkdir()
(home / "work" / "in-a-plain-dir.txt").write_text("WORK-NOT-THE-VOLUME")
print("swapped")
"""
    back = """
import os, pathlib, shutil
home = pathlib.Path.home()
shutil.rmtree(home / "work")
os.rename(home / "work-link", home / "work")
print("back")
"""
    assert run_in(hub, "alice", "two", alice, swap) == "swapped\n"
    try:
        operation = follow(hub, alice, save(hub, alice, "two", "plain-work").json())
        assert operation["status"] == "succeeded", operation
        digest = hub.atelier("GET", "/images/alice/plain-work", alice).json()["digest"]
        layer = layer_path(snapshots_dir(hub.dir / "data"), digest).read_bytes()
        assert b"WORK-NOT-THE-VOLUME" not in layer
        assert b"in-a-plain-dir.txt" not in layer
    finally:
        assert run_in(hub, "alice", "two", alice, back) == "back\n"
        settle(hub)
        forget(hub, "alice/plain-work")


def helper_kinds(helpers: list[dict]) -> dict[str, list[dict]]:
    """The hub's helpers the watcher saw alive, by what they did."""
    kinds = {"save": [], "restore": [], "measure": []}
    for helper in helpers:
        command = helper["cmdline"]
        if not isinstance(command, list):
            continue
        if "--create" in command:
            kinds["save"].append(helper)
        elif "--extract" in command:
            kinds["restore"].append(helper)
        elif helper["comm"] == "du":
            kinds["measure"].append(helper)
    return kinds


def test_the_hubs_helpers_carry_no_secret_the_user_can_read(hub, snap):
    kinds = helper_kinds(snap["helpers"])
    assert kinds["save"] and kinds["restore"], snap["helpers"]  # the watcher saw them
    leaked, stolen = {}, None
    for kind, helpers in kinds.items():
        for helper in helpers:
            environment = helper["environ"]
            if isinstance(environment, dict):
                extra = sorted(set(environment) - HARMLESS_ENV)
                if extra:
                    leaked[f"{kind} {helper['comm']}"] = extra
                stolen = stolen or environment.get("JUPYTERHUB_API_TOKEN")
    power = None
    if stolen:  # what the stolen token does: every user, their servers and groups
        users = hub.api("GET", "/users", stolen)
        power = (users.status_code, sorted(u["name"] for u in users.json()))
    secret = {k: [n for n in v if any(w in n for w in SECRET_KEYS)] for k, v in leaked.items()}
    assert leaked == {}, f"the user stole a token listing {power}; secrets read: {secret}"


def test_the_hubs_helpers_cannot_be_traced_read_or_reopened_by_the_user(hub, snap):
    """Signals are the account's to send (exec makes a helper's saved id its effective one):
    a helper it stops is killed (the next test)."""
    kinds = helper_kinds(snap["helpers"])
    assert kinds["save"] and kinds["restore"], snap["helpers"]
    layers_dir = str(snapshots_dir(hub.dir / "data"))
    reached = {}
    for kind, helpers in kinds.items():
        for helper in helpers:
            what = f"{kind} {helper['comm']} {helper['pid']}"
            if helper["memory"] is True:
                reached.setdefault(what, []).append("memory read (ptrace)")
            if isinstance(helper["fds"], dict):
                for fd, entry in helper["fds"].items():
                    target = entry["target"]
                    if isinstance(entry.get("reopened_bytes"), int) and not str(target).startswith(
                        layers_dir
                    ):
                        reached.setdefault(what, []).append(f"fd {fd} reopened: {target}")
    seen = {f"{k} {h['comm']}": (h["seccomp"], h["cgroup"]) for k, v in kinds.items() for h in v}
    assert reached == {}, f"{reached}; (seccomp mode, cgroup): {seen}"


def test_a_save_cannot_be_held_forever_by_its_owner(hub, alice, snap):
    watcher = Watcher(hub, alice, freeze="tar")
    status = None
    try:
        answer = save(hub, alice, "src", "held")
        assert answer.status_code == 202, answer.text
        id = answer.json()["id"]
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            status = hub.atelier("GET", f"/operations/{id}", alice).json()["status"]
            if status != "running":
                break
            time.sleep(1)
        frozen = watcher.frozen()
    finally:
        watcher.stop()
        settle(hub)
        forget(hub, "alice/held")
    assert status != "running", f"held by the user (stopped {frozen})"


def test_held_measures_do_not_stop_other_users_saves(hub, alice, bob, shared):
    workers = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
    watcher = Watcher(hub, alice, freeze="du")
    threads, answers, bobs = [], [], {}
    try:
        for i in range(workers):
            thread = threading.Thread(target=lambda: answers.append(held_post(hub, alice)))
            thread.start()
            threads.append(thread)
            hub.wait_for(
                lambda i=i: len(watcher.frozen()) + len(answers) > i, 15, "a measure or answer"
            )
        started = time.monotonic()
        try:
            bobs["status"] = post_with(hub, bob, "b1", "pool-b", 20, owner="bob").status_code
        except requests.Timeout:
            bobs["status"] = "no answer"
        bobs["seconds"] = round(time.monotonic() - started, 1)
        bobs["held"] = len(watcher.frozen())
    finally:
        watcher.stop()
        for thread in threads:
            thread.join(120)
        settle(hub)
        settle(hub, "bob")
        forget(hub, "alice/pool", "bob/pool-b")
    assert bobs["status"] == 202, bobs


def post_with(hub, token, instance, name, timeout, owner="alice") -> requests.Response:
    url = f"{hub.url}/services/atelier/api/v1/instances/{owner}/{instance}/images"
    headers = {"Authorization": f"token {token}"}
    return requests.post(url, headers=headers, json={"name": name}, timeout=timeout)


def held_post(hub, token) -> int | str:
    try:
        return post_with(hub, token, "src", "pool", 300).status_code
    except requests.RequestException as error:
        return type(error).__name__


# (6) races ----------------------------------------------------------------------------------
def test_two_saves_from_one_instance_at_once_and_stop_or_delete_meanwhile_are_refused(
    hub, alice, snap
):
    slow = "open(__import__('os').path.expanduser('~/slow'), 'wb').truncate(300 << 20)"
    run_in(hub, "alice", "two", alice, slow)  # a save of some seconds
    answers, refusals = [], {}

    def post():
        answers.append(save(hub, alice, "two", "once"))

    def running() -> bool:
        return hub.atelier("GET", f"/operations/{started['id']}", alice).json()["status"] == (
            "running"
        )

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        codes = sorted(a.status_code for a in answers)
        assert codes == [202, 409], [a.text for a in answers]
        refused = next(a for a in answers if a.status_code == 409).json()["error"]
        assert "being saved already" in refused["message"]
        started = next(a for a in answers if a.status_code == 202).json()
        # each only while the save still runs: past it, they would stop or delete `two`
        attempts = {
            "delete its image": lambda: hub.atelier("DELETE", "/images/alice/once", alice),
            "stop": lambda: hub.atelier("POST", "/instances/alice/two/stop", alice),
            "hub stop": lambda: hub.api("DELETE", "/users/alice/servers/two", alice),
            "delete": lambda: hub.atelier(
                "DELETE", "/instances/alice/two?confirm=delete-volume", alice
            ),
        }
        for what, attempt in attempts.items():
            if running():
                refusals[what] = attempt().status_code
        operation = follow(hub, alice, started)
        assert operation["status"] == "succeeded", operation
        assert hub.servers("alice")["two"]["ready"]
    finally:
        settle(hub)
        forget(hub, "alice/once")
        run_in(hub, "alice", "two", alice, "import os; os.remove(os.path.expanduser('~/slow'))")
    assert refusals == {"delete its image": 404, "stop": 409, "hub stop": 409, "delete": 409}


def test_two_instances_saving_one_name_at_once_leave_no_orphan_layer(hub, alice, snap):
    run_in(hub, "alice", "two", alice, "open('differs.txt', 'w').write('two')")
    before, answers = layers(hub), {}

    def post(instance):
        answers[instance] = save(hub, alice, instance, "twin")

    threads = [threading.Thread(target=post, args=(i,)) for i in ("src", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        ended = {
            instance: follow(hub, alice, answer.json())["status"]
            for instance, answer in answers.items()
            if answer.status_code == 202
        }
        orphans = (layers(hub) - before) - catalog_layers(hub)
    finally:
        settle(hub)
        forget(hub, "alice/twin")
    assert sorted(ended.values()) in (["succeeded"], ["failed", "succeeded"]), ended
    assert orphans == set(), f"{len(orphans)} layer(s) no image names: {ended}"


def test_a_file_made_after_the_measure_cannot_push_a_save_past_the_size_limit(hub, alice, snap):
    size = int(1.0 * 1024**3)
    code = f"""
import os
from atelier.sdk import Client
operation = Client().save_image(name="sparse-race")
with open(os.path.expanduser("~/sparse"), "wb") as file:
    file.truncate({size})
print(operation["id"])
"""
    id = run_in(hub, "alice", "src", alice, code).strip()
    try:
        operation = follow(hub, alice, {"id": id}, timeout=400)
        image = hub.atelier("GET", "/images/alice/sparse-race", alice)
        stored = None
        if image.status_code == 200:
            stored = layer_path(snapshots_dir(hub.dir / "data"), image.json()["digest"])
            stored = stored.stat().st_size
    finally:
        run_in(hub, "alice", "src", alice, "import os; os.remove(os.path.expanduser('~/sparse'))")
        settle(hub)
        forget(hub, "alice/sparse-race")
    assert operation["status"] == "failed", f"saved {stored} bytes, limit {LIMIT_GB} GB"
    assert "limits.snapshot_size_gb" in operation["reason"]


def test_a_spec_change_that_restarts_the_instance_is_refused_while_it_is_saved(hub, alice, snap):
    run_in(
        hub,
        "alice",
        "src",
        alice,
        "open(__import__('os').path.expanduser('~/slow'), 'wb').truncate(350 << 20)",
    )
    pid = hub.lab_pid("alice", "src")
    answer = save(hub, alice, "src", "restarted")
    assert answer.status_code == 202, answer.text
    running = hub.atelier("GET", f"/operations/{answer.json()['id']}", alice).json()["status"]
    patch = hub.atelier("PATCH", "/instances/alice/src", alice, json={"spec": "cpu.2u8g"})
    try:
        operation = follow(hub, alice, answer.json())
    finally:
        settle(hub)
        forget(hub, "alice/restarted")
    assert running == "running"
    assert patch.status_code == 409, (patch.status_code, patch.text[:200], operation)
    assert hub.lab_pid("alice", "src") == pid
