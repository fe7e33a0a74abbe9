"""Save as image on the local backend, end to end: what a user installs in a running instance
is there in a new instance made from the snapshot, and nothing else of theirs; the snapshot
is theirs alone, its content is checked at every start, its limits are checked before any
work, and a hub killed mid-save leaves no half image and no data behind."""

import time
from pathlib import Path

import pytest
import yaml
from conftest import BASE, Hub
from kernels import run_in
from saving import follow, install_and_save, save

from atelier.spawner.local.snapshots import hash_file, layer_path, snapshots_dir

pytestmark = pytest.mark.e2e
ON_BASE = {"image": BASE, "spec": "cpu.2u8g"}

LOOK = """
import os, pathlib
home = pathlib.Path.home()
plugin_owner = (home / ".vscode-server/extensions/atelier.test/package.json").stat().st_uid
import tinyplain, tinyuser
print(tinyplain.VALUE, tinyuser.VALUE)
print((home / ".vscode-server/extensions/atelier.test/package.json").read_text())
print("SAVED_SETTING=kept" in (home / ".bashrc").read_text())
print((home / "work" / "data.txt").exists())
shadow = home / "shadow"
print(os.readlink(shadow), os.access(shadow, os.R_OK), plugin_owner == os.getuid())
"""


@pytest.fixture(scope="module")
def hub(envs_dir):
    hub = Hub(envs_dir)
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def alice(hub):
    return hub.add_user("alice")


@pytest.fixture(scope="module")
def bob(hub):
    return hub.add_user("bob")


def layers(hub) -> set[str]:
    directory = snapshots_dir(hub.dir / "data")
    return {path.name for path in directory.iterdir()} if directory.exists() else set()


@pytest.fixture(scope="module")
def saved(hub, alice, tmp_path_factory):
    return install_and_save(hub, alice, ON_BASE, tmp_path_factory.mktemp("wheels"))


def test_a_new_instance_from_the_snapshot_has_what_the_user_installed_not_their_volume(
    hub, alice, saved
):
    assert (saved["status"], saved["phase"], saved["percent"]) == ("succeeded", "done", 100)
    image = hub.atelier("GET", "/images/alice/my-env", alice).json()
    assert (image["base"], image["visibility"], image["owner"]) == (BASE, "private", "alice")
    assert image["flavor"] == "cpu"
    layer = layer_path(snapshots_dir(hub.dir / "data"), image["digest"])
    assert hash_file(layer) == image["digest"]

    hub.start("alice", "copy", alice, {**ON_BASE, "image": "alice/my-env"})
    printed = run_in(hub, "alice", "copy", alice, LOOK).splitlines()
    assert printed == [
        "from pip install from pip install --user",
        '{"name": "test"}',
        "True",
        "False",  # the work volume stays the first instance's
        "/etc/shadow False True",  # unpacked as alice: a link she cannot follow
    ]
    secret = Path("/etc/shadow").read_bytes().splitlines()[0]
    assert secret not in layer.read_bytes()  # tar ran as alice: /etc/shadow was never read
    events = hub.atelier("GET", "/audit?action=saveImage", alice).json()["events"]
    assert [(e["resource"], e["result"]) for e in events] == [("alice/my-env", "success")]


