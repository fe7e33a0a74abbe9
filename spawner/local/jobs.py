"""Training jobs on the local backend: each node's `torchrun` is a process tree on this
machine, as the owner's account, in a cgroup of its own with the spec's limits and devices,
under the instances' seccomp filter, in the work volume of the job's instance. Nodes meet
at a rendezvous on a free loopback port of the job's own."""

from __future__ import annotations

import os
import socket
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_group(account: str, job: str, node: int) -> str:
    """Never an instance's (`<account>.<instance>`: instance names have no '.')."""
    return f"{account}.{job}.{node}"


class LocalJobs:
    """The job seat of the local backend (LocalBackend mixes it in)."""

    def start_job(self, run: JobRun) -> None:
        plan = run.plan
        account = self.store.claim_account(plan.owner)
        isolated = os.geteuid() == 0
        if isolated:
            accounts.ensure_account(account)
        owner = account if isolated else None
        root = self.volume(plan.owner, plan.volume).mounted(account_ids(owner))
        home = self._job_home(run, owner)
        bin_dir = env_python_bin(
            self.settings.resolved_envs_dir, plan.image.base or plan.image.name
        )
        endpoint = f"127.0.0.1:{free_port()}"
        for node in range(plan.nodes):
            devices = run.node_devices(node)
            limits = cgroups.Limits(memory_bytes=plan.spec.memory_gb * 1024**3, cpu=plan.spec.cpu)
            rules = cgroups.device_rules(devices, cgroups.read_device_nodes())
            hierarchy = cgroups.Hierarchy.detect()
            groups = hierarchy.create(node_group(account, plan.name, node), limits, rules)
            argv = jobs.torchrun_argv(plan, node, endpoint, run.id, f"{home}/.torchrun")
            environment = {
                **jobs.rank_environment(plan, str(root), run.attempt),
                **visible_devices_environment(devices),
                "PATH": f"{home}/.local/bin:{bin_dir}:{SYSTEM_PATH}",
                "VIRTUAL_ENV": str(bin_dir.parent),
                "HOME": str(home),
                "USER": account,
                "LANG": os.environ.get("LANG", "C.UTF-8"),
                "PYTHONUNBUFFERED": "1",
            }
            launch = {
                "argv": [str(bin_dir / argv[0]), *argv[1:]],
                "env": environment,
                "cwd": str(root),
                "account": account if isolated else None,
                "cgroups": [str(group / "cgroup.procs") for group in groups],
                "confine": True,
                "ranks": plan.world_size,
            }
            jobnode.start(run.directory, run.attempt, node, launch)

    def _job_home(self, run: JobRun, owner: str | None) -> Path:
        """The job's HOME, fresh at each attempt and bounded as an instance's home is
        (`limits.ephemeral_storage_gb`): empty, or a snapshot's kept files (~/.local)."""
        home = self._home(run)
        home.reset(self.settings.limits.ephemeral_storage_gb, owner)
        if run.plan.image.base is not None:
            snapshots.restore(run.plan.image, self.snapshots_dir, home.path, owner)
        return home.path

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
