"""The admin's `atelier images|specs|token` commands against a real store."""

import json
import re

import pytest
import yaml

from atelier.hub.cli import buildable_images, main
from atelier.hub.settings import DEFAULT_CONFIG, load_settings

BASE = "python_3.11-cpu-py_3.11-debian_12-x86_64"
TORCH = "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64"


@pytest.fixture
def atelier(tmp_path, capsys):
    def run(*argv):
        code = main(
            [*argv[:1], "--data-dir", str(tmp_path), *argv[1:]]
            if argv[0] != "--config"
            else list(argv)
        )
        out, err = capsys.readouterr()
        return code, out, err

    return run


def listing(atelier, noun):
    code, out, _ = atelier(noun, "list", "--json")
    assert code == 0
    return {row["name"]: row for row in json.loads(out)}


def test_catalog_is_seeded_from_the_configuration(atelier):
    images = listing(atelier, "images")
    assert images[TORCH]["flavor"] == "cpu" and images[TORCH]["engine"] == "pytorch"
    assert images[TORCH]["engine_version"] == "2.13.0"
    assert {row["flavor"] for row in images.values()} == {"cpu", "gpu", "ascend"}
    specs = listing(atelier, "specs")
    gpu = specs["gpu.2xa100.16u128g"]
    assert (gpu["accelerator_type"], gpu["accelerator_count"], gpu["cpu"]) == ("a100", 2, 16)


def test_table_output(atelier):
    code, out, _ = atelier("images", "list")
    assert code == 0
    assert out.splitlines()[0].split()[:5] == [
        "NAME",
        "FLAVOR",
        "ENGINE",
        "ENGINE_VERSION",
        "STATUS",
    ]
    assert any(line.startswith(TORCH) for line in out.splitlines())


def test_add_update_deprecate_disable_delete_an_image(atelier):
    name = "tensorflow_2.16.1-cpu-py_3.11-debian_12-x86_64"
    assert atelier("images", "add", name, "--display-name", "TF")[0] == 0
    assert listing(atelier, "images")[name]["display_name"] == "TF"
    code, out, _ = atelier("images", "update", BASE, "--status", "deprecated", "--successor", name)
    assert code == 0 and "deprecated" in out
    assert listing(atelier, "images")[BASE]["successor"] == name
    assert atelier("images", "disable", name)[0] == 0
    assert listing(atelier, "images")[name]["status"] == "disabled"
    assert atelier("images", "delete", name)[0] == 0
    assert name not in listing(atelier, "images")


@pytest.mark.parametrize(
    "argv, message",
    [
        (("images", "add", "tensorflow-latest"), "name: 'tensorflow-latest' does not follow"),
        (("images", "add", TORCH), f"name: image {TORCH} already exists"),
        (
            ("images", "update", "nope_1-cpu-py_3.11-debian_12-x86_64", "--display-name", "x"),
            "no image named",
        ),
        (("images", "update", BASE, "--successor", BASE), "successor: 'python_3.11"),
        (
            ("images", "update", BASE, "--successor", "missing"),
            "is not another image in the catalog",
        ),
        (("specs", "add", "gpu.a100"), "name: 'gpu.a100' does not follow"),
        (("specs", "add", "cpu.2u8g"), "spec cpu.2u8g already exists"),
        (("specs", "delete", "cpu.1u1g"), "no spec named 'cpu.1u1g'"),
    ],
)
def test_bad_catalog_changes_are_refused_and_change_nothing(atelier, argv, message):
    before = listing(atelier, "images"), listing(atelier, "specs")
    code, _, err = atelier(*argv)
    assert code == 2
    assert message in err
    assert (listing(atelier, "images"), listing(atelier, "specs")) == before


def test_specs_add_disable_enable_delete(atelier):
    assert atelier("specs", "add", "cpu.4u16g")[0] == 0
    assert atelier("specs", "disable", "cpu.4u16g")[0] == 0
    assert listing(atelier, "specs")["cpu.4u16g"]["disabled"] is True
    assert atelier("specs", "enable", "cpu.4u16g")[0] == 0
    assert listing(atelier, "specs")["cpu.4u16g"]["disabled"] is False
    assert atelier("specs", "delete", "cpu.4u16g")[0] == 0
    assert "cpu.4u16g" not in listing(atelier, "specs")


def test_token_needs_the_hub_database(atelier):
    code, _, err = atelier("token", "admin")
    assert code == 2 and "no hub database" in err and "atelier run" in err


def test_configuration_errors_stop_the_cli(tmp_path, atelier):
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 1\nimages: []\nspecs: []\n")
    code, _, err = atelier("--config", str(bad), "images", "list")
    assert code == 2 and "images: List should have at least 1 item" in err


CUDA = "pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64"


def config_file(tmp_path, **changes) -> str:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config.update(data_dir=str(tmp_path / "data"), **changes)
    path = tmp_path / "atelier.yaml"
    path.write_text(yaml.safe_dump(config))
    (tmp_path / "data").mkdir(exist_ok=True)
    return str(path)


@pytest.mark.parametrize(
    "devices, built",
    [
        ([], {BASE, TORCH}),  # a CPU-only machine: no GPU or Ascend environment
        ([{"kind": "gpu", "type": "a100", "index": 0}], {BASE, TORCH, CUDA}),
    ],
)
def test_run_builds_every_image_this_machine_can_run_built_or_not(tmp_path, devices, built):
    """A fresh `atelier run` builds the images the form will offer (never the aarch64
    Ascend image on this machine), though none of them is built yet."""
    settings = load_settings(
        config_file(tmp_path, envs_dir=str(tmp_path / "envs"), devices=devices)
    )
    assert set(buildable_images(settings)) == built


def test_images_build_prints_which_image_and_each_step(tmp_path, envs_dir, capsys):
    path = config_file(tmp_path, envs_dir=str(envs_dir))
    assert main(["--config", path, "images", "build", BASE, TORCH]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"[1/2] {BASE}: already built"
    assert f"[2/2] {TORCH}: installing Atelier's extension" in lines
    assert re.fullmatch(rf"\[2/2\] {TORCH}: done in \d+ s", lines[-1])
