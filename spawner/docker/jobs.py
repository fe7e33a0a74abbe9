"""Training jobs on the Docker backend: each node's `torchrun` runs in a container of its own,
confined as instance containers are (the images' non-root user, no new privileges, no
capabilities, a pids limit, the spec's CPU and memory enforced by the engine, exactly the
node's devices), with the job's instance's work volume at work/, from the image's digest.

A job's nodes meet on a network of the job's own (`atelier-job-<id>`, internal: no route out
of it, and no other container on it); node 0's container name is the rendezvous host. Each
node's monitor (atelier.spawner.jobnode, root) runs only the engine's client, `docker run`
attached, on the engine the backend uses (DOCKER_HOST), so the node's output reaches the
job's logs as a local node's does. The container's environment goes in a root-only file
(`--env-file`), never on a command line (any host account may read those) nor in the
client's own environment (a job's `DOCKER_CONFIG` would steer the root client). A stop stops
and removes the attempt's containers, found by their labels, before the monitors end.

The builders at the top are pure; `DockerJobs` (the backend mixes it in) does the I/O.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import docker

from atelier.spawner import core, jobnode
from atelier.spawner.backend import JobRun
from atelier.spawner.core import jobs
from atelier.spawner.docker import containers
from atelier.spawner.manifests import WORK_PATH

DOCKER = "/usr/bin/docker"  # the engine's own client (Debian's docker.io)
CLIENT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PORT = 29400  # the rendezvous, on node 0's container
LOG_DIR = "/tmp/torchrun"  # torchrun's own files, inside the container
LABEL_JOB, LABEL_ATTEMPT, LABEL_NODE = "atelier.job", "atelier.job.attempt", "atelier.job.node"
FIRST_NODE_S = 30  # how long the other nodes wait for node 0's container to run


def network_name(job: str) -> str:
    """The job's own network (every attempt's): never an instance container's name, which
    has '--' after the owner (container_name), nor an engine's own network."""
    return f"{containers.PREFIX}-job-{job}"


def node_name(job: str, attempt: int, node: int) -> str:
    """A node's container: its name is its host name on the job's network."""
    return f"{containers.PREFIX}-job-{job}-a{attempt}-n{node}"


def job_labels(hub: str, run: JobRun, node: int | None = None) -> dict[str, str]:
    """What finds the job's containers and its network again; the owner's label lets
    `forget_user` take them with the user's instances."""
    found = {
        containers.LABEL_HUB: hub,
        containers.LABEL_OWNER: run.plan.owner,
        LABEL_JOB: run.id,
        LABEL_ATTEMPT: str(run.attempt),
    }
    return found if node is None else {**found, LABEL_NODE: str(node)}


def node_environment(run: JobRun, node: int) -> dict[str, str]:
    """What every rank of `node` finds in its container besides torchrun's variables: the
    job's, Atelier's and the node's devices', with the images' user, home and Python."""
    return {
        **jobs.rank_environment(run.plan, WORK_PATH, run.attempt),
        **containers.device_access(run.node_devices(node)).environment,
        **containers.user_environment(),
    }


def env_file_text(environment: dict[str, str]) -> str:
    """`environment` as the client's `--env-file` reads it: one NAME=value a line, the value
    verbatim (a line break would end it: refused)."""
    for name, value in environment.items():
        if "\n" in value or "\r" in value:
            raise core.OptionsError(
                "environment", f"{name}: a value with a line break cannot reach a container"
            )
    return "".join(f"{name}={value}\n" for name, value in environment.items())


def csv_field(text: str) -> str:
    """One field of a `--mount` or `--gpus` value (a CSV line), quoted where it must be."""
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def device_options(access: containers.DeviceAccess) -> list[str]:
    """The client's words for `device_access`: NVIDIA GPUs by host index, Ascend nodes."""
    options = []
    for request in access.device_requests:
        options.append("--gpus=" + csv_field("device=" + ",".join(request["DeviceIDs"])))
    options += [f"--device={node}" for node in access.devices]
    return options


def docker_run_argv(
    run: JobRun,
    node: int,
    *,
    volume: str,
    image: str,
    hub: str,
    env_file: str,
    pids_limit: int,
) -> list[str]:
    """Node `node`'s `docker run`: on the job's network under its node name, `volume` (the
    host's mount) at work/, `image` (a digest reference) running torchrun with node 0 as
    the rendezvous."""
    name = node_name(run.id, run.attempt, node)
    endpoint = f"{node_name(run.id, run.attempt, 0)}:{PORT}"
    return confined_run_argv(
        name=name,
        network=network_name(run.id),
        labels=job_labels(hub, run, node),
        spec=run.plan.spec,
        devices=run.node_devices(node),
        pids_limit=pids_limit,
        mounts={volume: WORK_PATH},
        env_file=env_file,
        image=image,
        command=jobs.torchrun_argv(run.plan, node, endpoint, run.id, LOG_DIR),
        stop_timeout=jobnode.GRACE_S,
    )


