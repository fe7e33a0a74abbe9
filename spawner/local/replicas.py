"""Deployments on the local backend: each replica is a model server process on this machine,
run as a job node is (the owner's account, its own cgroup with the spec's limits, the seccomp
filter, the instance's work volume, a fresh home), listening on a Unix socket its monitor
binds in a directory only root can enter: no other account can reach a replica, and no
address a user can take can stand in for one."""

from __future__ import annotations

from pathlib import Path

from atelier.spawner import jobnode
from atelier.spawner.backend import ReplicaRun
from atelier.spawner.local import cgroups
from atelier.spawner.local.homes import InstanceHome
from atelier.spawner.local.sshendpoint import trusted_directories

SOCKET_PATH_LIMIT = 107  # sun_path's bytes, less the NUL


class LocalReplicas:
    """The replica seat of the local backend (LocalBackend mixes it in)."""

    serves_models = True

    def start_replica(self, run: ReplicaRun) -> str:
        plan = run.plan
        socket = self._socket(run)
        if len(str(socket)) > SOCKET_PATH_LIMIT:
            raise RuntimeError(
                f"{socket} is longer than a Unix socket's path may be: a shorter shared_dir"
            )
        socket.parent.mkdir(mode=0o700, exist_ok=True)
        trusted_directories(socket.parent)
        work = self.workload(plan.owner, plan.image, plan.volume, self._replica_home(run))
        argv = plan.server_argv("python", str(work.root))
        environment = {**plan.environment, "ATELIER_DEPLOYMENT": plan.name}
        group = self._replica_group(run)
        launch = work.launch(group, plan.spec, [], argv, environment)
        jobnode.start(
            run.directory, run.version, run.number,
            {**launch, "ranks": 1, "listen": str(socket), "grace_s": run.grace_s},
        )  # fmt: skip
        return f"unix:{socket}"

    def stop_replica(self, run: ReplicaRun) -> None:
        super().stop_replica(run)
        cgroups.remove(cgroups.Hierarchy.detect().groups(self._replica_group(run)))
        self._replica_home(run).release()
        self._socket(run).unlink(missing_ok=True)

    def _socket(self, run: ReplicaRun) -> Path:
        return self.shared_dir / "replicas" / f"{run.id}-{run.number}.sock"

    def _replica_group(self, run: ReplicaRun) -> str:
        """Never an instance's or a job's (`<account>.<name>[.<node>]`)."""
        account = self.store.claim_account(run.plan.owner)
        return f"{account}.deploy.{run.id}.{run.number}"

    def _replica_home(self, run: ReplicaRun) -> InstanceHome:
        account = self.store.claim_account(run.plan.owner)
        return InstanceHome(self.shared_dir, account, f"deploy.{run.id}.{run.number}")
