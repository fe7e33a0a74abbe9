"""One distribution, import names under `atelier.`: as an editable install and as a wheel."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import atelier.spawner.core

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_top_level_folders():
    assert Path(atelier.spawner.core.__file__) == ROOT / "spawner" / "core" / "__init__.py"
    command = Path(sys.executable).parent / "atelier"
    result = subprocess.run([command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "images" in result.stdout


@pytest.mark.e2e
def test_built_wheel_installs_and_imports(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    wheel = next(tmp_path.glob("atelier_hub-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "atelier/spawner/core/__init__.py",
        "atelier/spawner/local/backend.py",
        "atelier/hub/web/templates/home.html",
        "atelier/config/atelier.yaml",
        "atelier/config/jupyterhub_config.py",
        "atelier/images/pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64/requirements.txt",
        "atelier/extensions/__init__.py",
        "atelier/sdk/__init__.py",
        "atelier/training/__init__.py",
        "atelier/hub/store/migrations/versions/0001_catalog_instances_and_audit_events.py",
    ):
        assert expected in names, expected
    assert not any(name.startswith(("hub/", "spawner/", "tests/")) for name in names)
    assert not any(name.startswith("atelier/sdk/training/") for name in names)  # its own

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    # the wheel's own code, with this environment's dependencies
    deps = sysconfig.get_paths()["purelib"]
    check = (
        "import atelier.spawner.core as c, atelier.hub.settings as s;"
        "import atelier.spawner.local.envs as e;"
        "print(c.__file__); print(s.load_settings().port); print(e.IMAGES_DIR.is_dir())"
    )
    result = subprocess.run(
        [venv / "bin" / "python", "-c", check],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": deps},
        cwd=tmp_path,
    )
    lines = result.stdout.split()
    assert lines[0].startswith(str(venv)), result.stderr
    assert lines[1:] == ["8000", "True"]
