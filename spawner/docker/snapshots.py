"""Save as image on Docker: a snapshot is a commit of the instance's container, pushed to the
OCI registry (registry.py) and named by its manifest's digest.

`docker commit` keeps the container's environment in the image's configuration (the engine
merges it in whatever the commit asks), and that holds the instance's own credentials
(JupyterHub's token, the SSH endpoint's). So the commit is pushed under a passing tag, the
snapshot's manifest is put beside it with the same layers and a configuration rewritten to
the source image's (plus the snapshot's labels), and the commit's manifest is deleted (its
configuration's blob goes at the registry's next garbage collection). The engine then pulls
the snapshot back by digest, which checks what the registry holds, and keeps only that.
Starts use `<repository>@<digest>`, pulled (and so checked again) where the engine lacks it.
What a cut-off save leaves (images labelled for this hub, manifests the catalog does not
know) is swept when the service starts. The functions that take an engine block.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import docker
from dockerspawner import DockerSpawner

from atelier.spawner import core
from atelier.spawner.docker import containers
from atelier.spawner.docker.registry import Registry, RegistryError

log = logging.getLogger(__name__)
NAMESPACE = "atelier-snapshots"
LABEL_SNAPSHOT = "atelier.snapshot"
NAME_MAX = 255  # a reference's name, registry host included (distribution's limit)
READY_S = 60  # how long a save or a start waits for the registry to answer
SWEEP_READY_S = 15  # the sweep holds up the service's start, which JupyterHub waits for
SAVE_TIMEOUT_S = 1800  # an engine call of a save may be quiet this long (a commit of 35 GB)
CONFIG_PARTS = ("config", "container_config", "container")  # what the container put in
Progress = Callable[[str, int, int], None]


def component(text: str) -> str:
    """`text` escaped as container names are (containers.py). A repository's path component
    starts with a letter or digit, so one escaped to a leading '-' gets 'x-' in front: the
    escape never writes '--', so such a component meets no plain one."""
    escaped = DockerSpawner._escape(text)
    return escaped if escaped[0].isalnum() else f"x-{escaped}"


def namespace(path: str) -> str:
    """Where snapshots' repositories are under the registry's `path` (nothing else is swept)."""
    return f"{path}/{NAMESPACE}" if path else NAMESPACE


def repository(path: str, image: str) -> str:
    """The repository of the snapshot `<owner>/<name>`: one per name, deterministic."""
    owner, name = image.split("/", 1)
    return f"{namespace(path)}/{component(owner)}/{component(name)}"


@dataclass
class PushProgress:
    """Bytes pushed of the layers the engine pushes (those the registry has are not counted),
    and the digest the push ends with, from the engine's push stream."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    digest: str | None = None

    def feed(self, chunk: dict) -> None:
        if "error" in chunk:
            raise RuntimeError(f"the engine's push failed: {chunk['error']}")
        self.digest = (chunk.get("aux") or {}).get("Digest", self.digest)
        layer, detail = chunk.get("id"), chunk.get("progressDetail") or {}
        if layer and detail.get("total"):
            self.layers[layer] = (min(detail.get("current", 0), detail["total"]), detail["total"])
        elif layer in self.layers and chunk.get("status") == "Pushed":
            self.layers[layer] = (self.layers[layer][1],) * 2

    @property
    def bytes(self) -> tuple[int, int]:
        return sum(d for d, _ in self.layers.values()), sum(t for _, t in self.layers.values())


def clean_config(pushed: dict, source: dict, labels: dict[str, str]) -> dict:
    """The commit's image configuration with what the container put in it replaced by the
    source image's (`docker inspect`'s Config) and the snapshot's labels: its layers,
    history and platform stay the commit's."""
    kept = {key: value for key, value in pushed.items() if key not in CONFIG_PARTS}
    return {**kept, "config": {**source, "Labels": {**(source.get("Labels") or {}), **labels}}}


