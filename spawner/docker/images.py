"""Catalog images on a Docker engine: the Docker backend's realisation of a catalog image.

Each image folder in `images/` holds a Dockerfile, built as `atelier/<name>`. Atelier makes
its own base, `atelier/debian:12`, with debootstrap (no registry is needed, Docker Hub may be
out of reach); a Dockerfile FROM another catalog image has that one built first; any other
base (CUDA's, CANN's) must already be in the engine. A build sees a context Atelier puts
together: the Dockerfile, the package lists, Atelier's extension and SDK, the host's CA bundle
and the host's local wheels that the lists pin (so `torch==2.13.0` installs from the CPU wheel
on disk, never a multi-GB download). The functions that take a `docker.DockerClient` block.
"""

from __future__ import annotations

import configparser
import contextlib
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

import docker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

import atelier.images
from atelier.spawner import inimage

IMAGES_DIR = Path(next(iter(atelier.images.__path__)))
PREFIX = "atelier/"
BASE = "atelier/debian:12"
SUITE = "bookworm"  # Debian 12
# Python for /opt/env; OpenSSH as the instances' SSH endpoint runs the image's own sshd.
BASE_PACKAGES = (
    "python3,python3-venv,python3-pip,ca-certificates,openssh-server,openssh-sftp-server"
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HTTP = ("http://", "https://")
DEBOOTSTRAP = "/usr/sbin/debootstrap"
TAR = "/usr/bin/tar"
UMOUNT = "/usr/bin/umount"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APT_DIR = Path("/etc/apt")
PIP_CONFIG_FILES = [Path(p) for p in ("/etc/xdg/pip/pip.conf", "/etc/pip.conf")]
PIP_CONFIG_FILES += [Path.home() / ".pip" / "pip.conf", Path.home() / ".config/pip/pip.conf"]
BUILD_READ_TIMEOUT = 900  # seconds a build may print nothing (pip unpacking torch is quiet)
# An imported rootfs has no configuration: without PATH, `ENV PATH=/opt/env/bin:$PATH`
# in a Dockerfile would leave out /usr/bin.
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)
INCLUDE = re.compile(r"^\s*(-r|--requirement|-c|--constraint)(?:\s+|=)(\S+)")

Log = Callable[[str], None]


def image_tag(name: str) -> str:
    return PREFIX + name


def dockerfile(name: str) -> Path:
    return IMAGES_DIR / name / "Dockerfile"


def has_definition(name: str) -> bool:
    return dockerfile(name).is_file()


def from_images(text: str) -> list[str]:
    """The images a Dockerfile's stages start FROM (not its own earlier stages), in order."""
    logical = re.sub(r"\\\n", " ", text)  # line continuations
    bases, stages = [], set()
    for line in logical.splitlines():
        words = line.split()
        if not words or words[0].upper() != "FROM":
            continue
        words = [w for w in words[1:] if not w.startswith("--")]  # --platform=...
        if not words:
            continue
        if words[0].lower() not in stages:
            bases.append(words[0])
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2].lower())
    return bases


def base_of(name: str) -> str | None:
    """The catalog image that `name`'s Dockerfile is FROM (`atelier/<other>`, built first),
    or None when it starts from Atelier's debian base or from a foreign image."""
    for base in from_images(dockerfile(name).read_text()):
        other = base.removeprefix(PREFIX)
        if base.startswith(PREFIX) and base != BASE and has_definition(other):
            return other
    return None


def _image_id(client: docker.DockerClient, reference: str) -> str | None:
    try:
        return client.images.get(reference).id
    except docker.errors.ImageNotFound:
        return None


def digest(client: docker.DockerClient, name: str) -> str | None:
    """The ID (`sha256:...`) of the catalog image `name` in the engine; None without one."""
    return _image_id(client, image_tag(name))


def built(client: docker.DockerClient) -> dict[str, str]:
    """Catalog image name -> ID for every `atelier/<name>` the engine holds (not the base)."""
    found = {}
    for image in client.images.list():
        for tag in image.tags:
            repository, _, version = tag.rpartition(":")
            if version != "latest":
                continue
            if repository.startswith(PREFIX) and not BASE.startswith(f"{repository}:"):
                found[repository.removeprefix(PREFIX)] = image.id
    return found


# The base: Debian 12 from debootstrap, cached as a rootfs tarball.


def mirror_from_sources(texts: Iterable[str], suite: str = SUITE) -> str | None:
    """The first http(s) Debian mirror for `suite` in apt sources, deb822 (`.sources`) or
    one-line (`.list`) format; None when they name none."""
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            fields, lines = {}, []
            for line in stanza.splitlines():
                line = line.split("#", 1)[0].rstrip()
                if not line or line[0].isspace():  # comments, deb822 continuation lines
                    continue
                lines.append(line)
                key, colon, value = line.partition(":")
                if colon and " " not in key:
                    fields[key.lower()] = value.split()
            if "uris" in fields:
                enabled = fields.get("enabled", ["yes"])[0].lower() != "no"
                if enabled and "deb" in fields.get("types", []) and suite in fields["suites"]:
                    uri = next((u for u in fields["uris"] if u.startswith(HTTP)), None)
                    if uri:
                        return uri.rstrip("/")
                continue
            for line in lines:
                words = re.sub(r"\[[^]]*\]", " ", line).split()
                if words[:1] == ["deb"] and words[2:3] == [suite] and words[1].startswith(HTTP):
                    return words[1].rstrip("/")
    return None


