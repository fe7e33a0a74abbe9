"""One node of a training job: the root-owned process that runs the node's `torchrun` (or the
engine client that runs it in a container) and outlives the service that started it.

    python -m atelier.spawner.jobnode <job directory> <attempt> <node>

It reads the launch (`attempt-<a>/node-<k>.json`: argv, env, cwd, and for the local backend
the account, cgroups and seccomp), splits the node's output by rank into the job's root-owned
logs (`rank-<r>.log`, `node-<k>.log`) and metrics (`metrics.jsonl`), and records how the node
ended (`attempt-<a>/node-<k>.state`). A deployment's replica is such a node too (attempt: its
version, node: its number) whose launch names a socket to `listen` on: bound here, where only
root reaches, and handed to the server as ATELIER_LISTEN_FD. Nothing the job can write is
ever opened by it: the job's processes only hold the write end of a pipe. SIGTERM stops the
node (SIGTERM to its process group, SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from atelier.spawner.core import jobs

GRACE_S = 10  # between SIGTERM and SIGKILL when a node is stopped
READ_ON_S = 5  # how long the output is read after the node's torchrun has ended
LOG_LIMIT = 256 * 1024**2  # the most a log (a rank's, the node's, the metrics) keeps per node
LINE_LIMIT = 64 * 1024
PRIVATE = 0o600


@dataclass(frozen=True)
class NodeState:
    """How one node of an attempt stands: running (pid), or ended with an exit status and
    the first failed rank torchrun reported; `lost` when it ended without saying so."""

    node: int
    running: bool
    exit_status: int | None = None
    failure: tuple[int, int] | None = None  # (rank, exit status)
    ended: float | None = None
    stopped: bool = False
    lost: bool = False


def launch_path(directory: Path, attempt: int, node: int) -> Path:
    return directory / f"attempt-{attempt}" / f"node-{node}.json"


def state_path(directory: Path, attempt: int, node: int) -> Path:
    return directory / f"attempt-{attempt}" / f"node-{node}.state"


def write_json(path: Path, value: dict) -> None:
    """Atomically: a reader sees the old state or the new one."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value))
    partial.replace(path)


def start(directory: Path, attempt: int, node: int, launch: dict) -> int:
    """Write the launch and start the node's monitor, detached (its own session: a stopping
    hub does not signal it); returns the monitor's pid once it is running."""
    path = launch_path(directory, attempt, node)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_json(path, launch)
    command = [sys.executable, "-m", "atelier.spawner.jobnode", str(directory), str(attempt)]
    with open_log(directory / f"node-{node}.log") as errors:
        monitor = subprocess.Popen(
            [*command, str(node)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + 30
    while not state_path(directory, attempt, node).exists():  # it has started the node
        if monitor.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"node {node}'s monitor ended at once (see node-{node}.log)")
        time.sleep(0.05)
    return monitor.pid


def read_state(directory: Path, attempt: int, node: int) -> NodeState:
    try:
        state = json.loads(state_path(directory, attempt, node).read_text())
    except (OSError, ValueError):
        return NodeState(node, running=False, lost=True)
    if state.get("exit_status") is None:
        if alive(state["monitor"], state["monitor_started"]):
            return NodeState(node, running=True)
        return NodeState(node, running=False, lost=True)
    failure = state.get("failure")
    return NodeState(
        node,
        running=False,
        exit_status=state["exit_status"],
        failure=tuple(failure) if failure else None,
        ended=state["ended"],
        stopped=state.get("stopped", False),
    )


def stop(directory: Path, attempt: int, node: int) -> None:
    """Ask a running monitor to stop its node (it records `stopped`)."""
    try:
        state = json.loads(state_path(directory, attempt, node).read_text())
    except (OSError, ValueError):
        return
    if state.get("exit_status") is None and alive(state["monitor"], state["monitor_started"]):
        os.kill(state["monitor"], signal.SIGTERM)


def wait_ended(directory: Path, attempt: int, nodes: range, patience_s: float = 30) -> None:
    """Until every node's monitor has ended (a stopped node takes its grace period)."""
    deadline = time.monotonic() + patience_s
    while any(read_state(directory, attempt, n).running for n in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the nodes of attempt {attempt} did not end in {patience_s} s")
        time.sleep(0.2)


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/<pid>/stat): with the
    pid, it names one process even after the pid is reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])  # a zombie has ended


def alive(pid: int, started: int) -> bool:
    return process_start(pid) == started


def open_log(path: Path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, PRIVATE)
    return os.fdopen(fd, "a", buffering=1, errors="replace")