def test_another_user_can_neither_see_nor_use_nor_save_it(hub, alice, bob, saved):
    assert hub.atelier("GET", "/images/alice/my-env", bob).status_code == 404
    assert "alice/my-env" not in [
        i["name"] for i in hub.atelier("GET", "/images", bob).json()["images"]
    ]
    assert hub.atelier("GET", f"/operations/{saved['id']}", bob).status_code == 404
    assert hub.atelier("GET", "/operations", bob).json()["operations"] == []
    assert save(hub, bob, "src", "mine").status_code == 404
    refused = hub.atelier(
        "POST", "/instances", bob, json={"name": "steal", **ON_BASE, "image": "alice/my-env"}
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "image"
    for method in ("PATCH", "DELETE"):
        assert hub.atelier(method, "/images/alice/my-env", bob, json={}).status_code == 404


def test_its_owner_shares_it_with_a_workspace_of_theirs_and_only_an_admin_publishes_it(
    hub, alice, bob, saved
):
    team = {"name": "team", "members": ["alice", "bob"]}
    assert hub.atelier("POST", "/workspaces", json=team).status_code == 201
    assert hub.atelier("POST", "/workspaces", json={"name": "others"}).status_code == 201
    share = {"visibility": "shared", "workspace": "others"}
    assert hub.atelier("PATCH", "/images/alice/my-env", alice, json=share).status_code == 404
    share["workspace"] = "team"
    assert hub.atelier("PATCH", "/images/alice/my-env", alice, json=share).status_code == 200
    assert hub.atelier("GET", "/images/alice/my-env", bob).json()["owner"] == "alice"
    public = {"visibility": "public", "workspace": None}
    assert hub.atelier("PATCH", "/images/alice/my-env", alice, json=public).status_code == 403
    assert hub.atelier("PATCH", "/images/alice/my-env", json=public).status_code == 200
    private = {"visibility": "private"}
    assert hub.atelier("PATCH", "/images/alice/my-env", alice, json=private).status_code == 200
    assert hub.atelier("GET", "/images/alice/my-env", bob).status_code == 404


def test_a_changed_or_missing_layer_is_refused_at_start_and_nothing_starts(hub, alice, saved):
    digest = hub.atelier("GET", "/images/alice/my-env", alice).json()["digest"]
    layer = layer_path(snapshots_dir(hub.dir / "data"), digest)
    original = layer.read_bytes()
    try:
        layer.write_bytes(original + b"\0" * 512)  # one more tar block: still a valid archive
        started = hub.atelier(
            "POST", "/instances", alice, json={"name": "bad", **ON_BASE, "image": "alice/my-env"}
        )
        assert started.status_code == 400, started.text
        assert "does not match its recorded digest" in started.json()["error"]["message"]
        layer.unlink()
        retried = hub.atelier("POST", "/instances/alice/bad/start", alice)
        assert retried.status_code == 400, retried.text
        assert "missing" in retried.json()["error"]["message"]
        assert hub.atelier("GET", "/instances/alice/bad", alice).json()["status"] == "failed"
    finally:
        layer.write_bytes(original)
    assert hash_file(layer) == digest


def test_an_admin_deleting_a_snapshot_with_the_cli_removes_its_content_too(hub, alice, saved):
    run_in(hub, "alice", "src", alice, "open('again.txt', 'w').write('a change')")
    again = follow(hub, alice, save(hub, alice, "src", "again").json())
    other = hub.atelier("GET", "/images/alice/again", alice).json()["digest"]
    assert (
        again["status"] == "succeeded"
        and layer_path(snapshots_dir(hub.dir / "data"), other).exists()
    )
    hub.cli("images", "delete", "alice/again")
    assert not layer_path(snapshots_dir(hub.dir / "data"), other).exists()


def test_a_hub_killed_mid_save_leaves_nothing_and_limits_are_checked_before_any_work(
    hub, alice, saved
):
    before = layers(hub)
    big = "import os; f = open(os.path.expanduser('~/big'), 'wb'); f.truncate(3 << 30)"
    run_in(hub, "alice", "src", alice, big)  # 3 GB of zeros, read in full by the save
    started = save(hub, alice, "src", "cut-off").json()

    def saving():
        now = hub.atelier("GET", f"/operations/{started['id']}", alice).json()
        return now["done_bytes"] > 0 or now["status"] != "running"

    hub.wait_for(saving, 30, "the save to start copying")
    stop = hub.atelier("POST", "/instances/alice/src/stop", alice)
    assert stop.status_code == 409, stop.text  # not while its home is being saved
    assert "is being saved" in stop.json()["error"]["message"]
    hub.restart(kill=True)
    operation = hub.atelier("GET", f"/operations/{started['id']}", alice).json()
    assert operation["status"] == "failed"
    assert operation["reason"].startswith("cut off")
    assert hub.atelier("GET", "/images/alice/cut-off", alice).status_code == 404
    assert layers(hub) == before  # no partial layer left
    events = hub.atelier("GET", "/audit?resource=alice/cut-off", alice).json()["events"]
    assert [e["result"] for e in events] == ["failure"]

    hub.halt()
    config = yaml.safe_load(hub.config.read_text())
    config["limits"].update(snapshot_size_gb=2.5, snapshot_layers=1)
    hub.config.write_text(yaml.safe_dump(config))
    hub.launch()
    hub.wait_for(hub.sign_in, 60, "the hub to start again")
    started = time.monotonic()
    refused = save(hub, alice, "src", "too-big")
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "too_large"
    assert "over the limit of 2.5 GB (limits.snapshot_size_gb)" in error["message"]
    assert time.monotonic() - started < 10  # measured, not copied
    run_in(hub, "alice", "src", alice, "import os; os.remove(os.path.expanduser('~/big'))")
    refused = save(hub, alice, "src", "too-many").json()["error"]
    assert "2 layers, over the limit of 1 (limits.snapshot_layers)" in refused["message"]
    assert layers(hub) == before


def test_its_owner_deletes_it_and_its_layer_goes_with_it(hub, alice, saved):
    digest = hub.atelier("GET", "/images/alice/my-env", alice).json()["digest"]
    assert hub.atelier("DELETE", "/images/alice/my-env", alice).status_code == 204
    assert not layer_path(snapshots_dir(hub.dir / "data"), digest).exists()
    assert hub.atelier("GET", "/instances/alice/copy", alice).json()["status"] == "running"
    assert hub.atelier("POST", "/instances/alice/copy/stop", alice).ok
    restart = hub.atelier("POST", "/instances/alice/copy/start", alice)
    assert restart.status_code == 400  # until its owner gives it another image
    assert restart.json()["error"]["field"] == "image"
    events = hub.atelier("GET", "/audit?action=deleteImage", alice).json()["events"]
    assert [(e["resource"], e["result"]) for e in events] == [("alice/my-env", "success")]
