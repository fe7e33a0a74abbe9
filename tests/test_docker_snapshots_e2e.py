"""Save as image on the Docker backend, end to end: the tests' own engine, the real
docker-registry the hub runs, real JupyterLab containers. What a user installs (pip, pip
--user, an IDE plugin, a shell setting) is in a new instance made from the snapshot, pulled
from the registry by digest, and their work volume is not; none of the instance's
credentials are in the image; the snapshot is theirs alone; a changed or missing copy in
the registry is refused at start; limits are checked before any commit; and a hub killed
mid-save leaves neither a catalog image nor an engine image nor a manifest behind. One hub
and two instance starts for the whole module."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from conftest import BASE
from dockerhub import container_of, docker_hub
from kernels import run_in
from saving import follow, install_and_save, save

from atelier.spawner.docker import snapshots
from atelier.spawner.docker.registry import Files, Registry

pytestmark = pytest.mark.e2e
ON_BASE = {"image": BASE, "spec": "cpu.2u4g"}

LOOK = """
import pathlib, subprocess
import tinyplain, tinyuser
home = pathlib.Path.home()
print(tinyplain.VALUE, "|", tinyplain.__file__)
print(tinyuser.VALUE, "|", tinyuser.__file__)
print((home / ".vscode-server/extensions/atelier.test/package.json").read_text())
shell = subprocess.run(["bash", "-ic", "echo $SAVED_SETTING"], capture_output=True, text=True)
print(shell.stdout.strip())
print((home / "work" / "data.txt").exists())
"""


@pytest.fixture(scope="module")
def hub(envs_dir, docker_engine, docker_images):
    hub = docker_hub(envs_dir, docker_engine)
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def registry(hub) -> Registry:
    """The hub's own registry, reached as the hub reaches it."""
    port = yaml.safe_load(hub.config.read_text())["backend_options"]["registry_port"]
    return Registry(f"127.0.0.1:{port}", "", Files(hub.dir / "data" / "registry").password)


@pytest.fixture(scope="module")
def alice(hub):
    return hub.add_user("alice")


@pytest.fixture(scope="module")
def bob(hub):
    return hub.add_user("bob")


def saved_image(hub, token, name: str) -> dict:
    image = hub.atelier("GET", f"/images/alice/{name}", token)
    assert image.status_code == 200, image.text
    return image.json()


def snapshot_images(engine) -> set[str]:
    return {image.id for image in engine.images.list(filters={"label": "atelier.snapshot"})}


def reference(registry: Registry, image: dict) -> str:
    return f"{registry.host}/{snapshots.repository('', image['name'])}@{image['digest']}"


@pytest.fixture(scope="module")
def saved(hub, alice, tmp_path_factory):
    return install_and_save(hub, alice, ON_BASE, tmp_path_factory.mktemp("wheels"))


def test_a_new_instance_from_the_snapshot_has_what_the_user_installed_not_their_volume(
    hub, engine, registry, alice, saved
):
    assert (saved["status"], saved["phase"], saved["percent"]) == ("succeeded", "done", 100), saved
    image = saved_image(hub, alice, "my-env")
    assert (image["base"], image["visibility"], image["owner"]) == (BASE, "private", "alice")
    assert image["digest"].startswith("sha256:")
    repository = snapshots.repository("", "alice/my-env")
    assert repository == "atelier-snapshots/alice/my-2denv"
    assert registry.digest(repository, registry.tags(repository)[0]) == image["digest"]
    assert len(registry.tags(repository)) == 1  # the commit's own manifest is gone

    pushed = engine.api.inspect_image(reference(registry, image))
    assert pushed["Config"]["Labels"]["atelier.snapshot"] == "alice/my-env"
    environment = " ".join(pushed["Config"]["Env"])
    assert "JUPYTERHUB" not in environment and "ATELIER_SSH" not in environment
    assert pushed["Config"]["Cmd"] == ["jupyterhub-singleuser"]
    secrets = r"\( -name jupyter_cookie_secret -o -name 'kernel-*.json' -o -name host_key \)"
    found = engine.containers.run(
        reference(registry, image),
        ["sh", "-c", f"find / -xdev {secrets} -print"],
        remove=True,
        network_mode="none",
        user="0",  # sees every file of the image
    )
    assert found == b""  # the server's cookie secret, kernel keys and sshd key were on a tmpfs
    engine.images.remove(reference(registry, image))  # so that the start pulls it by digest

    hub.start("alice", "copy", alice, {**ON_BASE, "image": "alice/my-env"})
    assert container_of(hub, engine, "alice", "copy")["Config"]["Image"] == reference(
        registry, image
    )
    printed = run_in(hub, "alice", "copy", alice, LOOK).splitlines()
    assert printed == [
        "from pip install | /opt/env/lib/python3.11/site-packages/tinyplain/__init__.py",
        "from pip install --user | "
        "/home/jovyan/.local/lib/python3.11/site-packages/tinyuser/__init__.py",
        '{"name": "test"}',
        "kept",
        "False",  # the work volume stays the first instance's
    ]


