"""Local image environments: the local backend's realisation of a catalog image.

Each image folder in `images/` holds a `requirements.txt`; its environment is a virtual
environment built from the system Python (readable by every instance account) plus
Atelier's jupyter-server extension. A stamp of the requirements, written last, marks an
environment as built and makes rebuilds no-ops; a build that fails or is cut off leaves no
environment that looks built.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import atelier.images
from atelier.spawner import inimage
from atelier.spawner.local import installer
from atelier.spawner.local.accounts import run

IMAGES_DIR = Path(next(iter(atelier.images.__path__)))
STAMP = ".atelier-requirements.sha256"
# jsonschema's optional IRI checker, which jupyter-events pulls in: it compiles 35 Earley
# parsers when imported, which is 1-2 s of CPU in every JupyterLab server's start, for a
# format no Jupyter schema uses (jsonschema skips the format when it is missing).
SLOW_TO_IMPORT = "rfc3987-syntax"


def base_python() -> str:
    """The system Python when there is one: a Python under /root is unreadable to instances."""
    return shutil.which("python3", path="/usr/bin:/usr/local/bin") or sys.executable


def env_python_bin(envs_dir: Path, image: str) -> Path:
    return envs_dir / image / "bin"


def built_envs(envs_dir: Path) -> frozenset[str]:
    """Images whose environment was built to the end (a half-built one has no stamp)."""
    if not envs_dir.is_dir():
        return frozenset()
    return frozenset(env.name for env in envs_dir.iterdir() if (env / STAMP).exists())


def requirements_file(image: str) -> Path:
    return IMAGES_DIR / image / "requirements.txt"


def has_definition(image: str) -> bool:
    return requirements_file(image).is_file()


def requirements_digest(path: Path) -> str:
    """SHA-256 of a requirements file and every file it includes with `-r`."""
    digest = hashlib.sha256()
    for line in path.read_text().splitlines():
        digest.update(line.encode())
        if line.startswith("-r "):
            digest.update(requirements_digest(path.parent / line[3:].strip()).encode())
    return digest.hexdigest()


def is_built(envs_dir: Path, image: str) -> bool:
    stamp = envs_dir / image / STAMP
    return stamp.exists() and stamp.read_text() == requirements_digest(requirements_file(image))


def readable_by_instances(build: Callable) -> Callable:
    """Environments are for every instance account: built with umask 022, not the hub's 077
    (the builds run before the hub starts, in one thread)."""

    @functools.wraps(build)
    def with_umask(*args, **kwargs):
        previous = os.umask(0o022)
        try:
            return build(*args, **kwargs)
        finally:
            os.umask(previous)

    return with_umask


@readable_by_instances
def build_env(envs_dir: Path, image: str, log: Callable[[str], None] = print) -> Path:
    """Build (or refresh) the environment of one image, logging each step (a first build
    takes minutes); returns its directory."""
    started = time.monotonic()
    target = envs_dir / image
    with one_build_at_a_time(envs_dir, image, log):
        if is_built(envs_dir, image):
            log("already built")
            leave_out_slow_imports(target)
            log("installing Atelier's extension")
            install_extension(target)
        else:
            try:
                create_env(target, image, log)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)  # failed or cut off: nothing half-built
                raise
    envs_dir.chmod(0o755)
    log(f"done in {time.monotonic() - started:.0f} s")
    return target


@contextlib.contextmanager
def one_build_at_a_time(envs_dir: Path, image: str, log: Callable[[str], None]) -> Iterator[None]:
    """An image's environment is built by one process at a time on this machine (two hubs or
    `atelier build`s would remove each other's half-built one): a second waits for the first,
    then finds it built."""
    envs_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(envs_dir / f".{image}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another build of this environment to end")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # and the lock with it


def create_env(target: Path, image: str, log: Callable[[str], None]) -> None:
    """A fresh environment in place (a virtual environment cannot move), stamped last."""
    log("creating the environment")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    run(base_python(), "-m", "venv", str(target))
    log("installing packages (a few minutes the first time)")
    requirements = requirements_file(image)
    command, environment = installer.install_command(
        str(target / "bin" / "python"), ["-r", str(requirements)]
    )
    run(*command, env=environment)
    leave_out_slow_imports(target)
    log("installing Atelier's extension")
    install_extension(target)
    (target / STAMP).write_text(requirements_digest(requirements))


def leave_out_slow_imports(env: Path) -> None:
    site = next((env / "lib").glob("python3*/site-packages"))
    if (site / SLOW_TO_IMPORT.replace("-", "_")).is_dir():  # pip installed it, or an older build
        pip = str(env / "bin" / "pip")
        run(pip, "uninstall", "--quiet", "--yes", "--disable-pip-version-check", SLOW_TO_IMPORT)


def install_extension(env: Path) -> None:
    """Copy Atelier's jupyter-server extension, SDK and training module (what a job's ranks
    import) into the environment; enable the extension."""
    site = next((env / "lib").glob("python3*/site-packages"))
    for source, name in inimage.PACKAGES:
        shutil.copytree(
            source,
            site / "atelier" / name,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(*inimage.LEFT_OUT),
        )
    see_user_site(env)
    config_dir = env / "etc" / "jupyter" / "jupyter_server_config.d"
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(inimage.EXTENSION_DIR / "atelier.json", config_dir / "atelier.json")


def see_user_site(env: Path) -> None:
    """The environment is root's: what a user installs goes to ~/.local (`pip install`
    falls back to it, `pip install --user` asks for it), which pip and Python use only in an
    environment that includes the system's site-packages. Those are the machine's Python
    packages, after the image's own on the path, as an OS image's would be."""
    config = env / "pyvenv.cfg"
    lines = config.read_text().splitlines()
    kept = [line for line in lines if not line.startswith("include-system-site-packages")]
    config.write_text("\n".join([*kept, "include-system-site-packages = true"]) + "\n")
