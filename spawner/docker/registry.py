"""The OCI registry that keeps the Docker backend's saved images, and Atelier's client of it.

Unless `backend_options.registry` names another, Atelier runs Debian's docker-registry
(distribution 2.8) itself, as a hub-managed service that ends with the hub: on loopback
(dockerd takes 127.0.0.0/8 registries as insecure, so no TLS is needed), its storage under the
hub's data dir, deletes enabled, and basic auth with a password only the hub's processes read
(instances share the host's network: without it any of them could read or delete every
user's images). `python -m atelier.spawner.docker.registry DIR ADDRESS` first collects
garbage, which only a stopped registry may do (the blobs of deleted snapshots and of
cut-off pushes), then becomes the registry.

The client is the few calls of the distribution API that saving needs, with requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import bcrypt
import docker
import requests
import yaml

REGISTRY = "/usr/bin/docker-registry"
USER = "atelier"
LISTEN = "0A"  # a listening socket's state in /proc/net/tcp
# The password is 256 random bits: its hash need not be slow, and every request checks it.
BCRYPT_ROUNDS = 4
MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
TIMEOUT_S = 60
HOST = re.compile(
    r"^(?P<name>localhost|\[[0-9a-fA-F:]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*)(?P<port>:[0-9]{1,5})?$"
)
PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")


def parse_location(location: str) -> tuple[str, str]:
    """`host[:port][/path]` -> (host, path): where engine references put the repositories.
    The host must read as a registry's (a dot, a port or localhost), or the engine would take
    it for a Docker Hub account."""
    host, _, path = location.partition("/")
    match = HOST.match(host)
    if not match or not (match["port"] or "." in host or host.startswith(("localhost", "["))):
        raise ValueError(
            f"must be a registry's host[:port], optionally with a /path "
            f"(registry.example.org:5000/atelier), not {location!r}"
        )
    if path and not all(PATH_COMPONENT.match(part) for part in path.split("/")):
        raise ValueError(f"{path!r} is no path in a registry (lowercase letters, digits, . _ -)")
    return host, path


def is_loopback(host: str) -> bool:
    name = HOST.match(host)["name"].strip("[]")
    if name == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(name).is_loopback
    return False


def port_is_free(address: str) -> bool:
    """Whether nothing listens there (connections the last registry left closing do not
    count: the registry, as this probe, binds with SO_REUSEADDR)."""
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
    return True


def listeners(port: int) -> set[int]:
    """The accounts (uids) listening on `port`, on any address, IPv4 or IPv6."""
    owners = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    owners.add(int(fields[7]))
    return owners


# Atelier's own registry.


@dataclass(frozen=True)
class Files:
    """Atelier's registry under the hub's data dir."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "config.yml"

    @property
    def password(self) -> Path:
        return self.directory / "password"

    @property
    def htpasswd(self) -> Path:
        return self.directory / "htpasswd"

    @property
    def storage(self) -> Path:
        return self.directory / "storage"

    @property
    def log(self) -> Path:
        return self.directory / "registry.log"


def config(files: Files, address: str, secret: str) -> dict:
    """docker-registry's configuration: loopback, deletes on, uploads a cut-off push left
    purged after two hours, no access log."""
    purging = {"enabled": True, "age": "2h", "interval": "1h", "dryrun": False}
    return {
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(files.storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": purging},
        },
        "http": {"addr": address, "secret": secret},
        "auth": {"htpasswd": {"realm": "atelier", "path": str(files.htpasswd)}},
    }


