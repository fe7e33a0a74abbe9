"""Catalog words: images and specs (their parts come from their names), the flavor rule,
and the catalog a backend can run."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace

from atelier.spawner.core.errors import OptionsError

IMAGE_NAME = re.compile(
    r"^(?P<engine>[a-z][a-z0-9]*)_(?P<engine_version>\d+(?:\.\d+)*)"
    r"-(?P<stack>cpu|cuda_\d+(?:\.\d+)*|cann_\d+(?:\.\d+)*(?:\.[a-z0-9]+)?)"
    r"-py_(?P<python>\d+\.\d+(?:\.\d+)?)"
    r"-(?P<os>[a-z]+)_(?P<os_version>\d+(?:\.\d+)*)"
    r"-(?P<arch>x86_64|aarch64)$"
)
IMAGE_NAME_FORMAT = "<engine>_<ver>-<cpu|cuda_X|cann_X>-py_<ver>-<os>_<ver>-<x86_64|aarch64>"
SPEC_NAME = re.compile(
    r"^(?:cpu|(?P<flavor>gpu|ascend)\.(?P<count>[1-9]\d*)x(?P<type>[a-z0-9]+))"
    r"\.(?P<cpu>[1-9]\d*)u(?P<memory>[1-9]\d*)g$"
)
SPEC_NAME_FORMAT = "cpu.<C>u<M>g, gpu.<N>x<type>.<C>u<M>g or ascend.<N>x<type>.<C>u<M>g"
FLAVORS = ("cpu", "gpu", "ascend")
IMAGE_STATUSES = ("active", "deprecated", "disabled")
IMAGE_VISIBILITIES = ("public", "shared", "private")
WORKSPACE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


@dataclass(frozen=True)
class Image:
    """A catalog image; engine, flavor, python, OS and architecture come from its name."""

    name: str
    display_name: str = ""
    description: str = ""
    status: str = "active"
    successor: str | None = None
    accelerator_types: tuple[str, ...] = ()
    visibility: str = "public"  # public | shared (with one workspace) | private (one user's)
    workspace: str | None = None
    owner: str | None = None  # of a private image
    digest: str | None = None  # what the backend built it as (an OCI image's), recorded
    base: str | None = None  # a snapshot's: the catalog image it was saved from, at the root

    @functools.cached_property
    def parts(self) -> dict[str, str]:
        """From the name, or a snapshot's base: it keeps its base's flavor, engine and arch."""
        named = self.base or self.name
        match = IMAGE_NAME.match(named)
        if match is None:
            raise OptionsError("name", f"{named!r} does not follow {IMAGE_NAME_FORMAT}")
        return match.groupdict()

    @property
    def flavor(self) -> str:
        stack = self.parts["stack"]
        return "cpu" if stack == "cpu" else "gpu" if stack.startswith("cuda") else "ascend"

    @property
    def engine(self) -> str:
        return f"{self.parts['engine']} {self.parts['engine_version']}"

    @property
    def arch(self) -> str:
        return self.parts["arch"]

    @property
    def title(self) -> str:
        return self.display_name or self.name

    def visible_to(self, user: str, workspaces: frozenset[str]) -> bool:
        """Public images; shared images to members of their workspace; private ones (and
        snapshots, wherever they are shared) to their owner."""
        if self.owner == user:
            return True
        if self.visibility == "private":
            return False
        return self.visibility == "public" or self.workspace in workspaces


@dataclass(frozen=True)
class Spec:
    """A compute spec; cores, memory and accelerators come from its name."""

    name: str
    display_name: str = ""
    disabled: bool = False

    @property
    def parts(self) -> dict[str, str | None]:
        match = SPEC_NAME.match(self.name)
        if match is None:
            raise OptionsError("name", f"{self.name!r} does not follow {SPEC_NAME_FORMAT}")
        return match.groupdict()

    @property
    def flavor(self) -> str:
        return self.parts["flavor"] or "cpu"

    @property
    def accelerator_type(self) -> str | None:
        return self.parts["type"]

    @property
    def accelerator_count(self) -> int:
        return int(self.parts["count"] or 0)

    @property
    def cpu(self) -> int:
        return int(self.parts["cpu"])

    @property
    def memory_gb(self) -> int:
        return int(self.parts["memory"])

    @property
    def title(self) -> str:
        return self.display_name or self.name


def image_json(image: Image) -> dict:
    return {
        "name": image.name,
        "display_name": image.display_name,
        "description": image.description,
        "flavor": image.flavor,
        "engine": image.parts["engine"],
        "engine_version": image.parts["engine_version"],
        "accelerator_stack": image.parts["stack"],
        "python": image.parts["python"],
        "os": f"{image.parts['os']} {image.parts['os_version']}",
        "arch": image.arch,
        "status": image.status,
        "successor": image.successor,
        "accelerator_types": list(image.accelerator_types),
        "visibility": image.visibility,
        "workspace": image.workspace,
        "owner": image.owner,
        "digest": image.digest,
        "base": image.base,
    }


def spec_json(spec: Spec) -> dict:
    return {
        "name": spec.name,
        "display_name": spec.display_name,
        "flavor": spec.flavor,
        "cpu": spec.cpu,
        "memory_gb": spec.memory_gb,
        "accelerator_type": spec.accelerator_type,
        "accelerator_count": spec.accelerator_count,
        "disabled": spec.disabled,
    }


def validate_image_name(name: str) -> str:
    Image(name).parts  # noqa: B018 - raises OptionsError when malformed
    return name


def validate_spec_name(name: str) -> str:
    Spec(name).parts  # noqa: B018 - raises OptionsError when malformed
    return name


def spec_fits_image(image: Image, spec: Spec) -> bool:
    """The flavor rule: CPU images on CPU specs, GPU and Ascend images on their own kind,
    restricted to the image's accelerator types when it names any."""
    if image.flavor != spec.flavor:
        return False
    return not image.accelerator_types or spec.accelerator_type in image.accelerator_types