def host_mirror(apt_dir: Path = APT_DIR) -> str:
    """Where the host's apt gets Debian from (a local mirror or proxy it is allowed to
    reach), else deb.debian.org."""
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    texts = (p.read_text(errors="replace") for p in files if p.is_file())
    return mirror_from_sources(texts) or DEFAULT_MIRROR


def rootfs_tarball(cache_dir: Path, name: str = BASE) -> Path:
    return cache_dir / f"{name.removeprefix(PREFIX).replace(':', '-')}-rootfs.tar"


def _unmount_under(path: Path) -> None:
    """Unmount what debootstrap left mounted in a rootfs (/proc, /sys) before it is
    removed: removing through a mount would reach the host's files."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    points = [Path(line.split()[4].encode().decode("unicode_escape")) for line in lines]
    for point in sorted(points, key=lambda p: len(p.parts), reverse=True):
        if point.is_relative_to(path):
            subprocess.run([UMOUNT, "--lazy", str(point)], check=False)


def make_rootfs(tarball: Path, log: Log, mirror: str | None = None) -> None:
    """debootstrap a minimal Debian 12 with Python and OpenSSH and tar it as `tarball`; the
    tarball appears only once whole (written under a temporary name, renamed last)."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    mirror = mirror or host_mirror()
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix=".rootfs-") as work:
        rootfs, partial = Path(work) / "rootfs", Path(work) / tarball.name
        started = time.monotonic()
        log(f"debootstrap {SUITE} from {mirror} (about a minute)")
        try:
            options = ["--variant=minbase", f"--include={BASE_PACKAGES}"]
            _run([DEBOOTSTRAP, *options, SUITE, str(rootfs), mirror], "debootstrap")
            # Host keys made by the package would be shared by every instance: each instance's
            # sshd makes its own.
            for key in (rootfs / "etc" / "ssh").glob("ssh_host_*"):
                key.unlink()
            for leftover in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
                leftover.unlink()
            log(f"debootstrap done in {time.monotonic() - started:.0f} s")
            _run([TAR, "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], "tar")
        finally:
            _unmount_under(rootfs)
        os.replace(partial, tarball)


def _run(command: list[str], what: str) -> None:
    """`command` under umask 022: the hub's 077 would make the rootfs unreadable to users."""
    result = subprocess.run(command, capture_output=True, text=True, errors="replace", umask=0o022)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{tail}")


def ensure_base(client: docker.DockerClient, cache_dir: Path, log: Log, name: str = BASE) -> str:
    """The base image's ID, importing it from the cached rootfs tarball when the engine lacks
    it (seconds), and making that tarball first when the cache lacks it (debootstrap)."""
    existing = _image_id(client, name)
    if existing:
        return existing
    tarball = rootfs_tarball(cache_dir, name)
    if not tarball.is_file():
        make_rootfs(tarball, log)
    started = time.monotonic()
    repository, _, tag = name.rpartition(":")
    client.api.import_image_from_file(
        str(tarball), repository=repository, tag=tag, changes=list(BASE_CHANGES)
    )
    log(f"imported {name} in {time.monotonic() - started:.1f} s")
    return client.images.get(name).id


# The build context.


def requirement_files(path: Path) -> list[Path]:
    """A package list and every list it includes (`-r`, `-c`), each once, the first first."""
    found: list[Path] = []

    def visit(file: Path) -> None:
        file = file.resolve()
        if file in found:
            return
        found.append(file)
        for line in file.read_text().splitlines():
            match = INCLUDE.match(line)
            if match:
                visit(file.parent / match.group(2))

    visit(path)
    return found


def pins(lines: Iterable[str]) -> dict[str, Requirement]:
    """`name==version` requirements by canonical name; options, includes and ranges are not
    pins."""
    found = {}
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        specifiers = list(requirement.specifier)
        if len(specifiers) == 1 and specifiers[0].operator == "==":
            found[canonicalize_name(requirement.name)] = requirement
    return found


def matching_wheels(pinned: Mapping[str, Requirement], directories: Iterable[Path]) -> list[Path]:
    """Wheels in `directories` of a pinned package at its pinned version (a local version
    such as `2.13.0+cpu` matches `==2.13.0`, as pip would take it)."""
    found = []
    for directory in directories:
        for wheel in sorted(directory.glob("*.whl")):
            try:
                name, version, _, _ = parse_wheel_filename(wheel.name)
            except InvalidWheelFilename:
                continue
            requirement = pinned.get(name)
            if requirement and requirement.specifier.contains(version, prereleases=True):
                found.append(wheel)
    return found


def find_links_dirs(
    environ: Mapping[str, str] = os.environ, config_files: Iterable[Path] = PIP_CONFIG_FILES
) -> list[Path]:
    """The local directories the host's pip finds wheels in (PIP_FIND_LINKS and pip.conf's
    `find-links`): a container's pip sees none of the host's configuration."""
    values = environ.get("PIP_FIND_LINKS", "").split()
    chosen = environ.get("PIP_CONFIG_FILE")
    files = [] if chosen == os.devnull else [*config_files, *([Path(chosen)] if chosen else [])]
    for file in files:
        config = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(configparser.Error):
            config.read(file)
        for section, key in itertools.product(("global", "install"), ("find-links", "find_links")):
            values += config.get(section, key, fallback="").split()
    found = []
    for value in values:  # paths and file: URLs; web pages are left to the container's pip
        local = value.startswith("file:") or "://" not in value
        path = Path(unquote(urlparse(value).path) if value.startswith("file:") else value)
        if local and path.is_absolute() and path.is_dir() and path not in found:
            found.append(path)
    return found


def make_context(
    name: str, context: Path, wheel_dirs: Iterable[Path] = (), ca_bundle: Path = CA_BUNDLE
) -> None:
    """Lay out `name`'s build context in the empty directory `context`: Dockerfile,
    requirements.txt (its includes under requirements.d/, at their paths relative to images/),
    atelier/ (the extension with its atelier.json, the SDK and the training module),
    ca-certificates.crt and wheels/."""
    folder = IMAGES_DIR / name
    shutil.copy(folder / "Dockerfile", context / "Dockerfile")
    files = requirement_files(folder / "requirements.txt")
    included = context / "requirements.d"
    included.mkdir()
    for file in files[1:]:
        if not file.is_relative_to(IMAGES_DIR.resolve()):
            raise ValueError(f"{name}: {file} is included but lies outside images/")
        target = included / file.relative_to(IMAGES_DIR.resolve())
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, target)
    lines = []
    for line in files[0].read_text().splitlines():
        match = INCLUDE.match(line)
        if match:
            path = (folder / match.group(2)).resolve().relative_to(IMAGES_DIR.resolve())
            line = f"{match.group(1)} requirements.d/{path}"
        lines.append(line)
    (context / "requirements.txt").write_text("\n".join(lines) + "\n")
    for source, target in inimage.PACKAGES:
        shutil.copytree(
            source,
            context / "atelier" / target,
            ignore=shutil.ignore_patterns(*inimage.LEFT_OUT),
        )
    shutil.copy(ca_bundle, context / "ca-certificates.crt")
    wheels = context / "wheels"
    wheels.mkdir()
    pinned = pins(line for file in files for line in file.read_text().splitlines())
    for wheel in matching_wheels(pinned, wheel_dirs):
        try:  # torch's is 183 MB; a link only to a file all may read (its mode stays)
            if wheel.stat().st_mode & 0o444 != 0o444:
                raise PermissionError
            os.link(wheel, wheels / wheel.name)
        except OSError:
            shutil.copy(wheel, wheels / wheel.name)
    # COPY keeps modes: under the hub's umask 077 the image's user could read none of it.
    for path in context.rglob("*"):
        mode = 0o755 if path.is_dir() or path.stat().st_mode & 0o111 else 0o644
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


# Building.


def build(
    client: docker.DockerClient, name: str, cache_dir: Path, log: Log, _within: tuple = ()
) -> str:
    """Build `images/<name>/Dockerfile` as `atelier/<name>` and return its ID, building or
    importing its base first where Atelier can make it; RuntimeError (with the end of the
    build log) when it fails, and then nothing is tagged."""
    if not has_definition(name):
        raise RuntimeError(f"no image definition: {dockerfile(name)} does not exist")
    if name in _within:
        raise RuntimeError(f"{name} is built FROM itself: {' -> '.join((*_within, name))}")
    for base in from_images(dockerfile(name).read_text()):
        other = base.removeprefix(PREFIX)
        if base == BASE:
            ensure_base(client, cache_dir, log)
        elif base.startswith(PREFIX) and has_definition(other):
            if digest(client, other) is None:
                log(f"building its base {other} first")
                build(client, other, cache_dir, log, (*_within, name))
        elif _image_id(client, base) is None:
            raise RuntimeError(
                f"{name} is built only where its base exists: the engine lacks {base}"
            )
    started = time.monotonic()
    tail: list[str] = []
    with tempfile.TemporaryDirectory(prefix="atelier-build-") as context:
        make_context(name, Path(context), find_links_dirs())
        output = client.api.build(
            path=context,
            tag=image_tag(name),
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="host",  # the engine may have no bridge
            decode=True,
            timeout=BUILD_READ_TIMEOUT,
        )
        image_id = None
        for chunk in output:
            if "error" in chunk:
                tail.append(chunk["error"].rstrip())
                raise RuntimeError(f"building {name} failed:\n" + "\n".join(tail[-25:]))
            for line in chunk.get("stream", "").splitlines():
                if line.strip():
                    tail = [*tail[-40:], line]
                    log(line)
            image_id = chunk.get("aux", {}).get("ID", image_id)
    log(f"built {image_tag(name)} in {time.monotonic() - started:.0f} s")
    return image_id or client.images.get(image_tag(name)).id
