"""Save as image, the pure part and the store: what a snapshot is, which saves are refused
before any work, and how operations end (also when the service was cut off)."""

import pytest

from atelier.hub.store.lookup import CatalogError
from atelier.hub.store.operations import CUT_OFF
from atelier.hub.store.store import Store
from atelier.spawner import core
from atelier.spawner.core import Catalog, Image, Limits, OptionsError, Spec
from atelier.spawner.core.snapshots import GB, saved
from atelier.spawner.local import snapshots as local_snapshots

CUDA = Image("pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64", accelerator_types=("a100",))
SPECS = {s.name: s for s in (Spec("cpu.2u8g"), Spec("gpu.1xa100.8u64g"), Spec("gpu.1xh100.8u64g"))}


def plan(fields=None, status="running", source=CUDA, taken=()):
    fields = {"name": "my-env"} if fields is None else fields
    return core.plan_snapshot("alice", "lab", status, source, fields, set(taken))


def test_a_snapshot_is_alices_private_image_with_its_bases_flavor_engine_and_arch():
    image = plan().image
    assert (image.name, image.owner, image.visibility) == ("alice/my-env", "alice", "private")
    assert (image.base, image.flavor, image.engine, image.arch) == (
        CUDA.name,
        "gpu",
        "pytorch 2.4.0",
        "x86_64",
    )
    assert image.accelerator_types == ("a100",)
    assert "alice/lab" in image.display_name
    catalog = Catalog({image.name: image}, SPECS, {"a100": 1, "h100": 1})
    assert [s.name for s in catalog.available_specs(image)] == ["gpu.1xa100.8u64g"]


def test_a_snapshot_of_a_snapshot_keeps_the_catalog_image_at_its_root():
    first = plan().image
    again = core.plan_snapshot("alice", "copy", "running", first, {"name": "v2"}, {first.name})
    assert again.image.base == CUDA.name
    assert again.base == CUDA.name


def test_a_snapshot_is_offered_when_its_base_is_realised():
    image = plan().image
    catalog = Catalog({image.name: image}, SPECS, {"a100": 1}, realised=frozenset({CUDA.name}))
    assert catalog.is_realised(image)
    assert not Catalog({}, SPECS, realised=frozenset()).is_realised(image)


def test_only_its_owner_sees_it_until_they_share_or_an_admin_publishes_it():
    image = plan().image
    assert image.visible_to("alice", frozenset())
    assert not image.visible_to("bob", frozenset({"team"}))
    shared = Image(image.name, visibility="shared", workspace="team", owner="alice", base=CUDA.name)
    assert shared.visible_to("bob", frozenset({"team"}))
    assert shared.visible_to("alice", frozenset())  # hers, even outside the workspace
    assert not shared.visible_to("carol", frozenset({"other"}))


@pytest.mark.parametrize(
    ("fields", "status", "taken", "field", "code"),
    [
        ({}, "running", (), "name", "invalid"),
        ({"name": "My Env"}, "running", (), "name", "invalid"),
        ({"name": "x" * 64}, "running", (), "name", "invalid"),
        ({"name": "../etc"}, "running", (), "name", "invalid"),
        ({"name": 7}, "running", (), "name", "invalid"),
        ({"name": "ok", "description": 1}, "running", (), "description", "invalid"),
        ({"name": "ok"}, "stopped", (), "instance", "conflict"),
        ({"name": "ok"}, "creating", (), "instance", "conflict"),
        ({"name": "ok"}, "running", ("alice/ok",), "name", "exists"),
    ],
)
def test_bad_saves_are_refused_naming_the_field(fields, status, taken, field, code):
    with pytest.raises(OptionsError) as refused:
        plan(fields, status, taken=taken)
    assert (refused.value.field, refused.value.code) == (field, code)


def test_the_limits_name_the_limit_and_the_measured_figure():
    limits = Limits(snapshot_size_gb=35, snapshot_layers=125)
    core.check_snapshot_size(35 * GB, 125, limits)
    with pytest.raises(OptionsError) as too_big:
        core.check_snapshot_size(int(35.5 * GB), 2, limits)
    assert "would be 35.50 GB, over the limit of 35 GB (limits.snapshot_size_gb)" in str(
        too_big.value
    )
    with pytest.raises(OptionsError) as too_deep:
        core.check_snapshot_size(GB, 126, limits)
    assert "126 layers, over the limit of 125 (limits.snapshot_layers)" in str(too_deep.value)
    assert too_deep.value.code == too_big.value.code == "too_large"


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    store.seed([CUDA], list(SPECS.values()))
    return store


def test_a_save_enters_the_catalog_only_as_its_operation_succeeds(store):
    snapshot = plan()
    operation = store.begin_operation("saveImage", "alice", "alice/lab", snapshot.image.name)
    assert (operation["status"], operation["phase"], operation["percent"]) == (
        "running",
        "measuring",
        0,
    )
    with pytest.raises(CatalogError) as twice:
        store.begin_operation("saveImage", "alice", "alice/lab", "alice/other")
    assert twice.value.code == "conflict"
    store.progress_operation(operation["id"], "saving", 50, 200)
    assert store.operation(operation["id"])["percent"] == 25
    assert store.running_operations()["alice/lab"]["id"] == operation["id"]
    assert snapshot.image.name not in {i.name for i in store.images()}

    store.finish_snapshot(operation["id"], saved(snapshot, "sha256:" + "a" * 64))
    done = store.operation(operation["id"])
    assert (done["status"], done["phase"], done["percent"]) == ("succeeded", "done", 100)
    image = {i.name: i for i in store.images()}[snapshot.image.name]
    assert (image.digest, image.base, image.owner) == ("sha256:" + "a" * 64, CUDA.name, "alice")
    assert store.running_operations() == {}


