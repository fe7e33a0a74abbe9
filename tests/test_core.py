"""The pure planner: names, flavor/spec rules, options, limits and lifecycle changes."""

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from atelier.spawner import core
from atelier.spawner.core import Catalog, Image, InstanceOptions, Limits, OptionsError, Spec

CPU = Image("pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64", "PyTorch")
BASE = Image("python_3.11-cpu-py_3.11-debian_12-x86_64")
CUDA = Image("pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64")
CUDA_H100 = Image(
    "tensorflow_2.16-cuda_12.3-py_3.11-ubuntu_22.04-x86_64", accelerator_types=("h100",)
)
ASCEND = Image("pytorch_2.1.0-cann_8.0.rc1-py_3.9-euleros_2.10-aarch64")
OLD = Image("python_3.10-cpu-py_3.10-debian_12-x86_64", status="deprecated", successor=BASE.name)
OFF = Image("python_3.9-cpu-py_3.9-debian_11-x86_64", status="disabled")
SPECS = [
    Spec("cpu.2u8g"),
    Spec("gpu.1xa100.8u64g"),
    Spec("gpu.2xa100.16u128g"),
    Spec("gpu.1xh100.16u128g"),
    Spec("ascend.1x910b.24u192g"),
    Spec("cpu.64u512g", disabled=True),
]
LIMITS = Limits()


def catalog(accelerators=None, arch=None) -> Catalog:
    images = [CPU, BASE, CUDA, CUDA_H100, ASCEND, OLD, OFF]
    return Catalog(
        {i.name: i for i in images}, {s.name: s for s in SPECS}, accelerators or {}, arch
    )


def plan(options: dict, name="exp-1", cat=None, current_image=None):
    options = core.parse_options(options, LIMITS)
    return core.plan_instance(
        "alice", name, options, cat or catalog({"a100": 2}), LIMITS, current_image
    )


@pytest.mark.parametrize(
    "name, parts",
    [
        (CPU.name, ("pytorch 2.13.0", "cpu", "x86_64")),
        (CUDA.name, ("pytorch 2.4.0", "gpu", "x86_64")),
        (ASCEND.name, ("pytorch 2.1.0", "ascend", "aarch64")),
        (
            "mindspore_2.3.0-cann_8.0-py_3.9-euleros_2.10-aarch64",
            ("mindspore 2.3.0", "ascend", "aarch64"),
        ),
    ],
)
def test_image_name_gives_engine_flavor_and_arch(name, parts):
    image = Image(name)
    assert (image.engine, image.flavor, image.arch) == parts


@pytest.mark.parametrize(
    "name",
    [
        "pytorch",
        "pytorch_2.1-gpu-py_3.11-debian_12-x86_64",  # gpu is not a stack: cuda_X
        "pytorch_2.1-cpu-py_3.11-debian_12-arm64",
        "PyTorch_2.1-cpu-py_3.11-debian_12-x86_64",
        "pytorch_2.1-cpu-py3.11-debian_12-x86_64",
        "pytorch_2.1-cpu-py_3.11-debian-x86_64",
    ],
)
def test_malformed_image_names_are_refused_with_the_format(name):
    with pytest.raises(OptionsError) as error:
        core.validate_image_name(name)
    assert error.value.field == "name"
    assert core.IMAGE_NAME_FORMAT in error.value.message


@pytest.mark.parametrize(
    "name, flavor, accelerator, count, cpu, memory",
    [
        ("cpu.2u8g", "cpu", None, 0, 2, 8),
        ("gpu.2xa100.16u128g", "gpu", "a100", 2, 16, 128),
        ("ascend.1x910b.24u192g", "ascend", "910b", 1, 24, 192),
    ],
)
def test_spec_name_gives_resources(name, flavor, accelerator, count, cpu, memory):
    spec = Spec(name)
    assert (spec.flavor, spec.accelerator_type, spec.accelerator_count) == (
        flavor,
        accelerator,
        count,
    )
    assert (spec.cpu, spec.memory_gb) == (cpu, memory)


