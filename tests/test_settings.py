"""atelier.yaml: the shipped default is valid, and each kind of mistake names its key."""

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from atelier.hub.settings import DEFAULT_CONFIG, ConfigError, Settings, load_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def write(tmp_path, change):
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    change(data)
    path = tmp_path / "atelier.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_default_configuration_is_valid():
    settings = load_settings(DEFAULT_CONFIG)
    assert settings.port == 8000 and settings.limits.instances_per_user == 10
    images, specs = settings.initial_catalog()
    assert {i.flavor for i in images} == {"cpu", "gpu", "ascend"}
    assert "cpu.2u8g" in {s.name for s in specs}


def test_a_file_names_only_what_differs(tmp_path):
    path = tmp_path / "atelier.yaml"
    path.write_text("port: 9000\n")
    settings = load_settings(path)
    assert settings.port == 9000
    assert settings.initial_catalog() == load_settings(DEFAULT_CONFIG).initial_catalog()
    assert settings.limits.volume_quota_gb == 200 and settings.auth.kind == "native"


def test_the_shipped_file_states_the_defaults():
    """config/atelier.yaml shows each key with its default: nothing in it differs from a file
    that names nothing."""
    assert load_settings(DEFAULT_CONFIG) == Settings()


def setting_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key atelier.yaml takes, nested ones dotted (`limits.volume_quota_gb`)."""
    keys = set()
    for name, field in model.model_fields.items():
        nested = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        keys |= setting_keys(field.annotation, f"{prefix}{name}.") if nested else {prefix + name}
    return keys


def test_the_readme_configuration_table_lists_every_key():
    section = README.read_text().split("### Configuration\n", 1)[1].split("\n#", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    documented = {key for row in rows for key in re.findall(r"`([^`]+)`", row)}
    assert documented == setting_keys(Settings)


def test_atelier_config_environment_variable_picks_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER_CONFIG", str(write(tmp_path, lambda d: d.update(port=9999))))
    assert load_settings().port == 9999


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d.update(colour="blue"), "colour: Extra inputs are not permitted (got 'blue')"),
        (lambda d: d.update(port="eighty"), "port: Input should be a valid integer"),
        (
            lambda d: d.update(port=70000),
            "port: Input should be less than or equal to 65535 (got 70000)",
        ),
        (
            lambda d: d.update(backend="nomad"),
            "backend: Value error, no backend named 'nomad'; installed: docker, local "
            "(got 'nomad')",
        ),
        (
            lambda d: d["limits"].update(instances_per_user=0),
            "limits.instances_per_user: Input should be greater than or equal to 1",
        ),
        (
            lambda d: d["limits"].update(tag_limit=3),
            "limits.tag_limit: Extra inputs are not permitted",
        ),
        (
            lambda d: d["images"][0].update(name="pytorch-latest"),
            "images.0.name: Value error, 'pytorch-latest' does not follow <engine>_<ver>-",
        ),
        (
            lambda d: d["images"][1].update(status="retired"),
            "images.1.status: Input should be 'active', 'deprecated' or 'disabled' (got 'retired')",
        ),
        (
            lambda d: d["specs"].append({"name": "gpu.a100"}),
            "specs.7.name: Value error, 'gpu.a100' does not follow",
        ),
        (
            lambda d: d["specs"].append({"name": "cpu.2u8g"}),
            "specs: Value error, names must be unique; repeated: cpu.2u8g",
        ),
        (lambda d: d.update(images=[]), "images: List should have at least 1 item"),
        (
            lambda d: d.update(devices=[{"kind": "tpu", "type": "v4", "index": 0}]),
            "devices.0.kind: Input should be 'gpu' or 'ascend' (got 'tpu')",
        ),
        (
            lambda d: d.update(auth={"kind": "oidc", "client_id": "atelier"}),
            "auth: Value error, auth kind oidc needs client_secret, authorize_url, token_url",
        ),
        (
            lambda d: d.update(auth={"kind": "saml"}),
            "auth.kind: Input should be 'native', 'oidc', 'github' or 'gitlab' (got 'saml')",
        ),
        (
            lambda d: d.update(database_url="mysql://db/atelier"),
            "database_url: String should match pattern",
        ),
        (
            lambda d: d["culling"].update(idle_minutes=-5),
            "culling.idle_minutes: Input should be greater than or equal to 0",
        ),
    ],
)
def test_each_mistake_names_key_value_and_expectation(tmp_path, change, expected):
    path = write(tmp_path, change)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert str(error.value).startswith(f"{path}: invalid configuration")
    assert expected in str(error.value)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration: No such file"):
        load_settings(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("port: [8000\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- port\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings, got list"):
        load_settings(listing)
