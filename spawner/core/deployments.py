"""Deployments: a model served as a real-time service (Open Inference Protocol v2) behind the
hub's address, with app keys, replicas and versions.

A deployment serves a model directory on the work volume of one of its owner's instances (or a
training job's output there) on an image and spec, as `replicas` copies of Atelier's model
server (atelier.serving). Each change of model, image or spec is a new *version*, rolled out
by rollout.py; the replica count and the request timeout change in place. Everything here is
pure: the service stores and supervises, a backend decides where each replica runs.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
from dataclasses import dataclass, field

from atelier.spawner.core.catalog import Catalog, Image, Spec
from atelier.spawner.core.errors import OptionsError
from atelier.spawner.core.instances import InstanceOptions, choose
from atelier.spawner.core.jobs import JOB_NAME, bounded, parse_environment, volume_path
from atelier.spawner.core.limits import Limits

DEPLOYMENT_FIELDS = (
    "name", "image", "spec", "volume", "model", "job", "replicas", "timeout_seconds",
    "environment",
)  # fmt: skip
CHANGEABLE = ("image", "spec", "volume", "model", "job", "replicas", "timeout_seconds")
CHANGEABLE += ("environment",)
IN_PLACE = ("replicas", "timeout_seconds")  # every other change is a new version
STORED = ("volume", "model", "replicas", "timeout_seconds", "environment")
DEPLOYMENT_STATUSES = ("deploying", "running", "upgrading", "failed", "stopped")
KEY_PREFIX = re.compile(r"^ak_[0-9a-f]{12}$")
KEY = re.compile(r"^(ak_[0-9a-f]{12})\.[A-Za-z0-9_-]{43}$")
SERVER_MODULE = "atelier.serving"
KEY_ENTROPY = 6 + 32  # the prefix's bytes, the secret's (256 bits)


@dataclass(frozen=True)
class DeploymentPlan:
    """One version of a deployment: everything a backend needs to run its replicas."""

    owner: str
    name: str
    image: Image
    spec: Spec  # what each replica gets
    volume: str  # the instance whose work volume holds the model
    model: str  # the model directory, a path on the volume
    replicas: int = 1
    timeout_seconds: int = 60  # the longest a request may take before the caller gets 504
    environment: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The version as stored and shown (the image and spec by name): `STORED`."""
        return {
            "image": self.image.name,
            "spec": self.spec.name,
            **{key: getattr(self, key) for key in STORED},
        }

    def server_argv(self, python: str, root: str) -> list[str]:
        """The replica's model server, listening on the socket it inherits (ATELIER_LISTEN_FD);
        `root` is where the backend shows the volume to it."""
        return [
            python, "-m", SERVER_MODULE, f"{root}/{self.model}", "--name", self.name,
            f"--drain-seconds={self.timeout_seconds}",
        ]  # fmt: skip


def plan_from_json(owner: str, name: str, data: dict, catalog: Catalog) -> DeploymentPlan:
    """A stored version's plan again, on what the catalog holds now."""
    image, spec = choose(InstanceOptions(data["image"], data["spec"]), catalog, data["image"])
    fields = {f.name: data[f.name] for f in dataclasses.fields(DeploymentPlan) if f.name in STORED}
    return DeploymentPlan(owner=owner, name=name, image=image, spec=spec, **fields)


@dataclass(frozen=True)
class Sources:
    """What a deployment may serve from: the owner's instances with a work volume, and the
    outputs of their completed training jobs (job name -> (volume, output path))."""

    volumes: set[str]
    job_outputs: dict[str, tuple[str, str]]


