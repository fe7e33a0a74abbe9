"""Training jobs on the local backend: each node's `torchrun` is a process tree on this
machine, as the owner's account, in a cgroup of its own with the spec's limits and devices,
under the instances' seccomp filter, in the work volume of the job's instance. Nodes meet
at a rendezvous on a free loopback port of the job's own."""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path

from atelier.spawner import jobnode
from atelier.spawner.backend import JobRun
from atelier.spawner.core import jobs
from atelier.spawner.devices import visible_devices_environment
from atelier.spawner.local import accounts, cgroups, snapshots
from atelier.spawner.local.envs import env_python_bin
from atelier.spawner.local.homes import InstanceHome
from atelier.spawner.local.volumes import account_ids

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


RENDEZVOUS_PORTS = range(20000, 32768)  # below Linux's ephemeral range (32768-60999)


def free_port() -> int:
    """A free loopback port for a job's rendezvous, which torchrun binds a moment later: one
    the kernel hands out to connections (bind to 0) could be taken by any client socket
    meanwhile, and was, with many jobs starting at once ("node 0 exited 1")."""
    for port in random.sample(RENDEZVOUS_PORTS, 50):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port for the job's rendezvous")


def node_group(account: str, job: str, node: int) -> str:
    """Never an instance's (`<account>.<instance>`: instance names have no '.')."""
    return f"{account}.{job}.{node}"


@dataclass(frozen=True)
class Workload:
    """What a job node and a deployment replica share on this machine: the owner's account,
    the instance's volume where it runs, a fresh home, and the image's environment."""

    account: str
    isolated: bool  # the hub is root: it runs as the owner's own account
    root: Path  # where the volume is mounted
    home: Path
    bin_dir: Path

    def launch(self, group: str, spec, devices, argv: list[str], environment: dict) -> dict:
        """The launch of one process tree (atelier.spawner.jobnode) in a cgroup of its own
        (`group`) with the spec's limits and the given devices, under the seccomp filter."""
        limits = cgroups.Limits(memory_bytes=spec.memory_gb * 1024**3, cpu=spec.cpu)
        rules = cgroups.device_rules(devices, cgroups.read_device_nodes())
        groups = cgroups.Hierarchy.detect().create(group, limits, rules)
        return {
            "argv": [str(self.bin_dir / argv[0]), *argv[1:]],
            "env": {
                **environment,
                **visible_devices_environment(devices),
                "PATH": f"{self.home}/.local/bin:{self.bin_dir}:{SYSTEM_PATH}",
                "VIRTUAL_ENV": str(self.bin_dir.parent),
                "HOME": str(self.home),
                "USER": self.account,
                "LANG": os.environ.get("LANG", "C.UTF-8"),
                "PYTHONUNBUFFERED": "1",
            },
            "cwd": str(self.root),
            "account": self.account if self.isolated else None,
            "cgroups": [str(group / "cgroup.procs") for group in groups],
            "confine": True,
        }


class LocalJobs:
    """The job seat of the local backend (LocalBackend mixes it in)."""

    def workload(self, owner: str, image, volume: str, home: InstanceHome) -> Workload:
        """Ready to launch: the account exists, the volume is mounted, the home is fresh
        (bounded by `limits.ephemeral_storage_gb`: empty, or a snapshot's kept files)."""
        account = self.store.claim_account(owner)
        isolated = os.geteuid() == 0
        if isolated:
            accounts.ensure_account(account)
        user = account if isolated else None
        root = self.volume(owner, volume).mounted(account_ids(user))
        home.reset(self.settings.limits.ephemeral_storage_gb, user)
        if image.base is not None:
            snapshots.restore(image, self.snapshots_dir, home.path, user)
        bin_dir = env_python_bin(self.settings.resolved_envs_dir, image.base or image.name)
        return Workload(account, isolated, root, home.path, bin_dir)

    def start_job(self, run: JobRun) -> None:
        plan = run.plan
        work = self.workload(plan.owner, plan.image, plan.volume, self._home(run))
        endpoint = f"127.0.0.1:{free_port()}"
        for node in range(plan.nodes):
            argv = jobs.torchrun_argv(plan, node, endpoint, run.id, f"{work.home}/.torchrun")
            environment = jobs.rank_environment(plan, str(work.root), run.attempt)
            group = node_group(work.account, plan.name, node)
            launch = work.launch(group, plan.spec, run.node_devices(node), argv, environment)
            jobnode.start(run.directory, run.attempt, node, {**launch, "ranks": plan.world_size})

    def _home(self, run: JobRun) -> InstanceHome:
        """Beside the instances' homes, never one of theirs (their names have no '.')."""
        account = self.store.claim_account(run.plan.owner)
        return InstanceHome(self.shared_dir, account, f"job.{run.plan.name}")

    def stop_job(self, run: JobRun) -> None:
        super().stop_job(run)
        account = self.store.claim_account(run.plan.owner)
        hierarchy = cgroups.Hierarchy.detect()
        for node in range(run.plan.nodes):
            cgroups.remove(hierarchy.groups(node_group(account, run.plan.name, node)))
        self._home(run).release()

    def job_usage(self, run: JobRun) -> dict[str, float]:
        account = self.store.claim_account(run.plan.owner)
        hierarchy = cgroups.Hierarchy.detect()
        usage = {"cpu_seconds": 0.0, "memory_bytes": 0.0}
        for node in range(run.plan.nodes):
            for key, value in cgroups.usage(hierarchy, node_group(account, run.plan.name, node)):
                usage[key] += value
        return usage