@pytest.mark.parametrize(
    "name", ["cpu", "gpu.a100.8u64g", "cpu.0u8g", "tpu.1xv4.8u64g", "gpu.0xa100.8u8g"]
)
def test_malformed_spec_names_are_refused(name):
    with pytest.raises(OptionsError, match="does not follow"):
        core.validate_spec_name(name)


@pytest.mark.parametrize(
    "image, spec, fits",
    [
        (CPU, "cpu.2u8g", True),
        (CPU, "gpu.1xa100.8u64g", False),
        (CPU, "ascend.1x910b.24u192g", False),
        (CUDA, "cpu.2u8g", False),
        (CUDA, "gpu.1xa100.8u64g", True),
        (CUDA, "gpu.1xh100.16u128g", True),
        (CUDA, "ascend.1x910b.24u192g", False),
        (CUDA_H100, "gpu.1xa100.8u64g", False),  # the image names its GPU types
        (CUDA_H100, "gpu.1xh100.16u128g", True),
        (ASCEND, "ascend.1x910b.24u192g", True),
        (ASCEND, "gpu.1xa100.8u64g", False),
        (ASCEND, "cpu.2u8g", False),
    ],
)
def test_flavor_decides_the_specs(image, spec, fits):
    assert core.spec_fits_image(image, Spec(spec)) is fits


def test_form_offers_only_what_this_backend_can_run():
    here = catalog({"a100": 1}, arch="x86_64")
    offered = {i.name for i in here.offered_images()}
    # no deprecated/disabled images, no Ascend (no NPUs, wrong arch), no H100-only image
    assert offered == {CPU.name, BASE.name, CUDA.name}
    assert [s.name for s in here.available_specs(CUDA)] == ["gpu.1xa100.8u64g"]
    assert [s.name for s in here.available_specs(CPU)] == ["cpu.2u8g"]  # disabled spec hidden


def test_runnable_images_are_what_this_backend_can_start_realised_or_not():
    here = replace(catalog({"a100": 1}, arch="x86_64"), realised=frozenset())
    assert here.offered_images() == []  # nothing built yet
    # deprecated images still start their instances; disabled ones, wrong arch or GPU never
    assert {i.name for i in here.runnable_images()} == {CPU.name, BASE.name, CUDA.name, OLD.name}


def test_a_cpu_only_machine_offers_no_gpu_images():
    assert {i.flavor for i in catalog({}, arch="x86_64").offered_images()} == {"cpu"}


def test_plan_carries_limits_and_identity():
    result = plan({"image": CPU.name, "spec": "cpu.2u8g", "tags": {"team": "vision"}})
    assert result.environment["MEM_LIMIT"] == str(8 * 1024**3)
    assert result.environment["CPU_LIMIT"] == "2"
    assert result.environment["ATELIER_IMAGE"] == CPU.name
    assert result.accelerator_count == 0
    assert result.options.tags == {"team": "vision"}


def test_gpu_plan_asks_for_devices():
    result = plan({"image": CUDA.name, "spec": "gpu.2xa100.16u128g"})
    assert (result.accelerator_type, result.accelerator_count) == ("a100", 2)