def test_operations_a_stopped_service_left_running_read_failed_and_stay_so(store):
    cut = store.begin_operation("saveImage", "alice", "alice/lab", "alice/a")
    failed = store.begin_operation("saveImage", "bob", "bob/lab", "bob/b")
    store.fail_operation(failed["id"], "the save failed: tar failed")
    assert [o["id"] for o in store.cut_off_operations()] == [cut["id"]]
    assert store.operation(cut["id"])["reason"] == CUT_OFF
    store.progress_operation(cut["id"], "saving", 10, 10)  # a late report changes nothing
    assert store.operation(cut["id"])["status"] == "failed"
    assert store.cut_off_operations() == []
    assert [o["owner"] for o in store.operations("bob")] == ["bob"]
    assert {o["owner"] for o in store.operations()} == {"alice", "bob"}


def test_a_snapshot_keeps_its_owner_when_shared_or_published(store):
    snapshot = plan()
    operation = store.begin_operation("saveImage", "alice", "alice/lab", snapshot.image.name)
    store.finish_snapshot(operation["id"], saved(snapshot, "sha256:" + "b" * 64))
    store.add_workspace("team", 10)
    shared = store.update_image(snapshot.image.name, visibility="shared", workspace="team")
    assert (shared.workspace, shared.owner) == ("team", "alice")
    published = store.update_image(snapshot.image.name, visibility="public", workspace=None)
    assert (published.visibility, published.owner, published.base) == ("public", "alice", CUDA.name)
    with pytest.raises(CatalogError):
        store.update_image(snapshot.image.name, owner=None)


def home_with_things(home):
    (home / "work").mkdir(parents=True)
    (home / "work" / "data.txt").write_text("the volume's")
    (home / ".local/lib/python3.11/site-packages/tiny").mkdir(parents=True)
    (home / ".local/lib/python3.11/site-packages/tiny/__init__.py").write_text("VALUE = 1\n")
    (home / ".cache/pip").mkdir(parents=True)
    (home / ".cache/pip/big").write_bytes(b"x" * 4096)
    (home / ".local/share/jupyter/runtime").mkdir(parents=True)
    (home / ".local/share/jupyter/runtime/kernel-1.json").write_text('{"key": "secret"}')
    (home / ".bashrc").write_text("export KEPT=1\n")
    return home


def test_a_layer_holds_the_home_but_not_the_volume_caches_or_the_servers_secrets(tmp_path):
    home = home_with_things(tmp_path / "home")
    layers, reports = tmp_path / "snapshots", []
    digest = local_snapshots.save(home, None, layers, lambda *report: reports.append(report))
    assert local_snapshots.hash_file(local_snapshots.layer_path(layers, digest)) == digest
    assert [path.name for path in layers.iterdir()] == [f"{digest.replace(':', '-')}.tar"]
    assert reports[-1][0] == "verifying" and reports[0][0] == "saving"
    assert local_snapshots.tree_bytes(home, None) == reports[-1][2]

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    image = Image("alice/my-env", owner="alice", base=CUDA.name, digest=digest)
    local_snapshots.restore(image, layers, fresh, None)
    kept = sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file())
    assert kept == [".bashrc", ".local/lib/python3.11/site-packages/tiny/__init__.py"]


def test_a_changed_or_missing_layer_is_refused_before_the_home_is_touched(tmp_path):
    home = home_with_things(tmp_path / "home")
    layers = tmp_path / "snapshots"
    digest = local_snapshots.save(home, None, layers, lambda *report: None)
    layer = local_snapshots.layer_path(layers, digest)
    layer.write_bytes(layer.read_bytes() + b"\0" * 512)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    image = Image("alice/my-env", owner="alice", base=CUDA.name, digest=digest)
    with pytest.raises(OptionsError, match="does not match its recorded digest"):
        local_snapshots.restore(image, layers, fresh, None)
    layer.unlink()
    with pytest.raises(OptionsError, match="missing"):
        local_snapshots.restore(image, layers, fresh, None)
    assert list(fresh.iterdir()) == []


def test_a_failed_save_keeps_nothing_and_the_sweep_removes_what_a_crash_left(tmp_path):
    layers = tmp_path / "snapshots"
    with pytest.raises((OSError, RuntimeError)):
        local_snapshots.save(tmp_path / "no-such-home", None, layers, lambda *report: None)
    assert not layers.exists() or list(layers.iterdir()) == []
    kept = local_snapshots.save(home_with_things(tmp_path / "home"), None, layers, lambda *r: None)
    (layers / "partial-0123.tar").write_bytes(b"half")
    (layers / "sha256-ffff.tar").write_bytes(b"never recorded")
    local_snapshots.sweep(layers, {kept})
    assert [path.name for path in layers.iterdir()] == [f"{kept.replace(':', '-')}.tar"]