@dataclass(frozen=True)
class Catalog:
    """What can be chosen: images and specs by name, and the accelerators a backend has."""

    images: dict[str, Image]
    specs: dict[str, Spec]
    accelerators: dict[str, int] = field(default_factory=dict)  # type -> how many exist
    arch: str | None = None  # the only architecture a backend runs, when it has one
    realised: frozenset[str] | None = None  # images the backend has ready; None: all

    def available_specs(self, image: Image) -> list[Spec]:
        """Specs this image may run on and this backend can ever satisfy."""
        return [
            spec
            for spec in self.specs.values()
            if not spec.disabled and spec_fits_image(image, spec) and self.can_satisfy(spec)
        ]

    def for_user(self, user: str, workspaces: frozenset[str]) -> Catalog:
        """The catalog as a user in these workspaces sees it: public images, their workspaces'
        shared images and their own private ones."""
        images = {
            name: image for name, image in self.images.items() if image.visible_to(user, workspaces)
        }
        return replace(self, images=images)

    def can_satisfy(self, spec: Spec) -> bool:
        """Whether this backend has enough accelerators for the spec at all."""
        if spec.accelerator_type is None:
            return True
        return spec.accelerator_count <= self.accelerators.get(spec.accelerator_type, 0)

    def runnable_images(self) -> list[Image]:
        """Images this backend can start, realised or not: not disabled, of its architecture,
        with at least one spec it can satisfy (what `atelier run` builds)."""
        return [
            image
            for image in self.images.values()
            if image.status != "disabled"
            and (self.arch is None or image.arch == self.arch)
            and self.available_specs(image)
        ]

    def offered_images(self) -> list[Image]:
        """Images the create form offers: active and runnable here, realised already."""
        return [
            image
            for image in self.runnable_images()
            if image.status == "active" and self.is_realised(image)
        ]

    def is_realised(self, image: Image) -> bool:
        """Ready to start here; a snapshot when its base is (its own content is checked
        against its digest as it starts)."""
        return self.realised is None or (image.base or image.name) in self.realised
