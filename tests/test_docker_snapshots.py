"""Save as image on Docker, its pure parts: where a snapshot's repository is, where the
registry is (and the options that say so), the push's progress, the configuration the
snapshot gets instead of the commit's, and the registry the hub runs."""

from __future__ import annotations

import itertools
import re
import sys

import pytest
import yaml

from atelier.hub.app.config import services_and_roles
from atelier.hub.settings import ConfigError, load_settings
from atelier.spawner.docker import registry, snapshots
from atelier.spawner.docker.backend import DockerBackend

# distribution's grammar of a repository's path component (reference/regexp.go)
COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$")
NAMES = ["alice", "Alice", "-", "x-", "x", "x--", "a.b", "a..b", "a-", "_a", "é", "a@b.org", "1"]


def test_a_snapshots_repository_is_its_owner_and_name_escaped():
    assert snapshots.repository("", "alice/my-env") == "atelier-snapshots/alice/my-2denv"
    assert (
        snapshots.repository("team/a", "a@b.org/env.")
        == "team/a/atelier-snapshots/a-40b-2eorg/env-2e"
    )
    assert snapshots.component("-bob") == "x--2dbob"  # starts with a letter or digit


def test_every_component_is_valid_and_no_two_names_share_one():
    components = [snapshots.component(name) for name in NAMES]
    assert all(COMPONENT.match(c) for c in components), components
    assert len(set(components)) == len(NAMES)
    pairs = list(itertools.product(NAMES, NAMES))
    repositories = {snapshots.repository("", f"{owner}/{name}") for owner, name in pairs}
    assert len(repositories) == len(pairs)


@pytest.mark.parametrize(
    "location, parsed",
    [
        ("registry.example.org", ("registry.example.org", "")),
        ("registry.example.org:5000/team-a", ("registry.example.org:5000", "team-a")),
        ("localhost:5000", ("localhost:5000", "")),
        ("10.0.0.2:443/a/b", ("10.0.0.2:443", "a/b")),
        ("[::1]:5000", ("[::1]:5000", "")),
    ],
)
def test_a_registry_is_a_host_and_port_with_a_path(location, parsed):
    assert registry.parse_location(location) == parsed


@pytest.mark.parametrize(
    "location", ["team", "team/images", "https://registry.example.org", "reg.org/Upper", "a..b:1"]
)
def test_what_the_engine_would_take_for_docker_hub_or_no_registry_is_refused(location):
    with pytest.raises(ValueError, match="registry"):
        registry.parse_location(location)


def test_only_loopback_is_reached_without_tls():
    loopback = ["127.0.0.1:5000", "localhost:5000", "[::1]:5000", "127.8.0.1"]
    assert all(registry.is_loopback(host) for host in loopback)
    assert not any(registry.is_loopback(h) for h in ["10.0.0.2:5000", "registry.example.org"])
    assert registry.Registry("registry.example.org").url == "https://registry.example.org/v2/"


def settings(tmp_path, **options):
    path = tmp_path / "atelier.yaml"
    config = {"backend": "docker", "data_dir": str(tmp_path / "data"), "backend_options": options}
    path.write_text(yaml.safe_dump(config))
    return load_settings(path)


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"registry": "team"}, "backend_options.registry: Value error, must be a registry's"),
        ({"registry_port": 0}, "backend_options.registry_port: Input should be greater"),
        ({"registry_port": "x"}, "backend_options.registry_port: Input should be a valid"),
        ({"registry_url": "a.b"}, "backend_options.registry_url: Extra inputs"),
    ],
)
def test_the_registry_options_are_checked_naming_the_key(tmp_path, options, expected):
    with pytest.raises(ConfigError) as refused:
        settings(tmp_path, **options)
    assert expected in str(refused.value)


def test_the_hub_runs_its_own_registry_as_a_service_that_ends_with_it(tmp_path):
    backend = DockerBackend(settings(tmp_path, registry_port=5123), None)
    data = tmp_path / "data"
    assert backend.image_registry == registry.Registry(
        "127.0.0.1:5123", "", data / "registry" / "password"
    )
    extra = backend.services(data)
    assert extra == [
        {
            "name": "registry",
            "command": [
                "atelier.spawner.docker.registry",
                str(data / "registry"),
                "127.0.0.1:5123",
            ],
        }
    ]
    services, roles = services_and_roles(backend.settings, data, {}, extra)
    service = services[0]  # first: the Atelier service's start waits for it
    assert service["name"] == "registry" and services[1]["name"] == "atelier"
    assert service["command"][:4] == [sys.executable, "-P", "-m", "atelier.hub.app.managed"]
    assert service["command"][5:] == extra[0]["command"]
    assert {"name": "registry-service", "services": ["registry"], "scopes": []} in roles