def plan_deployment(owner: str, raw: object, catalog: Catalog, sources: Sources, limits: Limits):
    """The deployment `raw` (the API's body) asks for; raises `OptionsError` naming the field."""
    if not isinstance(raw, dict):
        raise OptionsError("body", "must be a JSON object")
    unknown = sorted(set(raw) - set(DEPLOYMENT_FIELDS))
    if unknown:
        raise OptionsError(
            unknown[0], f"is not a deployment field; known: {', '.join(DEPLOYMENT_FIELDS)}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not JOB_NAME.fullmatch(name):
        raise OptionsError("name", "must be 1 to 63 of a-z, 0-9 and '-', starting with a-z or 0-9")
    return _plan(owner, name, raw, catalog, sources, limits)


def plan_change(current: DeploymentPlan, raw: object, catalog: Catalog, sources: Sources, limits):
    """The plan after the change `raw` (PATCH's body: any of `CHANGEABLE`), and whether it is a
    new version (anything but the replica count and the timeout changed)."""
    if not isinstance(raw, dict) or not raw:
        raise OptionsError("body", f"must be a JSON object of some of: {', '.join(CHANGEABLE)}")
    unknown = sorted(set(raw) - set(CHANGEABLE))
    if unknown:
        raise OptionsError(unknown[0], f"cannot be changed; changeable: {', '.join(CHANGEABLE)}")
    merged = current.to_json()
    if "job" in raw:  # a job's output replaces the model and its volume
        merged.pop("model")
        merged.pop("volume")
    merged.update(raw)  # so a job and a model given together are refused, as in a new one
    # the image it runs on may be deprecated since: it goes on running that image
    plan = _plan(current.owner, current.name, merged, catalog, sources, limits, current.image.name)
    new_version = any(
        getattr(plan, key) != getattr(current, key)
        for key in ("image", "spec", "volume", "model", "environment")
    )
    return plan, new_version


def _plan(owner, name, raw: dict, catalog: Catalog, sources: Sources, limits: Limits, current=None):
    for key in ("image", "spec"):
        if not isinstance(raw.get(key), str):
            raise OptionsError(key, "is required: a name from the catalog")
    image, spec = choose(InstanceOptions(raw["image"], raw["spec"]), catalog, current)
    if spec.accelerator_count:
        raise OptionsError("spec", "deployments run on CPU specs for now (no accelerator)")
    volume, model = model_source(raw, sources)
    return DeploymentPlan(
        owner=owner,
        name=name,
        image=image,
        spec=spec,
        volume=volume,
        model=model,
        replicas=bounded(raw, "replicas", 1, limits.deployment_replicas),
        timeout_seconds=bounded(
            raw,
            "timeout_seconds",
            min(60, limits.deployment_timeout_seconds),
            limits.deployment_timeout_seconds,
        ),  # fmt: skip
        environment=parse_environment(raw.get("environment")),
    )


def model_source(raw: dict, sources: Sources) -> tuple[str, str]:
    """(volume, model directory): a training job's output (`job`), or `model` on `volume`."""
    if ("job" in raw) == ("model" in raw):
        raise OptionsError("model", "give either model (a directory on the volume) or job")
    if "job" in raw:
        job = raw["job"]
        if not isinstance(job, str) or job not in sources.job_outputs:
            raise OptionsError("job", f"you have no completed training job named {job!r}")
        return sources.job_outputs[job]
    volume = raw.get("volume")
    if not isinstance(volume, str) or volume not in sources.volumes:
        raise OptionsError("volume", f"no instance of yours named {volume!r} has a work volume")
    return volume, volume_path(raw["model"], "model")


def check_deployment_count(count: int, limits: Limits) -> None:
    if count >= limits.deployments_per_user:
        raise OptionsError(
            "name",
            f"at most {limits.deployments_per_user} deployments per user "
            "(limits.deployments_per_user); delete one first",
            "quota_exceeded",
        )


# app keys ---------------------------------------------------------------------------------
def new_app_key(entropy: bytes) -> tuple[str, str]:
    """(prefix, key) made of KEY_ENTROPY random bytes (the caller's: the core reads no
    randomness): the prefix names the key in lists; the key is shown once, never kept."""
    if len(entropy) != KEY_ENTROPY:
        raise ValueError(f"an app key takes {KEY_ENTROPY} random bytes")
    prefix = f"ak_{entropy[:6].hex()}"
    secret = base64.urlsafe_b64encode(entropy[6:]).decode().rstrip("=")
    return prefix, f"{prefix}.{secret}"


def key_digest(key: str) -> str:
    """What the store keeps of a key: a key is 256 random bits, so one hash is enough."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(authorization: str | None) -> tuple[str, str] | None:
    """(prefix, key) of an `Authorization: Bearer <key>` header shaped as an app key."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    key = authorization[len("Bearer ") :].strip()
    match = KEY.fullmatch(key)
    return None if match is None else (match[1], key)


def key_matches(key: str, digest: str) -> bool:
    return hmac.compare_digest(key_digest(key), digest)


def check_key_count(count: int, limits: Limits) -> None:
    if count >= limits.app_keys_per_deployment:
        raise OptionsError(
            "key",
            f"at most {limits.app_keys_per_deployment} app keys per deployment "
            "(limits.app_keys_per_deployment); revoke one first",
            "quota_exceeded",
        )
