"""Device inventory parsing and exclusive allocation."""

import pytest

from atelier.spawner.devices import (
    Allocator,
    Device,
    DevicesUnavailable,
    count_by_type,
    device_type,
    parse_npu_smi,
    parse_nvidia_smi,
    visible_devices_environment,
)

A100 = [Device("gpu", "a100", 0), Device("gpu", "a100", 1)]


@pytest.mark.parametrize(
    "product, type_",
    [
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("Tesla V100-PCIE-32GB", "v100"),
        ("NVIDIA L4", "l4"),
        ("Ascend 910B3", "910b"),
        ("", "unknown"),
    ],
)
def test_device_type_from_product_name(product, type_):
    assert device_type(product) == type_


def test_parse_nvidia_smi():
    output = "0, NVIDIA A100-SXM4-80GB\n1, NVIDIA A100-SXM4-80GB\n2, NVIDIA H100 80GB HBM3\n"
    assert parse_nvidia_smi(output) == [*A100, Device("gpu", "h100", 2)]


def test_parse_npu_smi():
    output = (
        "\tTotal Count                    : 2\n\n"
        "\tNPU ID                         : 0\n\tProduct Name                   : IT21DMDA\n"
        "\tName                           : Ascend 910B3\n\n"
        "\tNPU ID                         : 1\n\tName                           : Ascend 910B3\n"
    )
    assert parse_npu_smi(output) == [Device("ascend", "910b", 0), Device("ascend", "910b", 1)]


def test_allocation_is_exclusive_and_released():
    allocator = Allocator(A100)
    first = allocator.acquire("alice:a", "gpu.1xa100.8u64g", "a100", 1)
    second = allocator.acquire("bob:b", "gpu.1xa100.8u64g", "a100", 1)
    assert first == [A100[0]] and second == [A100[1]]
    with pytest.raises(DevicesUnavailable) as error:
        allocator.acquire("carol:c", "gpu.1xa100.8u64g", "a100", 1)
    assert str(error.value) == (
        "spec gpu.1xa100.8u64g needs 1 A100 GPUs; 0 are free. "
        "Stop another instance or choose a smaller spec."
    )
    allocator.release("alice:a")
    assert allocator.acquire("carol:c", "gpu.1xa100.8u64g", "a100", 1) == [A100[0]]


def test_a_refused_request_holds_nothing():
    allocator = Allocator(A100)
    allocator.acquire("alice:a", "gpu.1xa100.8u64g", "a100", 1)
    with pytest.raises(DevicesUnavailable, match="needs 2 A100 GPUs; 1 is free"):
        allocator.acquire("bob:b", "gpu.2xa100.16u128g", "a100", 2)
    assert set(allocator.holds.device_holds().values()) == {"alice:a"}


def test_cpu_specs_take_no_devices():
    assert Allocator(A100).acquire("alice:a", "cpu.2u8g", None, 0) == []


def test_restore_after_hub_restart_keeps_devices_taken():
    allocator = Allocator(A100)
    allocator.restore("alice:a", [A100[1]])
    assert allocator.acquire("bob:b", "gpu.1xa100.8u64g", "a100", 1) == [A100[0]]


def test_ascend_wording_and_environment():
    npus = [Device("ascend", "910b", 0), Device("ascend", "910b", 3)]
    with pytest.raises(DevicesUnavailable, match="needs 4 910B NPUs; 2 are free"):
        Allocator(npus).acquire("a:b", "ascend.4x910b.96u768g", "910b", 4)
    assert visible_devices_environment(npus) == {"ASCEND_RT_VISIBLE_DEVICES": "0,3"}
    assert visible_devices_environment(A100) == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert count_by_type([*A100, *npus]) == {"a100": 2, "910b": 2}
