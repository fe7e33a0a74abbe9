"""Instance cgroups: the pure limit and device-rule builders, names, and hierarchy detection."""

import itertools
import os

import pytest

from atelier.spawner.devices import Device
from atelier.spawner.local.cgroups import (
    PTY_RULE,
    Hierarchy,
    Limits,
    device_rules,
    group_name,
    read_device_nodes,
    v1_writes,
    v2_writes,
)

BASIC = {
    "null": ("c", 1, 3),
    "zero": ("c", 1, 5),
    "full": ("c", 1, 7),
    "random": ("c", 1, 8),
    "urandom": ("c", 1, 9),
    "tty": ("c", 5, 0),
    "console": ("c", 5, 1),
    "ptmx": ("c", 5, 2),
}
BASIC_RULES = [
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
]
NVIDIA = {
    "nvidia0": ("c", 195, 0),
    "nvidia1": ("c", 195, 1),
    "nvidia2": ("c", 195, 2),
    "nvidiactl": ("c", 195, 255),
    "nvidia-modeset": ("c", 195, 254),
    "nvidia-uvm": ("c", 508, 0),
    "nvidia-uvm-tools": ("c", 508, 1),
}
ASCEND = {
    "davinci0": ("c", 236, 0),
    "davinci1": ("c", 236, 1),
    "davinci_manager": ("c", 237, 0),
    "devmm_svm": ("c", 238, 0),
    "hisi_hdc": ("c", 239, 0),
}
NODES = {**BASIC, **NVIDIA, **ASCEND, "mem": ("c", 1, 1), "kvm": ("c", 10, 232)}
NVIDIA_SHARED = ["c 195:255 rwm", "c 508:0 rwm", "c 508:1 rwm", "c 195:254 rwm"]
ASCEND_SHARED = ["c 237:0 rwm", "c 238:0 rwm", "c 239:0 rwm"]


def gpu(index):
    return Device("gpu", "a100", index)


def npu(index):
    return Device("ascend", "910b", index)


@pytest.mark.parametrize(
    "held, rules",
    [
        ([], BASIC_RULES),
        ([gpu(1)], [*BASIC_RULES, "c 195:1 rwm", *NVIDIA_SHARED]),
        (
            [gpu(2), gpu(0)],
            [*BASIC_RULES, "c 195:0 rwm", *NVIDIA_SHARED, "c 195:2 rwm"],
        ),
        ([npu(0)], [*BASIC_RULES, "c 236:0 rwm", *ASCEND_SHARED]),
        (
            [npu(1), npu(0)],
            [*BASIC_RULES, "c 236:0 rwm", *ASCEND_SHARED, "c 236:1 rwm"],
        ),
    ],
)
def test_device_rules_allow_the_basic_nodes_and_the_held_devices_only(held, rules):
    assert device_rules(held, NODES) == [*rules, PTY_RULE]


def test_device_rules_never_allow_what_is_not_held():
    shared = {"gpu": {"nvidiactl", "nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools"}}
    shared["ascend"] = {"davinci_manager", "devmm_svm", "hisi_hdc"}
    own = {"gpu": "nvidia{}", "ascend": "davinci{}"}
    for held in ([], [gpu(1)], [npu(0)], [gpu(0), gpu(2)], [gpu(0), npu(1)]):
        expected = set(BASIC)
        for device in held:
            expected |= {own[device.kind].format(device.index), *shared[device.kind]}
        allowed = set(device_rules(held, NODES))
        rule_of = {name: f"{t} {major}:{minor} rwm" for name, (t, major, minor) in NODES.items()}
        assert {name for name, rule in rule_of.items() if rule in allowed} == expected, held
        assert "a *:* rwm" not in allowed


def test_device_rules_skip_nodes_this_machine_lacks():
    assert device_rules([gpu(0)], {"null": ("c", 1, 3)}) == ["c 1:3 rwm", PTY_RULE]