@pytest.mark.parametrize(
    "options, field, message",
    [
        ({"spec": "cpu.2u8g"}, "image", "is required"),
        ({"image": CPU.name}, "spec", "is required"),
        ({"image": "nope", "spec": "cpu.2u8g"}, "image", "no image named 'nope'"),
        ({"image": CPU.name, "spec": "cpu.1u1g"}, "spec", "no spec named"),
        ({"image": CPU.name, "spec": "cpu.64u512g"}, "spec", "no spec named"),
        ({"image": CPU.name, "spec": "gpu.1xa100.8u64g"}, "spec", "cannot run on gpu spec"),
        ({"image": CUDA.name, "spec": "gpu.1xh100.16u128g"}, "spec", "this deployment has 0"),
        ({"image": OFF.name, "spec": "cpu.2u8g"}, "image", "is disabled"),
        ({"image": CPU.name, "spec": "cpu.2u8g", "gpu": 1}, "gpu", "unknown field"),
        ({"image": CPU.name, "spec": "cpu.2u8g", "tags": ["a"]}, "tags", "must be an object"),
        ({"image": CPU.name, "spec": "cpu.2u8g", "tags": {"k": 1}}, "tags.k", "must be a string"),
        ({"image": CPU.name, "spec": "cpu.2u8g", "tags": {"k" * 37: "v"}}, "tags", "1 to 36"),
        ({"image": CPU.name, "spec": "cpu.2u8g", "tags": {"": "v"}}, "tags", "1 to 36"),
        ({"image": CPU.name, "spec": "cpu.2u8g", "tags": {"k": "v" * 44}}, "tags.k", "at most 43"),
        ({"image": CPU.name, "spec": "cpu.2u8g", "tags": {"k": "a\nb"}}, "tags.k", "printable"),
        (
            {"image": CPU.name, "spec": "cpu.2u8g", "autostop_hours": -1},
            "autostop_hours",
            "more than 0",
        ),
        (
            {"image": CPU.name, "spec": "cpu.2u8g", "autostop_hours": 500},
            "autostop_hours",
            "at most 168",
        ),
        (
            {"image": CPU.name, "spec": "cpu.2u8g", "autostop_hours": "2"},
            "autostop_hours",
            "number",
        ),
    ],
)
def test_every_bad_option_names_its_field(options, field, message):
    with pytest.raises(OptionsError) as error:
        plan(options)
    assert error.value.field == field
    assert message in error.value.message


def test_tag_count_limit():
    tags = {f"k{i}": "v" for i in range(21)}
    with pytest.raises(OptionsError, match="at most 20 tags per instance, got 21"):
        plan({"image": CPU.name, "spec": "cpu.2u8g", "tags": tags})
    assert (
        len(
            plan(
                {"image": CPU.name, "spec": "cpu.2u8g", "tags": dict(list(tags.items())[:20])}
            ).options.tags
        )
        == 20
    )


def test_deprecated_images_still_run_existing_instances_but_no_new_one():
    options = {"image": OLD.name, "spec": "cpu.2u8g"}
    assert plan(options, current_image=OLD.name).image.successor == BASE.name
    message = f"image: image {OLD.name} is deprecated; use {BASE.name}"
    for current in (None, BASE.name):  # a new instance, or one moving onto it
        with pytest.raises(OptionsError, match=message):
            plan(options, current_image=current)


def test_instance_count_names_the_field_and_the_limit():
    core.check_instance_count(9, LIMITS)
    message = r"name: at most 10 instances per user \(limits.instances_per_user\)"
    with pytest.raises(OptionsError, match=message):
        core.check_instance_count(10, LIMITS)


@pytest.mark.parametrize("name", ["", "a" * 65, "My-Lab", "lab_1", "lab 1", "lab/1", "läb"])
def test_bad_instance_names(name):
    with pytest.raises(OptionsError) as error:
        core.validate_instance_name(name, LIMITS)
    assert error.value.field == "name"


@pytest.mark.parametrize("name", ["a", "a" * 64, "exp-1", "0-9"])
def test_good_instance_names(name):
    assert core.validate_instance_name(name, LIMITS) == name


OLD_OPTIONS = InstanceOptions(CPU.name, "cpu.2u8g")


def test_image_and_spec_change_while_stopped():
    new = InstanceOptions(BASE.name, "cpu.8u32g")
    assert core.check_change(OLD_OPTIONS, new, "stopped") is False


@pytest.mark.parametrize("status", ["running", "failed", "creating"])
def test_image_changes_only_while_stopped(status):
    with pytest.raises(OptionsError, match=f"only while the instance is stopped, it is {status}"):
        core.check_change(OLD_OPTIONS, InstanceOptions(BASE.name, "cpu.2u8g"), status)


