"""The shared dir's layout and the configuration's secrecy, without a hub."""

import os
import stat
import subprocess

import pytest
import yaml

from atelier.hub.app import config as hubconfig
from atelier.hub.app.config import prepare_data_dir
from atelier.hub.settings import DEFAULT_CONFIG, ConfigError, load_settings
from atelier.spawner.local import accounts


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_shared_dir_is_passable_by_instances_and_writable_by_root_alone(tmp_path):
    shared = tmp_path / "shared"
    accounts.prepare_shared_dir(shared)
    assert mode(shared) == 0o711
    assert {p.name: mode(p) for p in shared.iterdir()} == accounts.SHARED_MODES
    assert all(p.stat().st_uid == shared.stat().st_uid for p in shared.iterdir())
    home = accounts.instance_home(shared, "atelier-ann", "lab")
    mount = accounts.mount_point(shared, "atelier-ann", "lab")
    assert home.parent.parent == shared / "homes" and mount.parent.parent == shared / "mounts"


@pytest.mark.parametrize("file_mode, refused", [(0o644, True), (0o640, True), (0o600, False)])
def test_a_config_holding_a_client_secret_must_be_private(tmp_path, file_mode, refused):
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["auth"] = {"kind": "github", "client_id": "atelier", "client_secret": "s3cret"}
    path = tmp_path / "atelier.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(file_mode)
    if refused:
        with pytest.raises(ConfigError, match=rf"{path}: holds auth.client_secret.*chmod 600"):
            load_settings(path)
    else:
        assert load_settings(path).auth.client_secret == "s3cret"


def test_a_config_without_secrets_may_be_readable(tmp_path):
    path = tmp_path / "atelier.yaml"
    path.write_text(DEFAULT_CONFIG.read_text())
    path.chmod(0o644)
    assert load_settings(path).auth.kind == "native"


def test_a_data_dir_inside_a_private_directory_is_fine_and_private(tmp_path):
    private = tmp_path / "root-home"
    private.mkdir(mode=0o700)
    settings = load_settings(
        DEFAULT_CONFIG, data_dir=str(private / "clone" / ".atelier")
    ).model_copy(update={"shared_dir": tmp_path / "shared"})
    previous = os.umask(0o022)
    try:
        data_dir = prepare_data_dir(settings)
        assert os.umask(0o022) == 0o077  # what the hub writes from now on is its own
    finally:
        os.umask(previous)
    assert mode(data_dir) == 0o700 and mode(tmp_path / "shared") == 0o711


def test_services_import_nothing_from_the_working_directory(tmp_path):
    """The root hub's services run with its working directory, which may be one users write
    to: a module planted there is never imported."""
    (tmp_path / "planted.py").write_text("open('ran', 'w').close()\n")
    service, _ = hubconfig.service("probe", ["planted"], [])  # this process plays the hub
    result = subprocess.run(service["command"], cwd=tmp_path, capture_output=True, text=True)
    assert "No module named planted" in result.stderr
    assert not (tmp_path / "ran").exists()
