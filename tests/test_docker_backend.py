"""The Docker backend's pure parts, as plans (no engine, no accelerator here): the container
an instance plan becomes, its name, its devices; and the SSH endpoint's one check, attacked
with real processes in PID namespaces of their own, as containers are."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atelier.spawner import core
from atelier.spawner.backend import EndpointRefused, EndpointUnavailable
from atelier.spawner.devices import Device
from atelier.spawner.docker import containers, endpoint
from atelier.spawner.docker.spawner import literal

CPU_IMAGE = "python_3.11-cpu-py_3.11-debian_12-x86_64"
GPU_IMAGE = "pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64"
NPU_IMAGE = "pytorch_2.1.0-cann_8.0.rc1-py_3.9-euleros_2.10-aarch64"


def plan(image: str, spec: str) -> core.InstancePlan:
    accelerators = {"a100": 8, "910b": 8}
    catalog = core.Catalog({image: core.Image(image)}, {spec: core.Spec(spec)}, accelerators)
    options = core.parse_options({"image": image, "spec": spec}, core.Limits())
    return core.plan_instance("ann", "lab", options, catalog, core.Limits())


def built(image: str, spec: str, held: list[Device], ssh: bool = True) -> containers.Container:
    return containers.container(
        plan(image, spec),
        held,
        hub="h1",
        volume="/srv/mounts/atelier-ann/lab",
        endpoint_dir="/srv/endpoints/atelier-ann/lab" if ssh else None,
        pids_limit=512,
    )


# the container ----------------------------------------------------------------------------------


def test_a_cpu_instance_is_a_confined_non_root_container_with_the_specs_limits():
    spec = built(CPU_IMAGE, "cpu.2u8g", [])
    assert spec.create_kwargs["user"] == "1000:1000"
    assert spec.create_kwargs["labels"] == {
        "atelier.hub": "h1",
        "atelier.owner": "ann",
        "atelier.instance": "lab",
        "atelier.image": CPU_IMAGE,
    }
    host = spec.host_config
    assert host["security_opt"] == ["no-new-privileges"] and host["cap_drop"] == ["ALL"]
    assert "cap_add" not in host and "privileged" not in host
    assert host["pids_limit"] == 512 and host["nano_cpus"] == 2_000_000_000
    assert spec.mem_limit == 8 * 1024**3
    assert host["network_mode"] == "host"
    assert host["device_requests"] == [] and host["devices"] == []
    environment = spec.environment
    assert environment["MEM_LIMIT"] == str(8 * 1024**3) and environment["CPU_LIMIT"] == "2"
    assert not {"CUDA_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES"} & set(environment)
    # the image's environment first, then what `pip install --user` puts in ~/.local
    assert (
        environment["PATH"] == "/opt/env/bin:/usr/local/bin:/usr/bin:/bin:/home/jovyan/.local/bin"
    )


def test_the_work_volume_is_work_and_the_endpoint_directory_only_with_ssh():
    spec = built(CPU_IMAGE, "cpu.2u8g", [])
    assert spec.volumes == {
        "/srv/mounts/atelier-ann/lab": {"bind": "/home/jovyan/work", "mode": "rw"},
        "/srv/endpoints/atelier-ann/lab": {"bind": "/run/atelier-ssh", "mode": "rw"},
    }
    assert spec.environment["ATELIER_SSH_SOCKET"] == "/run/atelier-ssh/endpoint"
    without = built(CPU_IMAGE, "cpu.2u8g", [], ssh=False)
    assert list(without.volumes) == ["/srv/mounts/atelier-ann/lab"]
    assert "ATELIER_SSH_SOCKET" not in without.environment


@pytest.mark.parametrize(
    "indices",
    [[0], [3], [1, 2], [0, 5, 7], list(range(8))],
)
def test_gpus_are_one_device_request_of_exactly_the_held_devices(indices):
    held = [Device("gpu", "a100", i) for i in reversed(indices)]
    spec = built(GPU_IMAGE, f"gpu.{len(indices)}xa100.8u64g", held)
    assert spec.host_config["device_requests"] == [
        {"Driver": "nvidia", "DeviceIDs": [str(i) for i in indices], "Capabilities": [["gpu"]]}
    ]
    assert spec.host_config["devices"] == []
    # the runtime shows the held GPUs as 0..n-1: CUDA_VISIBLE_DEVICES names all of them
    visible = spec.environment["CUDA_VISIBLE_DEVICES"]
    assert visible == ",".join(str(i) for i in range(len(indices)))
    assert "ASCEND_VISIBLE_DEVICES" not in spec.environment


@pytest.mark.parametrize("indices", [[0], [6], [2, 3], [0, 1, 2, 3, 4, 5, 6, 7]])
def test_npus_are_their_davinci_nodes_and_the_managers(indices):
    held = [Device("ascend", "910b", i) for i in indices]
    spec = built(NPU_IMAGE, f"ascend.{len(indices)}x910b.24u192g", held)
    nodes = spec.host_config["devices"]
    assert nodes[: len(indices)] == [f"/dev/davinci{i}:/dev/davinci{i}:rwm" for i in indices]
    assert nodes[len(indices) :] == [
        "/dev/davinci_manager:/dev/davinci_manager:rwm",
        "/dev/devmm_svm:/dev/devmm_svm:rwm",
        "/dev/hisi_hdc:/dev/hisi_hdc:rwm",
    ]
    assert spec.environment["ASCEND_VISIBLE_DEVICES"] == ",".join(map(str, indices))
    assert spec.host_config["device_requests"] == []
    assert "CUDA_VISIBLE_DEVICES" not in spec.environment


def test_no_other_device_node_of_the_machine_is_given():
    held = [Device("ascend", "910b", 1)]
    nodes = built(NPU_IMAGE, "ascend.1x910b.24u192g", held).host_config["devices"]
    assert not any(node.startswith(("/dev/davinci0", "/dev/davinci2")) for node in nodes)


NAMES = ["a", "a-", "a-b", "a--b", "ab", "-", "b-2d", "x" * 64, "Ann", "ann.lee", "anné"]


def test_container_names_are_one_per_owner_and_instance():
    pairs = list(itertools.product(NAMES, ["lab", "a", "a-b", "b", "2d-b", "-b", "b--"]))
    names = [containers.container_name(owner, instance) for owner, instance in pairs]
    assert len(set(names)) == len(pairs)
    for name in names:  # what the engine takes as a name
        assert name.startswith("atelier-") and all(c.isalnum() or c in "-_." for c in name)


# the SSH endpoint's check -----------------------------------------------------------------------

pytestmark_ns = pytest.mark.skipif(os.geteuid() != 0, reason="PID namespaces need root")
LISTENER = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"mine"); c.close()
"""