def test_spec_changes_while_failed_without_restart_but_not_while_stopping():
    assert core.check_change(OLD_OPTIONS, InstanceOptions(CPU.name, "cpu.8u32g"), "failed") is False
    with pytest.raises(OptionsError, match="spec: can change while the instance is stopped, runn"):
        core.check_change(OLD_OPTIONS, InstanceOptions(CPU.name, "cpu.8u32g"), "stopping")


@pytest.mark.parametrize(
    ("pending", "ready", "failure", "status"),
    [
        ("spawn", False, "old", "creating"),
        ("stop", False, None, "stopping"),
        (None, True, None, "running"),
        (None, False, "volume missing", "failed"),
        (None, False, None, "stopped"),
    ],
)
def test_instance_status(pending, ready, failure, status):
    assert core.instance_status(pending, ready, failure) == status


def test_spec_change_while_running_restarts():
    assert core.check_change(OLD_OPTIONS, InstanceOptions(CPU.name, "cpu.8u32g"), "running") is True
    assert (
        core.check_change(
            OLD_OPTIONS, OLD_OPTIONS.__class__(CPU.name, "cpu.2u8g", {"a": "b"}), "running"
        )
        is False
    )


def test_autostop_time():
    started = datetime(2026, 1, 1, 8, tzinfo=UTC)
    assert core.autostop_at(started, 2.5) == datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    assert core.autostop_at(started, None) is None
    assert core.autostop_at(None, 2) is None


def test_the_one_check_refuses_what_every_door_must_refuse(tmp_path):
    """checks.check_instance (run by the API, the form and the spawner): visibility, the
    volume quota and free devices, with the store and the allocator the hub uses."""
    from types import SimpleNamespace

    from atelier.hub.store.store import Store
    from atelier.spawner import checks
    from atelier.spawner.devices import Allocator, Device, DevicesUnavailable

    theirs = Image("mine_1.0-cpu-py_3.11-debian_12-x86_64", visibility="private", owner="bob")
    cat = replace(
        catalog({"a100": 1}), images={BASE.name: BASE, theirs.name: theirs, CUDA.name: CUDA}
    )
    store = Store(f"sqlite:///{tmp_path / 'atelier.sqlite'}")
    allocator = Allocator([Device("gpu", "a100", 0)])
    alice = SimpleNamespace(name="alice", admin=False, groups=[], orm_spawners={})

    def check(name, options, user=alice):
        return checks.check_instance(
            user, name, options, catalog=cat, store=store, allocator=allocator, limits=LIMITS
        )

    with pytest.raises(OptionsError, match=f"image: no image named '{theirs.name}'"):
        check("a", {"image": theirs.name, "spec": "cpu.2u8g"})
    root = SimpleNamespace(
        name="root", admin=True, groups=[], orm_spawners={}
    )  # admins run their own too
    with pytest.raises(OptionsError, match=f"image: no image named '{theirs.name}'"):
        check("a", {"image": theirs.name, "spec": "cpu.2u8g"}, root)
    bob = SimpleNamespace(name="bob", admin=False, groups=[], orm_spawners={})
    assert check("a", {"image": theirs.name, "spec": "cpu.2u8g"}, bob).image == theirs
    assert store.reserve_volume("alice", "big", 150, LIMITS)
    with pytest.raises(OptionsError, match="volume_gb: your volumes would hold 210 GB; the quo"):
        check("b", {"image": BASE.name, "spec": "cpu.2u8g", "volume_gb": 60})
    assert check("big", {"image": BASE.name, "spec": "cpu.2u8g"}).volume_gb == 5  # has one
    allocator.acquire("bob:gpu", "gpu.1xa100.8u64g", "a100", 1)
    with pytest.raises(DevicesUnavailable):
        check("c", {"image": CUDA.name, "spec": "gpu.1xa100.8u64g"})