def test_another_user_can_neither_see_nor_use_it(hub, bob, saved):
    assert hub.atelier("GET", "/images/alice/my-env", bob).status_code == 404
    refused = hub.atelier(
        "POST", "/instances", bob, json={"name": "steal", **ON_BASE, "image": "alice/my-env"}
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["field"] == "image"


def test_a_changed_or_missing_copy_in_the_registry_is_refused_at_start(
    hub, engine, registry, alice, saved
):
    run_in(hub, "alice", "src", alice, "open('/home/jovyan/second', 'w').write('2')")
    assert follow(hub, alice, save(hub, alice, "src", "my-env2").json())["status"] == "succeeded"
    image = saved_image(hub, alice, "my-env2")
    engine.images.remove(reference(registry, image))
    repository = snapshots.repository("", "alice/my-env2")
    _, manifest, _ = registry.manifest(repository, image["digest"])
    top = json.loads(manifest)["layers"][-1]["digest"].removeprefix("sha256:")
    storage = Files(hub.dir / "data" / "registry").storage
    blob = storage / "docker/registry/v2/blobs/sha256" / top[:2] / top / "data"
    original = blob.read_bytes()
    blob.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])

    body = {"name": "bad", **ON_BASE, "image": "alice/my-env2"}
    started = hub.atelier("POST", "/instances", alice, json=body)
    assert started.status_code == 400, started.text
    message = started.json()["error"]["message"]
    assert "alice/my-env2 is not started" in message and "does not match" in message
    assert hub.atelier("GET", "/instances/alice/bad", alice).json()["status"] == "failed"
    assert not engine.images.list(name=reference(registry, image).split("@")[0])

    blob.write_bytes(original)
    registry.delete_manifest(repository, image["digest"])
    retried = hub.atelier("POST", "/instances/alice/bad/start", alice)
    assert retried.status_code == 400, retried.text
    assert "missing" in retried.json()["error"]["message"]
    assert hub.atelier("GET", "/instances/alice/bad", alice).json()["status"] == "failed"
    assert hub.atelier("DELETE", "/images/alice/my-env2", alice).status_code == 204


def test_deleting_it_leaves_running_instances_running(hub, engine, registry, alice, saved):
    image = saved_image(hub, alice, "my-env")
    assert hub.atelier("DELETE", "/images/alice/my-env", alice).status_code == 204
    assert registry.tags(snapshots.repository("", "alice/my-env")) == []
    assert container_of(hub, engine, "alice", "copy")["State"]["Running"]
    assert hub.atelier("GET", "/instances/alice/copy", alice).json()["status"] == "running"
    assert engine.images.get(reference(registry, image))  # kept while it runs from it


def test_a_killed_hub_leaves_nothing_of_a_save_and_limits_are_checked_before_any_commit(
    hub, engine, registry, alice, saved
):
    big = "import os; open(os.path.expanduser('~/big'), 'wb').write(os.urandom(256 << 20))"
    run_in(hub, "alice", "src", alice, big)
    before = snapshot_images(engine)
    started = save(hub, alice, "src", "cut-off")
    assert started.status_code == 202, started.text

    def pushing():
        now = hub.atelier("GET", f"/operations/{started.json()['id']}", alice).json()
        return now["done_bytes"] > 0 or now["status"] != "running"

    hub.wait_for(pushing, 60, "the save to push")
    config = yaml.safe_load(hub.config.read_text())
    config["limits"]["snapshot_size_gb"] = 0.01
    hub.config.write_text(yaml.safe_dump(config))
    hub.restart(kill=True)

    def ended():
        now = hub.atelier("GET", f"/operations/{started.json()['id']}", alice)
        return now.json() if now.status_code == 200 else None

    operation = hub.wait_for(ended, 60, "the service to answer")
    assert operation["status"] == "failed" and operation["reason"].startswith("cut off")
    assert hub.atelier("GET", "/images/alice/cut-off", alice).status_code == 404
    assert snapshot_images(engine) <= before  # what the save made was swept
    assert registry.tags(snapshots.repository("", "alice/cut-off")) == []
    assert container_of(hub, engine, "alice", "src")["State"]["Running"]
    configs = [  # the commits' configurations held the instance's credentials: collected
        path
        for path in Files(hub.dir / "data" / "registry").storage.rglob("data")
        if path.stat().st_size < 1 << 16 and b"JUPYTERHUB_API_TOKEN" in path.read_bytes()
    ]
    assert configs == []

    before, started = snapshot_images(engine), time.monotonic()
    refused = save(hub, alice, "src", "too-big")
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "too_large"
    assert "over the limit of 0.01 GB (limits.snapshot_size_gb)" in error["message"]
    assert time.monotonic() - started < 10  # measured, not copied
    assert snapshot_images(engine) == before