class Namespace:
    """A process in a PID namespace of its own (`unshare --pid --fork`, as a container's)
    listening on `path`."""

    def __init__(self, path: Path):
        self.process = subprocess.Popen(
            ["/usr/bin/unshare", "--pid", "--fork", sys.executable, "-c", LISTENER, str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout.readline() == "listening\n"
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        self.init = int(children.read_text().split()[0])  # its PID 1, as the engine says

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.init, signal.SIGKILL)  # the namespace ends with its PID 1
        self.process.kill()
        self.process.wait()


@pytest.fixture
def instances(tmp_path):
    """Two instances' endpoint directories, each answered inside its own namespace."""
    started = {}
    for name in ("mine", "theirs"):
        directory = tmp_path / name
        directory.mkdir()
        started[name] = (directory, Namespace(directory / endpoint.SOCKET))
    yield started
    for _, namespace in started.values():
        namespace.stop()


def connect(directory: Path, init: int) -> socket.socket:
    return asyncio.run(endpoint.connect(directory, init, "lab"))


@pytestmark_ns
def test_the_endpoint_answered_inside_the_instances_container_is_accepted(instances):
    directory, namespace = instances["mine"]
    with connect(directory, namespace.init) as sock:
        sock.setblocking(True)
        assert sock.recv(4) == b"mine"


@pytestmark_ns
def test_a_link_to_another_instances_endpoint_is_refused(instances):
    """The container's user replaces their endpoint with a link to another instance's
    socket on the host: the gateway would log in to that instance; it is refused."""
    mine, namespace = instances["mine"]
    theirs, _ = instances["theirs"]
    (mine / endpoint.SOCKET).unlink()
    (mine / endpoint.SOCKET).symlink_to(theirs / endpoint.SOCKET)
    with pytest.raises(EndpointRefused, match="outside its container"):
        connect(mine, namespace.init)


@pytestmark_ns
def test_a_socket_served_from_outside_any_container_is_refused(instances, tmp_path):
    """A host process (or the hub's own) listening where the endpoint should be."""
    mine, namespace = instances["mine"]
    (mine / endpoint.SOCKET).unlink()
    impostor = socket.socket(socket.AF_UNIX)
    impostor.bind(str(mine / endpoint.SOCKET))
    impostor.listen(1)
    with impostor, pytest.raises(EndpointRefused):
        connect(mine, namespace.init)


@pytestmark_ns
def test_nothing_listening_is_not_running(instances):
    mine, namespace = instances["mine"]
    namespace.stop()
    time.sleep(0.1)
    with pytest.raises(EndpointUnavailable, match="not running"):
        connect(mine, namespace.init)


@pytestmark_ns
def test_the_endpoint_directory_is_a_tiny_tmpfs_made_afresh_for_the_container_user(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    directory = endpoint.endpoint_dir(shared, "atelier-ann", "lab")
    try:
        endpoint.prepare(directory, 1000, 1000)
        (directory / "left-over").write_text("from the last run")
        (directory / "link").symlink_to("/etc")
        endpoint.prepare(directory, 1000, 1000)
        assert os.listdir(directory) == [] and Path("/etc/passwd").exists()
        info = directory.stat()
        assert (info.st_uid, info.st_mode & 0o777) == (1000, 0o700)
        for parent in (directory.parent, directory.parent.parent):
            assert (parent.stat().st_uid, parent.stat().st_mode & 0o777) == (0, 0o700)
        with pytest.raises(OSError, match="No space left"):  # room for a socket, not for data
            (directory / "filler").write_bytes(b"x" * endpoint.TMPFS_BYTES * 2)
    finally:
        endpoint.remove(directory)
    assert not directory.exists() and endpoint.mounts_at_or_below(shared) == []


def test_names_reach_the_engine_as_they_are_not_as_templates():
    """DockerSpawner formats its create options as templates: a user named
    `ali{raw_servername}` must not become `alice` in a label."""
    options = {"labels": {"atelier.owner": "ali{raw_servername}"}, "user": "1000:1000"}
    rendered = literal(options)
    assert rendered["labels"]["atelier.owner"].format(raw_servername="ce") == "ali{raw_servername}"
    assert rendered["user"] == "1000:1000"
