"""Instance cgroups on the local backend: memory, CPU time, process count and device access.

cgroup v1 (one hierarchy per controller, /sys/fs/cgroup/<controller>) and v2 (one unified
hierarchy at /sys/fs/cgroup). What each group holds is decided by pure builders (`v1_writes`,
`v2_writes`, `device_rules`); `Hierarchy` finds what this machine offers and does the writing.
v2 filters devices only with an eBPF program, which Atelier does not load: there, device access
is not enforced, and `Hierarchy.unenforced` says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from atelier.spawner.devices import Device

ROOT = Path("/sys/fs/cgroup")
PARENT = "atelier"  # every instance's group lives under <hierarchy>/atelier/
CPU_PERIOD_US = 100_000
PIDS_MAX = 4096  # processes and threads per instance: a fork bomb stops here
V1_CONTROLLERS = ("memory", "cpu", "pids", "devices")
V2_CONTROLLERS = ("memory", "cpu", "pids")
WHAT = {
    "memory": "memory",
    "cpu": "CPU time",
    "pids": "process count",
    "devices": "device access (GPUs, NPUs)",
}
# What any process needs: /dev/null, zero, full, random, urandom, tty, console, ptmx
BASIC_NODES = ("null", "zero", "full", "random", "urandom", "tty", "console", "ptmx")
PTY_RULE = "c 136:* rwm"  # /dev/pts/*: Unix98 pseudo-terminals (major 136), as runc allows
ACCELERATOR_NODES = {  # kind: (one device's node, the driver's shared nodes)
    "gpu": ("nvidia{index}", ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")),
    "ascend": ("davinci{index}", ("davinci_manager", "devmm_svm", "hisi_hdc")),
}

Node = tuple[str, int, int]  # (type "c" | "b", major, minor)


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu: int  # cores
    pids: int = PIDS_MAX


def group_name(account: str, instance: str) -> str:
    """Injective: accounts are [a-z0-9_-] and one per hub user, instance names [a-z0-9-]."""
    return f"{account}.{instance}"


def device_rules(held: Iterable[Device], nodes: Mapping[str, Node]) -> list[str]:
    """devices.allow rules: the basic nodes, pseudo-terminals and the held accelerators with
    their driver's shared nodes; `nodes` is /dev's character devices by name."""
    names = list(BASIC_NODES)
    for device in sorted(held):
        own, shared = ACCELERATOR_NODES[device.kind]
        names += [own.format(index=device.index), *(n for n in shared if n not in names)]
    present = (nodes[name] for name in names if name in nodes)
    return [*(f"{t} {major}:{minor} rwm" for t, major, minor in present), PTY_RULE]


def v1_writes(controller: str, limits: Limits, rules: list[str]) -> list[tuple[str, str]]:
    """The files to write, in order, in a v1 controller's group."""
    return {
        "memory": [("memory.limit_in_bytes", str(limits.memory_bytes))],
        "cpu": [
            ("cpu.cfs_period_us", str(CPU_PERIOD_US)),
            ("cpu.cfs_quota_us", str(limits.cpu * CPU_PERIOD_US)),
        ],
        "pids": [("pids.max", str(limits.pids))],
        "devices": [("devices.deny", "a"), *(("devices.allow", rule) for rule in rules)],
    }[controller]


def v2_writes(controllers: Iterable[str], limits: Limits) -> list[tuple[str, str]]:
    """The files to write in a v2 group where these controllers are enabled."""
    files = {
        "memory": ("memory.max", str(limits.memory_bytes)),
        "cpu": ("cpu.max", f"{limits.cpu * CPU_PERIOD_US} {CPU_PERIOD_US}"),
        "pids": ("pids.max", str(limits.pids)),
    }
    return [files[c] for c in V2_CONTROLLERS if c in controllers]


def read_device_nodes(dev: Path = Path("/dev")) -> dict[str, Node]:
    """/dev's character devices by name (lstat: a link is not its target)."""
    nodes = {}
    for entry in os.scandir(dev):
        mode = entry.stat(follow_symlinks=False)
        if stat.S_ISCHR(mode.st_mode):
            nodes[entry.name] = ("c", os.major(mode.st_rdev), os.minor(mode.st_rdev))
    return nodes


@dataclass(frozen=True)
class Hierarchy:
    """The cgroup controllers this hub can use: version 1 or 2, none when not root."""

    version: int
    controllers: frozenset[str]
    root: Path = ROOT

    @classmethod
    def detect(cls, root: Path = ROOT) -> Hierarchy:
        if os.geteuid() != 0:
            return cls(0, frozenset(), root)
        if (root / "cgroup.controllers").exists():
            offered = (root / "cgroup.controllers").read_text().split()
            writable = os.access(root, os.W_OK)
            return cls(2, frozenset(c for c in V2_CONTROLLERS if c in offered and writable), root)
        usable = (c for c in V1_CONTROLLERS if os.access(root / c / "cgroup.procs", os.W_OK))
        return cls(1, frozenset(usable), root)

    def unenforced(self) -> list[str]:
        """What the local backend cannot limit on this machine, in words."""
        return [WHAT[c] for c in V1_CONTROLLERS if c not in self.controllers]

    def groups(self, name: str) -> list[Path]:
        """The instance's group in every hierarchy used (one on v2)."""
        if self.version == 1:
            return [self.root / c / PARENT / name for c in sorted(self.controllers)]
        return [self.root / PARENT / name] if self.controllers else []

    def create(self, name: str, limits: Limits, rules: list[str]) -> list[Path]:
        """Make the instance's groups with their limits; processes join them in the preexec."""
        if self.version == 1:
            for controller in sorted(self.controllers):
                group = self.root / controller / PARENT / name
                group.mkdir(parents=True, exist_ok=True)
                write(group, v1_writes(controller, limits, rules))
        elif self.controllers:
            enable = " ".join(f"+{c}" for c in sorted(self.controllers))
            group = self.root / PARENT / name
            group.mkdir(parents=True, exist_ok=True)
            for parent in (self.root, group.parent):
                (parent / "cgroup.subtree_control").write_text(enable)
            write(group, v2_writes(self.controllers, limits))
        return self.groups(name)


def write(group: Path, writes: list[tuple[str, str]]) -> None:
    for file, value in writes:  # one write per rule: the kernel reads one rule per write
        (group / file).write_text(value)


def remove(groups: list[Path]) -> None:
    """Kill whatever is left in the groups (kernels, terminals) and remove them."""
    for group in groups:
        for _ in range(50):
            try:
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


def usage(hierarchy: Hierarchy, name: str) -> list[tuple[str, float]]:
    """What the group's processes use now: memory (the group's count) and CPU seconds (of
    the processes alive in it, from /proc: v1 here has no cpuacct)."""
    found: list[tuple[str, float]] = []
    pids: set[str] = set()
    for group in hierarchy.groups(name):
        with contextlib.suppress(OSError):
            pids.update((group / "cgroup.procs").read_text().split())
        for memory in ("memory.usage_in_bytes", "memory.current"):
            with contextlib.suppress(OSError, ValueError):
                found.append(("memory_bytes", float((group / memory).read_text())))
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            found.append(("cpu_seconds", (int(fields[11]) + int(fields[12])) / ticks))
    return found
