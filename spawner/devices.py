"""Accelerator inventory and exclusive allocation.

Parsing and choosing are pure; `detect_devices` is the one place that runs `nvidia-smi`
and `npu-smi`. One `Allocator` per hub process hands each device to one instance at a time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from atelier.spawner.core import OptionsError

VISIBLE_DEVICES_VARIABLE = {"gpu": "CUDA_VISIBLE_DEVICES", "ascend": "ASCEND_RT_VISIBLE_DEVICES"}
KIND_WORDS = {"gpu": "GPU", "ascend": "NPU"}


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


class Allocator:
    """Which instance holds which device, for the whole hub process."""

    def __init__(self, inventory: list[Device]):
        self.inventory = list(inventory)
        self.holders: dict[Device, str] = {}

    def available(self, holder: str, spec: str, type_: str | None, count: int) -> list[Device]:
        """The devices `holder` would get now (its own count as free), or DevicesUnavailable."""
        if not type_ or not count:
            return []
        held = {device for device, other in self.holders.items() if other != holder}
        return choose_devices(self.inventory, held, spec, type_, count)

    def acquire(self, holder: str, spec: str, type_: str | None, count: int) -> list[Device]:
        devices = self.available(holder, spec, type_, count)
        self.release(holder)
        self.holders.update(dict.fromkeys(devices, holder))
        return devices

    def restore(self, holder: str, devices: list[Device]) -> None:
        """Re-register devices of an instance found running after a hub restart."""
        self.holders.update(dict.fromkeys(devices, holder))

    def release(self, holder: str) -> None:
        for device in [d for d, h in self.holders.items() if h == holder]:
            del self.holders[device]