def confined_run_argv(
    *,
    name: str,
    network: str,
    labels: dict[str, str],
    spec: core.Spec,
    devices: list,
    pids_limit: int,
    mounts: dict[str, str],
    env_file: str,
    image: str,
    command: list[str],
    stop_timeout: float,
) -> list[str]:
    """A `docker run` of Atelier's workloads (job nodes, replicas), confined as instance
    containers are: attached (its monitor reads the output; its exit status is the
    workload's), removed when it ends, the images' user, no new privileges, no capabilities,
    the spec's CPU and memory, exactly `devices`, the host paths `mounts` (host -> container)
    bound, working in work/."""
    memory = spec.memory_gb * containers.GB
    binds = [
        ",".join(["type=bind", csv_field(f"source={host}"), csv_field(f"target={inside}")])
        for host, inside in mounts.items()
    ]
    return [
        DOCKER,
        "run",
        "--rm",
        f"--name={name}",
        f"--hostname={name}",  # what the other nodes resolve it by (gloo, torchrun's store)
        f"--network={network}",
        *[f"--label={key}={value}" for key, value in labels.items()],
        f"--user={containers.UID}:{containers.GID}",
        "--security-opt=no-new-privileges",
        "--cap-drop=ALL",
        f"--pids-limit={pids_limit}",
        f"--memory={memory}",
        f"--shm-size={memory // 2}",  # in the memory limit; NCCL and DataLoaders want room
        f"--cpus={spec.cpu}",
        *device_options(containers.device_access(devices)),
        "--init",  # forwards the stop's SIGTERM to the workload and reaps what it leaves
        f"--stop-timeout={int(stop_timeout)}",
        "--log-driver=none",  # the monitor keeps the logs (bounded); the engine keeps none
        "--pull=never",
        *[f"--mount={bind}" for bind in binds],
        f"--workdir={WORK_PATH}",
        f"--env-file={env_file}",
        image,
        *command,
    ]


def client_environment(environ: dict[str, str]) -> dict[str, str]:
    """The monitor's client reaches the engine the backend reaches (DOCKER_HOST, else the
    default socket), with nothing else of the service's environment."""
    found = {"PATH": CLIENT_PATH, "HOME": environ.get("HOME", "/root")}
    if "DOCKER_HOST" in environ:
        found["DOCKER_HOST"] = environ["DOCKER_HOST"]
    return found


def check_client() -> None:
    if not os.access(DOCKER, os.X_OK):
        raise RuntimeError(f"the Docker backend's workloads need the engine's client, {DOCKER}")


def client_launch(argv: list[str], ranks: int, grace_s: float = jobnode.GRACE_S) -> dict:
    """A monitor's launch that runs only the engine's client, as root (the container it
    starts is what is confined)."""
    return {
        "argv": argv,
        "env": client_environment(dict(os.environ)),
        "cwd": "/",
        "account": None,
        "cgroups": [],
        "confine": False,
        "ranks": ranks,
        "grace_s": grace_s,
    }


