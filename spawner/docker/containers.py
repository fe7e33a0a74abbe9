"""Pure builders: what the Docker backend asks the engine for, from an instance plan.

No I/O (as kubespawner's `objects.py`): a plan, the devices held for it and the host paths
the backend prepared go in; the container's name, labels, environment, mounts and host
configuration come out. The device parts cannot run here (no accelerator) and are tested
exhaustively as plans.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from dockerspawner import DockerSpawner

from atelier.spawner import core
from atelier.spawner.devices import Device
from atelier.spawner.manifests import WORK_PATH

USER, UID, GID = "jovyan", 1000, 1000  # the images' one non-root user (images/*/Dockerfile)
HOME = "/home/jovyan"
ENDPOINT_DIR = "/run/atelier-ssh"  # the instance's own directory for its SSH endpoint
# the server's runtime files (cookie secret, kernel keys, sshd's host key) on a tmpfs: never
# in a commit of the container, so never in a saved image another user may run
RUNTIME_DIR = "/run/atelier-runtime"
ENV_PREFIX = "/opt/env"  # the images' Python environment
PREFIX = "atelier"
LABEL_OWNER, LABEL_INSTANCE, LABEL_IMAGE = "atelier.owner", "atelier.instance", "atelier.image"
LABEL_HUB = "atelier.hub"
# Ascend's device nodes every NPU container needs beside its davinci<N> (Ascend docker runtime)
ASCEND_MANAGERS = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")
GB = 1024**3


def container_name(owner: str, instance: str) -> str:
    """One name per (owner, instance): both escaped as DockerSpawner escapes names (every
    '-' becomes '-2d', so neither part holds '--'), joined by '--'."""
    escape = DockerSpawner._escape
    return f"{PREFIX}-{escape(owner)}--{escape(instance)}"


def hub_id(data_dir: str) -> str:
    """Which hub made a container (two hubs may share an engine): its data dir's digest."""
    return hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]


def labels(hub: str, owner: str, instance: str, image: str = "") -> dict[str, str]:
    """What `atelier run` reads to tell its containers from others, and whose they are."""
    found = {LABEL_HUB: hub, LABEL_OWNER: owner, LABEL_INSTANCE: instance}
    return {**found, LABEL_IMAGE: image} if image else found


@dataclass(frozen=True)
class DeviceAccess:
    """A container's share of the accelerators: exactly the devices held for it."""

    device_requests: list[dict] = field(default_factory=list)  # NVIDIA: by host index
    devices: list[str] = field(default_factory=list)  # Ascend: host:container:rwm nodes
    environment: dict[str, str] = field(default_factory=dict)


def device_access(held: list[Device]) -> DeviceAccess:
    """GPUs as one device request of exactly the held indices (the NVIDIA runtime shows
    them to the container as 0..n-1, which CUDA_VISIBLE_DEVICES then names); Ascend NPUs as
    their /dev/davinci<N> nodes and the manager nodes, with ASCEND_VISIBLE_DEVICES naming
    the host's ids, as Ascend's runtime does."""
    gpus = sorted(d.index for d in held if d.kind == "gpu")
    npus = sorted(d.index for d in held if d.kind == "ascend")
    requests, nodes, environment = [], [], {}
    if gpus:
        requests.append(
            {"Driver": "nvidia", "DeviceIDs": [str(i) for i in gpus], "Capabilities": [["gpu"]]}
        )
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(gpus)))
    if npus:
        nodes = [f"/dev/davinci{i}:/dev/davinci{i}:rwm" for i in npus]
        nodes += [f"{node}:{node}:rwm" for node in ASCEND_MANAGERS]
        environment["ASCEND_VISIBLE_DEVICES"] = ",".join(str(i) for i in npus)
    return DeviceAccess(requests, nodes, environment)


@dataclass(frozen=True)
class Container:
    """What DockerSpawner's traits and `create_container` get for one instance."""

    environment: dict[str, str]
    volumes: dict[str, dict]  # host path -> {"bind": container path, "mode": "rw"}
    create_kwargs: dict
    host_config: dict
    mem_limit: int  # DockerSpawner's mem_limit; CPUs are nano_cpus (its cpu_limit is a quota)


def user_environment() -> dict[str, str]:
    """What every process of Atelier's in a container finds: the images' user, home and
    Python (instances, job nodes and replicas alike)."""
    return {
        "HOME": HOME,
        "USER": USER,
        "SHELL": "/bin/bash",
        "VIRTUAL_ENV": ENV_PREFIX,
        "PATH": f"{ENV_PREFIX}/bin:/usr/local/bin:/usr/bin:/bin:{HOME}/.local/bin",  # pip --user's
        "PYTHONUNBUFFERED": "1",
    }


def container(
    plan: core.InstancePlan,
    held: list[Device],
    *,
    hub: str,
    volume: str,
    endpoint_dir: str | None,
    pids_limit: int,
) -> Container:
    """The container of `plan`: not root (the images' user), no new privileges, no
    capabilities (sshd -i as the user needs none), at most `pids_limit` processes, the
    spec's CPU (nano_cpus) and memory enforced by the engine, the held devices only, the
    work volume at work/, the runtime files on a tmpfs and, with SSH, the endpoint's
    directory."""
    access = device_access(held)
    volumes = {volume: {"bind": WORK_PATH, "mode": "rw"}}
    environment = {
        **plan.environment,
        **access.environment,
        **user_environment(),
        "JUPYTER_RUNTIME_DIR": RUNTIME_DIR,
    }
    if endpoint_dir is not None:
        volumes[endpoint_dir] = {"bind": ENDPOINT_DIR, "mode": "rw"}
        environment["ATELIER_SSH_SOCKET"] = f"{ENDPOINT_DIR}/endpoint"
    host_config = {
        "network_mode": "host",  # traffic stays on this machine's loopback (README)
        "security_opt": ["no-new-privileges"],
        "cap_drop": ["ALL"],
        "pids_limit": pids_limit,
        "init": True,  # reaps the zombies of kernels and terminals
        "tmpfs": {RUNTIME_DIR: f"rw,nosuid,nodev,size=64m,uid={UID},gid={GID},mode=0700"},
        "nano_cpus": int(plan.spec.cpu * 1e9),
        "device_requests": access.device_requests,
        "devices": access.devices,
    }
    create_kwargs = {
        "user": f"{UID}:{GID}",
        "working_dir": HOME,
        "labels": labels(hub, plan.owner, plan.name, plan.image.name),
    }
    return Container(
        environment=environment,
        volumes=volumes,
        create_kwargs=create_kwargs,
        host_config=host_config,
        mem_limit=plan.spec.memory_gb * GB,
    )