def with_config(manifest: dict, digest: str, size: int) -> dict:
    return {**manifest, "config": {**manifest["config"], "digest": digest, "size": size}}


@dataclass
class Made:
    """What a save made so far, removed when it fails."""

    commit: str | None = None
    manifests: list[str] = field(default_factory=list)
    pulled: str | None = None


class Snapshots:
    """Snapshots of this hub's containers in `registry`; `slow` is a client of the engine
    whose calls may take SAVE_TIMEOUT_S."""

    def __init__(self, engine, slow, hub: str, registry: Registry):
        self.engine, self.slow, self.hub, self.registry = engine, slow, hub, registry

    def repository(self, name: str) -> str:
        return repository(self.registry.path, name)

    def target(self, name: str) -> str:
        """`<registry>/<repository>` of the snapshot `name`, as engine references name it."""
        return f"{self.registry.host}/{self.repository(name)}"

    def measure(self, plan: core.SnapshotPlan, container: dict) -> tuple[int, int]:
        """The container's whole size (its image's included) and its image's layers plus
        the commit's, as the engine counts them: nothing is copied."""
        if len(self.target(plan.image.name)) > NAME_MAX:
            raise core.OptionsError("name", "is too long for a registry's repository name")
        listed = self.engine.api.containers(filters={"id": container["Id"]}, size=True)
        if not listed:
            raise core.OptionsError("instance", "its container has just stopped", "conflict")
        image = self.engine.api.inspect_image(container["Image"])
        return listed[0]["SizeRootFs"], len(image["RootFS"]["Layers"]) + 1

    def save(self, plan: core.SnapshotPlan, container: dict, progress: Progress) -> str:
        """Commit (pausing the container a moment), push, put the clean manifest, pull it
        back by digest; keep nothing but that when any step fails."""
        repo, target, made = self.repository(plan.image.name), self.target(plan.image.name), Made()
        tag = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
        labels = {containers.LABEL_HUB: self.hub, LABEL_SNAPSHOT: plan.image.name}
        source = self.engine.api.inspect_image(container["Image"])["Config"]
        step = "waiting for the registry"
        try:
            self.registry.wait(READY_S)
            step = "committing the container"
            made.commit = self.slow.api.commit(
                container["Id"],
                repository=target,
                tag=f"{tag}-commit",
                message=f"saved by Atelier from {plan.owner}/{plan.instance}",
                conf={**source, "Labels": {**(source.get("Labels") or {}), **labels}},
            )["Id"]
            step = f"pushing to {self.registry.host}"
            pushed = self._push(target, f"{tag}-commit", progress)
            made.manifests.append(pushed.digest)
            step = "writing the image's configuration to the registry"
            digest = self._put_clean(repo, pushed.digest, tag, source, labels)
            made.manifests.append(digest)
            step = "pulling it back by digest"
            progress("verifying", *pushed.bytes)
            self._pull(target, digest)
            made.pulled = f"{target}@{digest}"
        except Exception as error:  # whatever failed, what was made goes
            self._undo(made, repo)
            raise RuntimeError(f"{step} failed: {explained(error)}") from None
        self._undo(Made(made.commit, made.manifests[:1]), repo)  # the commit, with its secrets
        return digest

    def _push(self, target: str, tag: str, progress: Progress) -> PushProgress:
        pushed = PushProgress()
        auth = self.registry.auth_config()
        for chunk in self.slow.api.push(target, tag, stream=True, decode=True, auth_config=auth):
            pushed.feed(chunk)
            progress("saving", *pushed.bytes)
        if pushed.digest is None:
            raise RuntimeError("the engine's push named no digest")
        return pushed

    def _put_clean(self, repo: str, pushed: str, tag: str, source: dict, labels: dict) -> str:
        _, body, media_type = self.registry.manifest(repo, pushed)
        manifest = json.loads(body)
        config = json.loads(self.registry.blob(repo, manifest["config"]["digest"]))
        clean = json.dumps(clean_config(config, source, labels)).encode()
        digest = self.registry.put_blob(repo, clean)
        manifest = json.dumps(with_config(manifest, digest, len(clean)), indent=3).encode()
        return self.registry.put_manifest(repo, tag, manifest, media_type)

    def _pull(self, target: str, digest: str) -> None:
        """Pull by digest: the engine checks the manifest and every blob it fetches."""
        auth = self.registry.auth_config()
        for chunk in self.slow.api.pull(target, digest, stream=True, decode=True, auth_config=auth):
            if "error" in chunk:
                raise RuntimeError(chunk["error"])

    def _undo(self, made: Made, repo: str) -> None:
        for image in (made.pulled, made.commit):
            if image is not None:
                self._remove(image, force=True)  # nothing runs from them yet
        for digest in made.manifests:
            try:
                self.registry.delete_manifest(repo, digest)
            except RegistryError as error:
                log.warning("%s stays in the registry until the next sweep: %s", digest, error)

    def _remove(self, image: str, force: bool = False) -> None:
        """Remove an image from the engine; one a container still uses stays (the sweep at
        the next start of the service tries again)."""
        try:
            self.engine.images.remove(image, force=force)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as error:
            log.warning("the engine keeps %s: %s", image, explained(error))

    def to_run(self, image: core.Image) -> str:
        """`<repository>@<digest>` of a snapshot, pulled first where the engine lacks it;
        `core.OptionsError` when the registry's copy is missing or changed."""
        if image.digest is None:
            raise core.OptionsError("image", f"{image.name} has no recorded digest")
        target = self.target(image.name)
        reference = f"{target}@{image.digest}"
        try:
            self.engine.images.get(reference)
            return reference
        except docker.errors.ImageNotFound:
            pass
        try:
            self.registry.wait(READY_S)
        except RegistryError as error:
            raise core.OptionsError(
                "image", f"{image.name} cannot be fetched now: {error}"
            ) from None
        try:
            self._pull(target, image.digest)
            self.engine.images.get(reference)
        except (docker.errors.DockerException, RuntimeError) as error:
            message = (
                f"{image.name} is not started: the registry's copy of {image.digest} is "
                f"missing or does not match it ({explained(error)}); its owner saves the "
                "instance again or deletes the image"
            )
            raise core.OptionsError("image", message) from None
        return reference

    def delete(self, image: core.Image) -> None:
        """The engine's copy (kept while containers use it: they run on) and the manifest."""
        if image.digest is None:
            return
        self._remove(f"{self.target(image.name)}@{image.digest}")
        try:
            self.registry.delete_manifest(self.repository(image.name), image.digest)
        except RegistryError as error:
            log.warning("%s stays in the registry until the next sweep: %s", image.name, error)

    def sweep(self, known: set[str]) -> None:
        """Remove the engine's snapshot images of this hub and the registry's snapshot
        manifests whose digest the catalog does not know (`known`)."""
        labels = [f"{containers.LABEL_HUB}={self.hub}", LABEL_SNAPSHOT]
        for found in self.engine.api.images(filters={"label": labels}):
            digests = {ref.rpartition("@")[2] for ref in found.get("RepoDigests") or []}
            if not digests & known:
                self._remove(found["Id"])
        prefix = f"{namespace(self.registry.path)}/"
        try:
            self.registry.wait(SWEEP_READY_S)
            for repo in self.registry.repositories():
                if repo.startswith(prefix):
                    for tag in self.registry.tags(repo):
                        digest = self.registry.digest(repo, tag)
                        if digest is not None and digest not in known:
                            self.registry.delete_manifest(repo, digest)
        except RegistryError as error:
            log.warning("saved images were not swept from the registry: %s", error)


def explained(error: Exception) -> str:
    """The engine's own words where it gave them."""
    return getattr(error, "explanation", None) or str(error)