def write_private(path: Path, text: str) -> None:
    """Root's alone (0600), replaced whole."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


class DockerJobs:
    """The job seat of the Docker backend (DockerBackend mixes it in)."""

    def start_job(self, run: JobRun) -> None:
        plan = run.plan
        image = self.image_to_run(plan.image)  # a digest reference; OptionsError if gone
        environments = [env_file_text(node_environment(run, n)) for n in range(plan.nodes)]
        volume = self.mounted_volume(plan.owner, plan.volume)
        check_client()
        if self._attempt_containers(run):  # a start of this attempt cut off (a crash)
            self.stop_job(run)
        self._job_network(run)
        attempt = jobnode.launch_path(run.directory, run.attempt, 0).parent
        attempt.mkdir(mode=0o700, exist_ok=True)
        for node in range(plan.nodes):
            env_file = attempt / f"node-{node}.env"
            write_private(env_file, environments[node])
            argv = docker_run_argv(
                run,
                node,
                volume=str(volume),
                image=image,
                hub=self.hub_id,
                env_file=str(env_file),
                pids_limit=self.options.pids_limit,
            )
            jobnode.start(run.directory, run.attempt, node, client_launch(argv, plan.world_size))
            if node == 0 and plan.nodes > 1:
                self._wait_running(run)

    def mounted_volume(self, owner: str, instance: str) -> Path:
        """The instance's work volume for a workload's container, as the instance spawner
        mounts it (the engine, root, binds it); `core.OptionsError` when it is gone."""
        try:
            ids = (containers.UID, containers.GID)
            return self.volume(owner, instance).mounted(ids, False)
        except core.VolumeUnavailable as error:
            raise core.OptionsError("volume", str(error)) from None

    def _wait_running(self, run: JobRun) -> None:
        """Until node 0's container runs (the others resolve its name at once), its node
        ends, or FIRST_NODE_S passed (then torchrun's rendezvous waits on)."""
        name = node_name(run.id, run.attempt, 0)
        deadline = time.monotonic() + FIRST_NODE_S
        while time.monotonic() < deadline:
            with contextlib.suppress(docker.errors.NotFound):
                if self.engine.api.inspect_container(name)["State"]["Running"]:
                    return
            if not jobnode.read_state(run.directory, run.attempt, 0).running:
                return
            time.sleep(0.1)

    def _job_network(self, run: JobRun) -> None:
        """The job's network, made unless an earlier attempt's is still there."""
        name, found = network_name(run.id), self._found_network(run)
        if found is None:
            labels = self._network_labels(run)
            self.engine.api.create_network(name, driver="bridge", internal=True, labels=labels)
        elif not found["mine"]:
            raise RuntimeError(f"a network named {name} that Atelier did not make is in the way")

    def _network_labels(self, run: JobRun) -> dict[str, str]:
        return {containers.LABEL_HUB: self.hub_id, LABEL_JOB: run.id}

    def _found_network(self, run: JobRun) -> dict | None:
        """The engine's network of the job's name ({"Id", "mine"}), or None. (The engine's
        name filter matches parts of names too.)"""
        name, labels = network_name(run.id), self._network_labels(run)
        for found in self.engine.api.networks(names=[name]):
            if found["Name"] == name:
                mine = (found.get("Labels") or {}).items() >= labels.items()
                return {"Id": found["Id"], "mine": mine}
        return None

    def _attempt_containers(self, run: JobRun) -> list[dict]:
        labels = {LABEL_JOB: run.id, LABEL_ATTEMPT: str(run.attempt)}
        return self.containers_labelled(**labels)

    def _remove_containers(self, run: JobRun) -> None:
        self.remove_containers(lambda: self._attempt_containers(run), jobnode.GRACE_S)

    def remove_containers(self, listing, grace_s: float) -> None:
        """SIGTERM to every container `listing()` finds at once (its init hands it on), and
        after `grace_s`, what still runs is removed by force."""
        deadline = time.monotonic() + grace_s
        running = [c["Id"] for c in listing() if c["State"] == "running"]
        for id in running:
            self._engine_call("kill", id, signal="SIGTERM")
        while running and time.monotonic() < deadline:
            time.sleep(0.2)
            running = [c for c in listing() if c["State"] == "running"]
        for found in listing():
            self._engine_call("remove_container", found["Id"], force=True)

    def _engine_call(self, method: str, *args, **kwargs) -> None:
        """An engine call on a container that may be gone or going (its --rm) meanwhile."""
        try:
            getattr(self.engine.api, method)(*args, **kwargs)
        except docker.errors.APIError as error:
            if error.status_code not in (404, 409):
                raise

    def stop_job(self, run: JobRun) -> None:
        self._remove_containers(run)
        super().stop_job(run)  # the monitors end with their clients
        self._remove_containers(run)  # what a client cut off while it started left
        found = self._found_network(run)
        if found is not None and found["mine"]:
            with contextlib.suppress(docker.errors.NotFound):
                self.engine.api.remove_network(found["Id"])

    def job_usage(self, run: JobRun) -> dict[str, float]:
        usage = {"cpu_seconds": 0.0, "memory_bytes": 0.0}
        for found in self._attempt_containers(run):
            try:
                stats = self.engine.api.stats(found["Id"], stream=False, one_shot=True)
            except docker.errors.NotFound:
                continue
            cpu = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
            usage["cpu_seconds"] += cpu.get("total_usage", 0) / 1e9
            memory = stats.get("memory_stats") or {}
            inactive = (memory.get("stats") or {}).get("total_inactive_file", 0)
            usage["memory_bytes"] += max(0, memory.get("usage", 0) - inactive)
        return usage
