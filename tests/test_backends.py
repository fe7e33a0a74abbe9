"""The backend registry: a backend is found through its `atelier.backends` entry point (the
test backend in tests/backends, installed by being on the path), and atelier.yaml's
`backend:` and `backend_options:` are checked against what is installed."""

from pathlib import Path

import pytest
import yaml

from atelier.hub.settings import ConfigError, load_settings
from atelier.spawner.backend import Backend, backend_class, installed_backends, load_backend

BACKENDS_DIR = Path(__file__).resolve().parent / "backends"


@pytest.fixture
def test_backend_installed(monkeypatch):
    monkeypatch.syspath_prepend(str(BACKENDS_DIR))


def settings_file(tmp_path, **keys) -> Path:
    path = tmp_path / "atelier.yaml"
    path.write_text(yaml.safe_dump(keys))
    return path


def test_the_test_backend_is_found_through_its_entry_point(test_backend_installed):
    points = installed_backends()
    assert {"local", "test"} <= set(points)
    assert points["test"].value == "atelier_testbackend:ProcessBackend"
    assert points["test"].dist.name == "atelier-testbackend"
    backend = points["test"].load()
    assert issubclass(backend, Backend) and backend.name == "test"


def test_it_is_not_installed_without_its_directory_on_the_path():
    assert "test" not in installed_backends()


def test_backend_test_in_settings_loads_it_with_its_options(tmp_path, test_backend_installed):
    path = settings_file(tmp_path, backend="test", backend_options={"account": "atelier-x"})
    backend = load_backend(load_settings(path), None)
    assert type(backend).__name__ == "ProcessBackend" and backend.options.account == "atelier-x"


def test_an_unknown_backend_is_refused_naming_backend(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_settings(settings_file(tmp_path, backend="nonexistent"))
    assert "backend: Value error, no backend named 'nonexistent'; installed: docker, local" in str(
        refused.value
    )


def test_the_backends_own_options_are_checked_by_its_model(tmp_path, test_backend_installed):
    with pytest.raises(ConfigError) as refused:
        load_settings(settings_file(tmp_path, backend="test", backend_options={"acount": "x"}))
    assert "backend_options.acount" in str(refused.value)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("nosuchmodule:Backend", "could not be loaded: No module named 'nosuchmodule'"),
        ("os:path", "is <module"),  # loads, but is no Backend
    ],
)
def test_a_broken_backend_entry_point_is_refused_naming_backend(tmp_path, monkeypatch, target, why):
    """A distribution whose entry point leads nowhere, or to something else, is named in
    atelier.yaml's error; it never crashes the hub with an ImportError."""
    info = tmp_path / "site" / "atelier_broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: atelier-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[atelier.backends]\nbroken = {target}\n")
    monkeypatch.syspath_prepend(str(info.parent))
    backend_class.cache_clear()
    try:
        with pytest.raises(ConfigError) as refused:
            load_settings(settings_file(tmp_path, backend="broken"))
    finally:
        backend_class.cache_clear()
    assert f"backend: Value error, backend 'broken' {why}" in str(refused.value)


def test_a_configuration_error_never_shows_a_secret(tmp_path, test_backend_installed):
    """The error reaches terminals and every service's log: the database URL's password,
    an OAuth client secret and a backend's options block are named, never shown."""
    path = settings_file(
        tmp_path,
        database_url="mysql://atelier:S3cretDBpass@db/atelier",
        auth={"kind": "github", "client_secret": "TOPSECRET-client"},
        backend="test",
        backend_options={"account": "atelier-x", "registry_password": "hunter2"},
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    text = str(refused.value)
    assert "database_url:" in text and "backend_options" in text
    for secret in ("S3cretDBpass", "TOPSECRET-client", "hunter2"):
        assert secret not in text
