"""Accelerator inventory and exclusive allocation.

Parsing and choosing are pure; `detect_devices` is the one place that runs `nvidia-smi`
and `npu-smi`. An `Allocator` hands each device to one instance or job at a time; the hub
and the service share its holds through the store.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from atelier.spawner.core import OptionsError

VISIBLE_DEVICES_VARIABLE = {"gpu": "CUDA_VISIBLE_DEVICES", "ascend": "ASCEND_RT_VISIBLE_DEVICES"}
KIND_WORDS = {"gpu": "GPU", "ascend": "NPU"}
INSTANCE_HOLDER, JOB_HOLDER = "instance:", "job:"  # how holders' names begin


@dataclass(frozen=True, order=True)
class Device:
    kind: str  # gpu | ascend
    type: str  # a100, h100, 910b, ...
    index: int

    def to_json(self) -> dict:
        return {"kind": self.kind, "type": self.type, "index": self.index}


class DevicesUnavailable(OptionsError):
    """Not enough free devices of a type for a spec: a refusal of the field `spec` that may
    pass once another instance stops (code `unavailable`)."""

    def __init__(self, spec: str, kind: str, type_: str, needed: int, free: int):
        word = KIND_WORDS.get(kind, "device")
        message = (
            f"spec {spec} needs {needed} {type_.upper()} {word}s; {free} "
            f"{'is' if free == 1 else 'are'} free. Stop another instance or choose a smaller spec."
        )
        super().__init__("spec", message, code="unavailable")
        self.needed, self.free = needed, free

    def __str__(self) -> str:
        return self.message  # it names the spec already


def device_type(product_name: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'a100'; 'Tesla V100-PCIE' -> 'v100'; 'Ascend 910B3' -> '910b'."""
    for token in re.split(r"[\s-]+", product_name.lower()):
        match = re.match(r"[a-z]*\d+[a-z]?", token)
        if match:
            return match.group(0)
    return "unknown"


def parse_nvidia_smi(output: str) -> list[Device]:
    """Parse `nvidia-smi --query-gpu=index,name --format=csv,noheader`."""
    devices = []
    for line in output.splitlines():
        if "," in line:
            index, name = (part.strip() for part in line.split(",", 1))
            devices.append(Device("gpu", device_type(name), int(index)))
    return devices


def parse_npu_smi(output: str) -> list[Device]:
    """Parse `npu-smi info -l` (blocks of 'NPU ID : n' then 'Name : Ascend 910B3')."""
    devices, index = [], None
    for line in output.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "NPU ID":
            index = int(value)
        elif key in ("Name", "Chip Name") and index is not None:
            devices.append(Device("ascend", device_type(value), index))
            index = None
    return devices


def detect_devices() -> list[Device]:
    """Ask the drivers what is installed; no driver, no devices."""
    probes = [
        (["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"], parse_nvidia_smi),
        (["npu-smi", "info", "-l"], parse_npu_smi),
    ]
    devices: list[Device] = []
    for command, parse in probes:
        if shutil.which(command[0]):
            result = subprocess.run(command, capture_output=True, text=True, timeout=30)
            if result.returncode == 0:
                devices.extend(parse(result.stdout))
    return devices


def count_by_type(inventory: list[Device]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for device in inventory:
        counts[device.type] = counts.get(device.type, 0) + 1
    return counts


def choose_devices(
    inventory: list[Device], in_use: set[Device], spec: str, type_: str, count: int
) -> list[Device]:
    """The lowest-numbered free devices of a type, or `DevicesUnavailable`."""
    candidates = sorted(d for d in inventory if d.type == type_)
    free = [d for d in candidates if d not in in_use]
    if len(free) < count:
        kind = candidates[0].kind if candidates else "gpu"
        raise DevicesUnavailable(spec, kind, type_, count, len(free))
    return free[:count]


def visible_devices_environment(devices: list[Device]) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES for the allocated devices."""
    environment: dict[str, str] = {}
    for device in devices:
        variable = VISIBLE_DEVICES_VARIABLE[device.kind]
        environment[variable] = ",".join(
            filter(None, [environment.get(variable), str(device.index)])
        )
    return environment


class ProcessHolds:
    """Device holds kept in this process alone (a store keeps them for several processes:
    the hub's spawners and the service's jobs; see hub.store.jobs)."""

    def __init__(self):
        self.holders: dict[Device, str] = {}

    def device_holds(self) -> dict[Device, str]:
        return dict(self.holders)

    def hold_devices(self, holder: str, choose) -> list[Device]:
        chosen = choose({d for d, other in self.holders.items() if other != holder})
        self.release_devices(holder)
        self.holders.update(dict.fromkeys(chosen, holder))
        return chosen

    def restore_devices(self, holder: str, devices: list[Device]) -> None:
        self.holders.update(dict.fromkeys(devices, holder))

    def release_devices(self, holder: str) -> None:
        for device in [d for d, h in self.holders.items() if h == holder]:
            del self.holders[device]


class Allocator:
    """Which instance or job holds which device: each device goes to one holder at a time."""

    def __init__(self, inventory: list[Device], holds=None):
        self.inventory = list(inventory)
        self.holds = holds or ProcessHolds()

    def available(self, holder: str, spec: str, type_: str | None, count: int) -> list[Device]:
        """The devices `holder` would get now (its own count as free), or DevicesUnavailable."""
        if not type_ or not count:
            return []
        held = {device for device, other in self.holds.device_holds().items() if other != holder}
        return choose_devices(self.inventory, held, spec, type_, count)

    def acquire(self, holder: str, spec: str, type_: str | None, count: int) -> list[Device]:
        if not type_ or not count:
            self.release(holder)
            return []
        return self.holds.hold_devices(
            holder, lambda held: choose_devices(self.inventory, held, spec, type_, count)
        )

    def restore(self, holder: str, devices: list[Device]) -> None:
        """Re-register devices of an instance found running after a hub restart."""
        self.holds.restore_devices(holder, devices)

    def release(self, holder: str) -> None:
        self.holds.release_devices(holder)
