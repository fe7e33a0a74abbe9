"""Image environments are installed by uv with the settings the machine's pip has, or by pip
when a setting cannot carry over: a wheel folder or an index a machine's pip uses is never
lost on the way."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from atelier.spawner.local import installer
from atelier.spawner.local.accounts import run


def test_pips_settings_become_uvs_options_and_environment():
    options, environment = installer.uv_arguments(
        {
            "find-links": "/opt/wheels file:///srv/more",
            "extra-index-url": "https://mirror.example/simple",
            "constraint": "/etc/xdg/pip/constraints.txt",
            "no-index": "true",
            "cert": "/etc/ssl/certs/ca-certificates.crt",
            "default-timeout": "180",
        }
    )
    assert options == [
        "--find-links=/opt/wheels",
        "--find-links=file:///srv/more",
        "--extra-index-url=https://mirror.example/simple",
        "--constraint=/etc/xdg/pip/constraints.txt",
        "--no-index",
    ]
    assert environment == {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}


@pytest.mark.parametrize("setting", ["proxy", "client-cert", "require-hashes", "only-binary"])
def test_a_setting_uv_has_no_counterpart_for_leaves_the_install_to_pip(setting):
    assert installer.uv_arguments({"find-links": "/opt/wheels", setting: "x"}) is None


def test_pip_does_the_install_when_its_configuration_has_a_proxy(tmp_path, monkeypatch):
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nproxy = http://proxy.example:3128\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    command, _ = installer.install_command(sys.executable, ["six"])
    assert command[:4] == [sys.executable, "-m", "pip", "install"] and command[-1] == "six"


def a_wheel(folder: Path, name: str = "atelier_probe", version: str = "1.0") -> Path:
    """A pure-Python wheel of one module that says its name."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"NAME = {name!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_a_wheel_only_the_machines_pip_knows_of_is_installed_and_compiled(tmp_path, monkeypatch):
    """pip's wheel folder, named by PIP_FIND_LINKS alone with no index at all, reaches uv:
    without it the package could not be found anywhere."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    a_wheel(wheels)
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    python = str(env / "bin" / "python")
    command, environment = installer.install_command(python, ["atelier_probe==1.0"])
    assert Path(command[0]).name == "uv"
    run(*command, env=environment)
    # compiled at install (before any import could), as pip does: instances cannot write
    # .pyc files into root's environment
    assert list(env.glob("lib/python3*/site-packages/__pycache__/atelier_probe.*.pyc"))
    assert run(python, "-c", "import atelier_probe; print(atelier_probe.NAME)") == "atelier_probe\n"
