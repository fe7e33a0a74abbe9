"""A private Docker engine for the tests: its own dockerd and its own containerd.

Everything that could meet another engine is the engine's own: the API socket, exec root,
pid file and containerd live in a fresh directory under /run (short paths: dockerd puts unix
sockets below its exec root, and sun_path holds 108 bytes), and dockerd is always pointed at
a containerd this class starts, never at whatever answers /run/containerd/containerd.sock
(dockerd 20.10 would use a system containerd there, and share its `moby` namespace with the
system's dockerd). The data root persists (WORK/docker) so images built by one run are
there for the next; a lock file beside it gives it to one engine at a time, and an engine
that finds it taken works on a throwaway data root of its own. Containers use the host
network only (no bridge, no iptables, no masquerading): tests send traffic to loopback alone.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker

DOCKERD = "/usr/sbin/dockerd"
CONTAINERD = "/usr/bin/containerd"
WORK = Path(os.environ.get("ATELIER_TEST_DIR", "/var/tmp/atelier-tests"))
DATA_ROOT = WORK / "docker"
PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"  # dockerd finds runc and the shims
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, so a killed run stops its dockerd
    (which then stops its containers); what is still left is cleaned by the next engine."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def mounts_under(path: Path) -> list[Path]:
    """Mount points below `path` (not `path` itself), deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if point != path and point.is_relative_to(path):
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def processes_of(run_dir: Path | str) -> list[int]:
    """Processes whose command line names a path in `run_dir`: an engine's dockerd,
    containerd and shims (each is given one)."""
    text, pids = f"{run_dir}/", []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _is_dockerd(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/{pid}/exe") == DOCKERD
    return False


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, wait, then SIGKILL: for processes of an earlier engine (not our children)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def _remove_run_dir(run_dir: Path) -> None:
    for point in mounts_under(run_dir):
        subprocess.run(["/usr/bin/umount", "--lazy", str(point)], check=False)
    shutil.rmtree(run_dir, ignore_errors=True)


class Engine:
    """One dockerd with its own containerd; `url` is its DOCKER_HOST, `stop()` ends it all."""

    def __init__(self, data_root: Path = DATA_ROOT, timeout: float = 60):
        self.run_dir = Path(tempfile.mkdtemp(prefix="atelier-test-docker-", dir="/run"))
        self.url = f"unix://{self.run_dir}/docker.sock"
        self.containerd_socket = self.run_dir / "containerd" / "containerd.sock"
        self.data_root = data_root
        self.cache_dir = data_root.parent / "docker-cache"  # what tests make for engines
        self.private = False  # a throwaway data root, removed by stop()
        self.dockerd = self.containerd = None
        self._lock = self._take(data_root)
        self._record()
        try:
            self._start_containerd()
            self._start_dockerd(timeout)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, version="auto", timeout=600)

    def _take(self, data_root: Path):
        """The lock of the shared data root, after cleaning what a killed earlier engine left
        there; a fresh data root of our own when another live engine holds it."""
        data_root.parent.mkdir(parents=True, exist_ok=True)
        lock = open(data_root.with_name(data_root.name + ".lock"), "a+")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            self.private = True
            self.data_root = Path(tempfile.mkdtemp(prefix="docker-", dir=data_root.parent))
            return None
        lock.seek(0)
        with contextlib.suppress(ValueError):
            earlier = json.loads(lock.read() or "{}")
            run_dir = earlier.get("run_dir")
            if run_dir and Path(run_dir).parent == Path("/run"):
                for pid in sorted(processes_of(run_dir), key=lambda p: not _is_dockerd(p)):
                    _terminate(pid, 30)  # dockerd first, so that it stops its containers
                _remove_run_dir(Path(run_dir))
        data_root.mkdir(mode=0o711, exist_ok=True)
        return lock

    def _record(self) -> None:
        """Who uses the data root now, for the next engine should this process be killed."""
        if self._lock is not None:
            self._lock.seek(0)
            self._lock.truncate()
            json.dump({"run_dir": str(self.run_dir)}, self._lock)
            self._lock.flush()

    def _launch(self, name: str, command: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.run_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        with log:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": PATH},
                start_new_session=True,  # a Ctrl-C of the tests is ours to handle, not theirs
                **kwargs,
            )

    def _start_containerd(self) -> None:
        state = self.run_dir / "containerd"
        state.mkdir(mode=0o711)
        config = state / "containerd.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.data_root}/containerd/daemon"\n'
            f'state = "{state}/daemon"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.containerd_socket}"\n'
            f'[ttrpc]\n  address = "{self.containerd_socket}.ttrpc"\n'
            '[debug]\n  address = ""\n'
        )
        self.containerd = self._launch("containerd", [CONTAINERD, "--config", str(config)])
        self._wait(lambda: self.containerd_socket.is_socket(), "containerd", 30)

    def _start_dockerd(self, timeout: float) -> None:
        config = self.run_dir / "daemon.json"
        config.write_text("{}\n")  # never /etc/docker/daemon.json
        command = [
            DOCKERD,
            f"--host={self.url}",
            f"--exec-root={self.run_dir}/exec",
            f"--pidfile={self.run_dir}/docker.pid",
            f"--data-root={self.data_root}",
            f"--containerd={self.containerd_socket}",
            f"--config-file={config}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
        ]
        self.dockerd = self._launch("dockerd", command, preexec_fn=_die_with_parent)

        def ready() -> bool:
            try:
                client = docker.DockerClient(base_url=self.url, version="auto", timeout=5)
                with contextlib.closing(client):
                    return client.ping()
            except docker.errors.DockerException:
                return False

        self._wait(ready, "dockerd", timeout)

    def _wait(self, predicate, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            dead = [p for p in (self.containerd, self.dockerd) if p and p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n{self.log_tail(what)}")
            time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.run_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Remove every container, then SIGTERM dockerd and containerd and wait for each; any
        shim still running is ended too: nothing of this engine outlives it."""
        atexit.unregister(self.stop)
        if self.dockerd is not None and self.dockerd.poll() is None:
            with contextlib.suppress(Exception), contextlib.closing(self.client()) as client:
                for container in client.containers.list(all=True):
                    with contextlib.suppress(docker.errors.DockerException):
                        container.remove(force=True)
        for process in (self.dockerd, self.containerd):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for pid in processes_of(self.run_dir):  # shims whose container outlived the daemon
            _terminate(pid, 10)
        _remove_run_dir(self.run_dir)
        if self.private:
            for point in mounts_under(self.data_root):
                subprocess.run(["/usr/bin/umount", "--lazy", str(point)], check=False)
            shutil.rmtree(self.data_root, ignore_errors=True)
        if self._lock is not None:
            self._lock.truncate(0)
            self._lock.close()
            self._lock = None