def write_private(path: Path, text: str) -> None:
    """`text` in `path`, 0600, whole or not at all (readers may look at any time)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(partial, path)


def prepare(files: Files, address: str) -> None:
    """The directory (0700), the password (kept across starts: clients read it), its hash
    and the configuration."""
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    files.directory.chmod(0o700)
    if not files.password.exists():
        write_private(files.password, secrets.token_urlsafe(32))
    password = files.password.read_text().strip().encode()
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
    write_private(files.htpasswd, f"{USER}:{hashed}\n")
    write_private(files.config, yaml.safe_dump(config(files, address, secrets.token_hex(32))))


def collect_garbage(files: Files) -> None:
    """Remove the blobs no tagged manifest holds; a failure is reported and serving goes on
    (what it left is collected at the next start)."""
    if not (files.storage / "docker" / "registry" / "v2" / "repositories").is_dir():
        return  # nothing stored yet (and garbage-collect fails on an empty storage)
    command = [REGISTRY, "garbage-collect", "--delete-untagged", str(files.config)]
    result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-10:])
        print(f"atelier: the registry's garbage collection failed:\n{tail}", file=sys.stderr)


def main(argv: list[str]) -> None:
    directory, address = argv
    files = Files(Path(directory))
    prepare(files, address)
    collect_garbage(files)
    # Its own log, afresh at each start: it logs every probe of a push as an error, which
    # would read as trouble in the hub's log (Atelier's client names what really failed).
    print(f"atelier: the registry serves on {address}; its log is {files.log}", file=sys.stderr)
    descriptor = os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.execv(REGISTRY, [REGISTRY, "serve", str(files.config)])


# The client.


class RegistryError(RuntimeError):
    """The registry did not answer, or refused: the message names the call and why."""


class RegistryTaken(RegistryError):
    """Another account's process listens on the port of Atelier's registry."""


@dataclass(frozen=True)
class Registry:
    """Where snapshots go: `host` as engine references name it, `path` the repositories'
    prefix there. Atelier's own is reached with its password file; another with what
    `docker login` stored for it (~/.docker/config.json), basic auth or none."""

    host: str
    path: str = ""
    password_file: Path | None = None

    def credentials(self) -> tuple[str, str] | None:
        if self.password_file is not None:
            # instances share the host's network: one that took the port while the registry
            # was down would be sent its password
            owners = listeners(int(self.host.rpartition(":")[2]))
            if owners - {0}:
                raise RegistryTaken(
                    f"what listens on {self.host} is not Atelier's registry (not root's): its "
                    "password is not sent; end that process and restart the hub"
                )
            if not owners:
                raise RegistryError(f"nothing listens on {self.host} yet")
            with contextlib.suppress(FileNotFoundError):  # the registry has not started yet
                return USER, self.password_file.read_text().strip()
            return None
        found = docker.auth.resolve_authconfig(docker.auth.load_config(), self.host) or {}
        if found.get("username") and found.get("password"):
            return found["username"], found["password"]
        return None

    def auth_config(self) -> dict | None:
        """The engine's credentials for a push or pull (None: the engine's own)."""
        credentials = self.credentials()
        return (
            dict(zip(("username", "password"), credentials, strict=True)) if credentials else None
        )

    @property
    def url(self) -> str:
        return f"{'http' if is_loopback(self.host) else 'https'}://{self.host}/v2/"

    def call(self, method: str, path: str, ok=(200,), **kwargs) -> requests.Response:
        try:
            response = requests.request(
                method,
                urljoin(self.url, path),
                auth=self.credentials(),
                timeout=TIMEOUT_S,
                **kwargs,
            )
        except requests.RequestException as error:
            raise RegistryError(
                f"the registry at {self.host} does not answer ({type(error).__name__})"
            ) from None
        if response.status_code not in ok:
            words = " ".join(response.text.split())[:300]
            raise RegistryError(
                f"the registry at {self.host} answered {method} {path.split('?')[0]} with "
                f"{response.status_code} {words}"
            )
        return response

    def wait(self, timeout: float) -> None:
        """Until it answers (Atelier's starts with the hub, after its garbage collection)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("GET", "")
                return
            except RegistryTaken:
                raise  # waiting would not make it Atelier's
            except RegistryError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def manifest(self, repository: str, reference: str) -> tuple[str, bytes, str]:
        """The manifest's digest (of the bytes as served), bytes and media type."""
        accept = {"Accept": ", ".join(MANIFEST_TYPES)}
        response = self.call("GET", f"{repository}/manifests/{reference}", headers=accept)
        digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"the registry's manifest {reference} hashes to {digest}")
        return digest, response.content, response.headers.get("Content-Type", "")

    def digest(self, repository: str, tag: str) -> str | None:
        accept = {"Accept": ", ".join(MANIFEST_TYPES)}
        path = f"{repository}/manifests/{tag}"
        response = self.call("HEAD", path, ok=(200, 404), headers=accept)
        return response.headers.get("Docker-Content-Digest") if response.ok else None

    def put_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        headers = {"Content-Type": media_type}
        path = f"{repository}/manifests/{tag}"
        response = self.call("PUT", path, ok=(201,), data=body, headers=headers)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if response.headers.get("Docker-Content-Digest") != digest:
            raise RegistryError(f"the registry stored manifest {digest} under another digest")
        return digest

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete it (and its tags); gone already is fine."""
        self.call("DELETE", f"{repository}/manifests/{digest}", ok=(202, 404))

    def blob(self, repository: str, digest: str) -> bytes:
        content = self.call("GET", f"{repository}/blobs/{digest}").content
        if "sha256:" + hashlib.sha256(content).hexdigest() != digest:
            raise RegistryError(f"the registry's blob {digest} does not match its digest")
        return content

    def put_blob(self, repository: str, content: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        started = self.call("POST", f"{repository}/blobs/uploads/", ok=(202,))
        location = urljoin(self.url, started.headers["Location"])
        self.call("PUT", location, ok=(201,), params={"digest": digest}, data=content)
        return digest

    def repositories(self) -> list[str]:
        found, page = [], "_catalog?n=1000"
        while page:
            response = self.call("GET", page)
            found += response.json().get("repositories") or []
            page = response.links.get("next", {}).get("url")
        return found

    def tags(self, repository: str) -> list[str]:
        response = self.call("GET", f"{repository}/tags/list", ok=(200, 404))
        return (response.json().get("tags") or []) if response.ok else []


if __name__ == "__main__":
    main(sys.argv[1:])