class Splitter:
    """The node's output, line by line, into each rank's log, the node's log and metrics."""

    def __init__(self, directory: Path, node: int, ranks: int):
        self.directory, self.ranks_in_job = directory, ranks
        self.node_log = open_log(directory / f"node-{node}.log")
        self.metrics = open_log(directory / "metrics.jsonl")
        self.ranks: dict[int, tuple[object, int]] = {}  # rank -> (file, bytes written)
        self.agent_text: list[str] = []  # what torchrun's agent said (its failure report)
        self.node_written = self.metrics_written = 0  # bytes: each is held to LOG_LIMIT

    def line(self, line: str) -> None:
        rank, text = jobs.split_line(line)
        text = text if text.endswith("\n") else text + "\n"
        if rank is None or rank >= self.ranks_in_job:  # a rank the job has not: the agent's
            self.node_written += len(text)
            if self.node_written < LOG_LIMIT:
                self.node_log.write(text)
            self.agent_text.append(text)
            del self.agent_text[:-200]
            return
        record = jobs.metrics_record(rank, text.rstrip("\n"))
        if record is not None:
            entry = json.dumps({"time": time.time(), **record}) + "\n"  # the rank's, if said
            self.metrics_written += len(entry)
            if self.metrics_written < LOG_LIMIT:
                self.metrics.write(entry)
            return
        self.rank_log(rank, text)

    def rank_log(self, rank: int, text: str) -> None:
        file, written = self.ranks.get(rank) or (open_log(self.directory / f"rank-{rank}.log"), 0)
        if written < LOG_LIMIT:
            file.write(text if written + len(text) < LOG_LIMIT else "[log limit reached]\n")
        self.ranks[rank] = (file, written + len(text))


def preexec_for(launch: dict):
    """Join the node's cgroups, confine and drop to the account (local backend), as the
    instance spawner does; a new process group so a stop reaches every rank."""
    account, groups = launch.get("account"), [Path(p) for p in launch.get("cgroups", [])]
    setuid = confine = None
    if launch.get("confine"):
        import platform

        from atelier.spawner.local import seccomp

        confine = seccomp.loader(platform.machine())
    if account:
        from jupyterhub.spawner import set_user_setuid

        setuid = set_user_setuid(account, chdir=False)

    def preexec():
        os.setpgid(0, 0)
        for procs in groups:
            procs.write_text(str(os.getpid()))
        if confine is not None:
            confine()
        if setuid is not None:
            setuid()
        os.umask(0o022)

    return preexec


def monitor(directory: Path, attempt: int, node: int) -> None:
    launch = json.loads(launch_path(directory, attempt, node).read_text())
    me = {"monitor": os.getpid(), "monitor_started": process_start(os.getpid())}
    splitter = Splitter(directory, node, launch["ranks"])
    listening = listen(Path(launch["listen"])) if launch.get("listen") else None
    inherited = {"ATELIER_LISTEN_FD": str(listening.fileno())} if listening else {}
    child = subprocess.Popen(
        launch["argv"],
        env={**launch["env"], **inherited},
        cwd=launch["cwd"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=preexec_for(launch),
        close_fds=True,
        pass_fds=[listening.fileno()] if listening else [],
    )
    if listening is not None:
        listening.close()  # the server's now: a stopped server's socket refuses at once
    write_json(state_path(directory, attempt, node), {**me, "pid": child.pid})
    stopped = threading.Event()

    def on_term(signum, frame):
        stopped.set()
        with_grace(child, launch.get("grace_s", GRACE_S))

    signal.signal(signal.SIGTERM, on_term)
    reader = threading.Thread(target=split, args=(child.stdout, splitter), daemon=True)
    reader.start()
    code = child.wait()
    reader.join(READ_ON_S)  # a process the node left behind may hold the pipe: not for long
    report = "".join(splitter.agent_text)
    failure = None if code == 0 or stopped.is_set() else jobs.failed_rank(report)
    state = {"exit_status": jobs.exit_status(code), "failure": failure, "ended": time.time()}
    write_json(state_path(directory, attempt, node), {**me, **state, "stopped": stopped.is_set()})


def split(output, splitter: Splitter) -> None:
    cut = False  # the rest of a line longer than LINE_LIMIT is dropped, never held
    for raw in iter(lambda: output.readline(LINE_LIMIT), b""):
        if not cut:
            splitter.line(raw.decode(errors="replace"))
        cut = not raw.endswith(b"\n")


def listen(path: Path) -> socket.socket:
    """A Unix socket bound at `path`, in a directory only root can change (the backend's):
    what was there before (an ended replica's socket) is replaced."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise RuntimeError(f"{path} is not a socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.set_inheritable(True)
    return sock


def with_grace(child: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    def kill_later():
        time.sleep(grace_s)
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)

    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    threading.Thread(target=kill_later, daemon=True).start()


if __name__ == "__main__":
    monitor(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
