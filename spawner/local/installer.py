"""Installing Python packages into an environment: with uv where pip's configuration carries
over to it, with pip otherwise.

uv installs a torch image's packages in a fraction of pip's time, but reads none of pip's
configuration: the index, the wheel folders and the constraints a machine's pip.conf and
PIP_* variables name (a mirror, a CPU build of torch on disk) would be lost. So the settings
pip would use are read from pip itself (`pip config list`) and handed to uv; a setting with
no counterpart in uv (a proxy, a client certificate) means pip does the install.

    <env>/bin/python installer.py <pip install arguments>...

installs into that environment (with the uv beside it): how the Makefile installs Atelier,
before it can be imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping

# pip's settings and uv's option for each (values split at whitespace: several allowed)
OPTIONS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}
# as pip does: the best version from all indexes; .pyc files written (the environment is
# root's: an instance could not write them, and would compile every import every time)
PIP_LIKE = ["--index-strategy=unsafe-best-match", "--compile-bytecode"]
FLAGS = {"no-index": "--no-index", "pre": "--prerelease=allow"}
HARMLESS = {"default-timeout", "timeout", "disable-pip-version-check", "no-cache-dir", "quiet"}
HARMLESS |= {"progress-bar", "root-user-action", "no-color", "retries", "no-input", "config-file"}


def pip_settings(python: str) -> dict[str, str]:
    """What `pip config list` says (files, then PIP_* variables, which win), by setting."""
    listing = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    settings = {}
    for line in listing.splitlines():
        name, _, value = line.partition("=")
        settings[name.split(".", 1)[-1].replace("_", "-")] = value.strip().strip("'\"")
    return settings


def uv_arguments(settings: Mapping[str, str]) -> tuple[list[str], dict[str, str]] | None:
    """uv's options and environment for pip's settings, or None when one has no counterpart."""
    options, environment = [], {}
    for name, value in settings.items():
        if name in OPTIONS:
            options += [f"{OPTIONS[name]}={item}" for item in value.split()]
        elif name in FLAGS:
            options += [FLAGS[name]] if value.lower() in ("1", "true", "yes", "on") else []
        elif name == "cert":
            environment["SSL_CERT_FILE"] = value
        elif name not in HARMLESS:
            return None
    return options, environment


def install_command(python: str, arguments: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command (and its environment) that does `pip install <arguments>` into the
    environment of `python`: uv's when it can, pip's otherwise."""
    uv = shutil.which("uv", path=os.path.dirname(sys.executable))
    translated = uv_arguments(pip_settings(python)) if uv else None
    if translated is None:
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        return [*pip, *arguments], dict(os.environ)
    options, environment = translated
    command = [uv, "pip", "install", "--quiet", f"--python={python}", *PIP_LIKE, *options]
    command += arguments
    return command, {**os.environ, **environment}


if __name__ == "__main__":
    command, environment = install_command(sys.executable, sys.argv[1:])
    sys.exit(subprocess.run(command, env=environment).returncode)