def test_v1_writes_deny_every_device_before_allowing():
    limits = Limits(memory_bytes=2 * 1024**3, cpu=3)
    assert v1_writes("memory", limits, []) == [("memory.limit_in_bytes", str(2 * 1024**3))]
    assert v1_writes("cpu", limits, []) == [
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "300000"),
    ]
    assert v1_writes("pids", limits, []) == [("pids.max", "4096")]
    assert v1_writes("devices", limits, ["c 1:3 rwm", PTY_RULE]) == [
        ("devices.deny", "a"),
        ("devices.allow", "c 1:3 rwm"),
        ("devices.allow", PTY_RULE),
    ]


def test_v2_writes_the_controllers_enabled():
    limits = Limits(memory_bytes=1024, cpu=2, pids=10)
    assert v2_writes({"memory", "cpu", "pids"}, limits) == [
        ("memory.max", "1024"),
        ("cpu.max", "200000 100000"),
        ("pids.max", "10"),
    ]
    assert v2_writes({"memory"}, limits) == [("memory.max", "1024")]


def test_distinct_instances_never_share_a_group():
    """Accounts are [a-z0-9_-] (one per hub user), instance names [a-z0-9-]: the dot between
    them makes the name injective, where the old `<user>:<instance>` slug was not."""
    accounts = ["atelier-alice_corp", "atelier-alice", "atelier-alice-corp", "atelier-a", "a_b"]
    instances = ["exp", "corp-exp", "exp-1", "1", "a", "b-c"]
    pairs = list(itertools.product(accounts, instances))
    names = {group_name(account, instance) for account, instance in pairs}
    assert len(names) == len(pairs)
    assert all(name.count(".") == 1 for name in names)


def test_hierarchy_v1_uses_each_writable_controller(tmp_path):
    for controller in ("memory", "cpu", "devices"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").touch()
    hierarchy = Hierarchy.detect(tmp_path)
    assert hierarchy.version == 1
    assert hierarchy.controllers == {"memory", "cpu", "devices"}
    assert hierarchy.unenforced() == ["process count"]
    assert hierarchy.groups("atelier-al.lab") == [
        tmp_path / c / "atelier" / "atelier-al.lab" for c in ("cpu", "devices", "memory")
    ]


def test_hierarchy_v2_limits_but_cannot_filter_devices(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    hierarchy = Hierarchy.detect(tmp_path)
    assert (hierarchy.version, hierarchy.controllers) == (2, {"memory", "cpu", "pids"})
    assert hierarchy.unenforced() == ["device access (GPUs, NPUs)"]
    [group] = hierarchy.create("atelier-al.lab", Limits(memory_bytes=4096, cpu=1), [PTY_RULE])
    assert group == tmp_path / "atelier" / "atelier-al.lab"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (tmp_path / "atelier" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (group / "memory.max").read_text() == "4096"
    assert (group / "cpu.max").read_text() == "100000 100000"
    assert (group / "pids.max").read_text() == "4096"


def test_this_machine_enforces_every_limit():
    """These machines run the hub as root on cgroup v1 with every controller mounted."""
    assert os.geteuid() == 0
    hierarchy = Hierarchy.detect()
    assert (hierarchy.version, hierarchy.unenforced()) == (1, [])


def test_not_root_enforces_nothing(tmp_path):
    assert Hierarchy(0, frozenset(), tmp_path).unenforced() == [
        "memory",
        "CPU time",
        "process count",
        "device access (GPUs, NPUs)",
    ]
    assert Hierarchy(0, frozenset(), tmp_path).groups("x.y") == []


def test_read_device_nodes_lists_character_devices_not_links(tmp_path):
    os.mknod(tmp_path / "nvidia0", 0o600 | 0o020000, os.makedev(195, 0))
    (tmp_path / "nvidia1").symlink_to("/dev/null")
    (tmp_path / "nvidia2").write_text("not a device")
    assert read_device_nodes(tmp_path) == {"nvidia0": ("c", 195, 0)}
    assert read_device_nodes()["null"] == ("c", 1, 3)