def test_another_registry_is_only_named_the_hub_runs_none(tmp_path):
    backend = DockerBackend(settings(tmp_path, registry="reg.example.org/team-a"), None)
    assert backend.image_registry == registry.Registry("reg.example.org", "team-a")
    assert backend.services(tmp_path / "data") == []
    made = snapshots.Snapshots(None, None, "h1", backend.image_registry)
    assert made.target("alice/env") == ("reg.example.org/team-a/atelier-snapshots/alice/env")


def test_its_configuration_keeps_it_on_loopback_with_deletes_and_a_password(tmp_path):
    files = registry.Files(tmp_path / "registry")
    registry.prepare(files, "127.0.0.1:5123")
    written = yaml.safe_load(files.config.read_text())
    assert written["http"]["addr"] == "127.0.0.1:5123"
    assert written["storage"]["delete"] == {"enabled": True}
    assert written["storage"]["filesystem"]["rootdirectory"] == str(files.storage)
    assert written["auth"]["htpasswd"]["path"] == str(files.htpasswd)
    password = files.password.read_text()
    assert len(password) >= 40 and files.password.stat().st_mode & 0o777 == 0o600
    assert files.directory.stat().st_mode & 0o777 == 0o700
    registry.prepare(files, "127.0.0.1:5123")  # a restart keeps the password clients read
    assert files.password.read_text() == password
    assert files.htpasswd.read_text().startswith("atelier:$2b$04$")


def test_the_push_counts_the_bytes_of_the_layers_it_pushes_and_ends_with_the_digest():
    pushed = snapshots.PushProgress()
    stream = [
        {"status": "The push refers to repository [127.0.0.1:5000/atelier-snapshots/a/b]"},
        {"status": "Preparing", "progressDetail": {}, "id": "aaa"},
        {"status": "Layer already exists", "progressDetail": {}, "id": "bbb"},
        {"status": "Pushing", "progressDetail": {"current": 512, "total": 1000}, "id": "aaa"},
        {"status": "Pushing", "progressDetail": {"current": 1024, "total": 1000}, "id": "aaa"},
    ]
    for chunk in stream:
        pushed.feed(chunk)
    assert pushed.bytes == (1000, 1000) and pushed.digest is None
    pushed.feed({"status": "Pushing", "progressDetail": {"current": 10, "total": 3000}, "id": "c"})
    pushed.feed({"status": "Pushed", "progressDetail": {}, "id": "c"})
    pushed.feed({"progressDetail": {}, "aux": {"Tag": "t", "Digest": "sha256:ab", "Size": 9}})
    assert pushed.bytes == (4000, 4000) and pushed.digest == "sha256:ab"
    with pytest.raises(RuntimeError, match="the engine's push failed: denied"):
        pushed.feed({"errorDetail": {"message": "denied"}, "error": "denied"})


def test_the_snapshots_configuration_is_the_source_images_with_its_labels_not_the_containers():
    secret = ["JUPYTERHUB_API_TOKEN=secret", "PATH=/opt/env/bin"]
    committed = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": secret, "Cmd": ["jupyterhub-singleuser", "--debug"], "User": "1000:1000"},
        "container_config": {"Env": secret},
        "container": "4f1c",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:1", "sha256:2"]},
        "history": [{"created_by": "x"}, {"comment": "saved by Atelier"}],
    }
    source = {"Env": ["PATH=/opt/env/bin"], "Cmd": ["jupyterhub-singleuser"], "User": "1000"}
    source["Labels"] = {"atelier.snapshot": "alice/older", "org.opencontainers.x": "y"}
    labels = {"atelier.hub": "h", "atelier.snapshot": "alice/env"}
    clean = snapshots.clean_config(committed, source, labels)
    assert clean == {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/opt/env/bin"],
            "Cmd": ["jupyterhub-singleuser"],
            "User": "1000",
            "Labels": {
                "atelier.snapshot": "alice/env",
                "org.opencontainers.x": "y",
                "atelier.hub": "h",
            },
        },
        "rootfs": committed["rootfs"],
        "history": committed["history"],
    }
    manifest = {"schemaVersion": 2, "config": {"mediaType": "m", "digest": "sha256:old", "size": 1}}
    assert snapshots.with_config(manifest, "sha256:new", 7)["config"] == {
        "mediaType": "m",
        "digest": "sha256:new",
        "size": 7,
    }
