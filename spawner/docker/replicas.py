"""Deployments on the Docker backend: each replica's model server runs in a container of its
own, confined as job nodes are (jobs.py: the images' user, no capabilities, the spec's CPU
and memory, the instance's work volume at work/, from the image's digest) and with no
network at all: it listens on a Unix socket in a directory of its own on the host (a tiny
tmpfs under root-only parents, endpoint.py's, `socket_dir`), mounted into that container alone.

The container's user can put anything in that directory, so the router and the readiness
checks open the socket without following a link and only if it is a socket (upstream.py):
a socket there was bound by a process of that container, the only one that mounts it.
"""

from __future__ import annotations

from pathlib import Path

from atelier.spawner import jobnode
from atelier.spawner.backend import ReplicaRun
from atelier.spawner.docker import containers, endpoint
from atelier.spawner.docker.jobs import (
    check_client,
    client_launch,
    confined_run_argv,
    env_file_text,
    write_private,
)
from atelier.spawner.manifests import WORK_PATH

SOCKET_DIR = "/run/atelier-serving"  # the replica's socket directory, in its container
SOCKET = "server.sock"
LABEL_DEPLOYMENT, LABEL_REPLICA = "atelier.deployment", "atelier.replica"


def replica_name(run: ReplicaRun) -> str:
    """Never an instance's (`atelier-<owner>--<name>`) nor a job node's (`atelier-job-`)."""
    return f"{containers.PREFIX}-deploy-{run.id}-r{run.number}"


def replica_labels(hub: str, run: ReplicaRun) -> dict[str, str]:
    """What finds the replica's container again; the owner's label lets `forget_user` take
    it with the user's instances."""
    return {
        containers.LABEL_HUB: hub,
        containers.LABEL_OWNER: run.plan.owner,
        LABEL_DEPLOYMENT: run.id,
        LABEL_REPLICA: str(run.number),
    }


def replica_argv(
    run: ReplicaRun, *, volume: str, socket_dir: str, image: str, hub: str, env_file: str,
    pids_limit: int,
) -> list[str]:  # fmt: skip
    """The replica's `docker run`: no network, `volume` at work/, `socket_dir` (the host's)
    where its server binds its socket."""
    command = [*run.plan.server_argv("python", WORK_PATH), f"--socket={SOCKET_DIR}/{SOCKET}"]
    return confined_run_argv(
        name=replica_name(run),
        network="none",
        labels=replica_labels(hub, run),
        spec=run.plan.spec,
        devices=[],
        pids_limit=pids_limit,
        mounts={volume: WORK_PATH, socket_dir: SOCKET_DIR},
        env_file=env_file,
        image=image,
        command=command,
        stop_timeout=run.grace_s,
    )


class DockerReplicas:
    """The replica seat of the Docker backend (DockerBackend mixes it in)."""

    serves_models = True

    def start_replica(self, run: ReplicaRun) -> str:
        plan = run.plan
        image = self.image_to_run(plan.image)
        environment = {**plan.environment, **containers.user_environment()}
        env_text = env_file_text({**environment, "ATELIER_DEPLOYMENT": plan.name})
        volume = self.mounted_volume(plan.owner, plan.volume)
        check_client()
        self._remove_replica_container(run)  # a start cut off (a crash) left it
        directory = self._socket_dir(run)
        endpoint.prepare(directory, containers.UID, containers.GID)
        launch = jobnode.launch_path(run.directory, run.version, run.number)
        launch.parent.mkdir(mode=0o700, exist_ok=True)
        env_file = launch.with_name(f"replica-{run.number}.env")
        write_private(env_file, env_text)
        argv = replica_argv(
            run,
            volume=str(volume),
            socket_dir=str(directory),
            image=image,
            hub=self.hub_id,
            env_file=str(env_file),
            pids_limit=self.options.pids_limit,
        )
        jobnode.start(run.directory, run.version, run.number, client_launch(argv, 1, run.grace_s))
        return f"unix:{directory / SOCKET}"

    def stop_replica(self, run: ReplicaRun) -> None:
        self._remove_replica_container(run)
        super().stop_replica(run)  # its monitor ends with its client
        endpoint.remove(self._socket_dir(run))

    def _remove_replica_container(self, run: ReplicaRun) -> None:
        labels = {LABEL_DEPLOYMENT: run.id, LABEL_REPLICA: str(run.number)}
        self.remove_containers(lambda: self.containers_labelled(**labels), run.grace_s)

    def _socket_dir(self, run: ReplicaRun) -> Path:
        return socket_dir(self.shared_dir, run.id, run.number)


def socket_dir(shared_dir: Path, id: str, number: int | str) -> Path:
    """A replica's socket directory: one level under root-only parents (none per deployment,
    which a stop would remove while a start of the same deployment makes its own)."""
    return Path(shared_dir) / "serving" / "replicas" / f"{id}-{number}"
