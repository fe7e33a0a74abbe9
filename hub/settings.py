"""atelier.yaml: the one schema for Atelier's configuration, validated at start."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from atelier.hub.ssh import check_cidrs
from atelier.spawner import core
from atelier.spawner.backend import backend_class
from atelier.spawner.devices import Device

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "atelier.yaml"
SHARED_DIR = Path("/var/lib/atelier")  # as root: apart from the clone, wherever that is


def shipped(key: str) -> Callable[[], list]:
    """One of the shipped atelier.yaml's entries: the one source of the default catalog, so
    a custom file need not repeat it."""
    return lambda: yaml.safe_load(DEFAULT_CONFIG.read_text())[key]


class ConfigError(ValueError):
    """atelier.yaml is missing, unreadable or breaks the schema."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageConfig(Strict):
    name: str
    display_name: str = ""
    description: str = ""
    status: Literal["active", "deprecated", "disabled"] = "active"
    successor: str | None = None
    accelerator_types: list[str] = []

    @field_validator("name")
    @classmethod
    def _image_name(cls, name: str) -> str:
        try:
            return core.validate_image_name(name)
        except core.OptionsError as error:
            raise ValueError(error.message) from None

    def to_image(self) -> core.Image:
        return core.Image(
            **{**self.model_dump(), "accelerator_types": tuple(self.accelerator_types)}
        )


class SpecConfig(Strict):
    name: str
    display_name: str = ""

    @field_validator("name")
    @classmethod
    def _spec_name(cls, name: str) -> str:
        try:
            return core.validate_spec_name(name)
        except core.OptionsError as error:
            raise ValueError(error.message) from None

    def to_spec(self) -> core.Spec:
        return core.Spec(self.name, self.display_name)


class LimitsConfig(Strict):
    instances_per_user: int = Field(10, ge=1, le=1000)
    tags_per_instance: int = Field(20, ge=0, le=100)
    tag_key_length: int = Field(36, ge=1, le=256)
    tag_value_length: int = Field(43, ge=0, le=256)
    volume_default_gb: int = Field(5, ge=1, le=4096)
    volume_min_gb: int = Field(1, ge=1, le=4096)
    volume_max_gb: int = Field(4096, ge=1, le=65536)
    volume_step_max_gb: int = Field(100, ge=1, le=4096)
    volume_quota_gb: int = Field(200, ge=1, le=1_000_000)
    ephemeral_storage_gb: int = Field(
        10, ge=1, le=4096, description="each instance's disk outside work/, reset at every start"
    )
    keypairs_per_user: int = Field(20, ge=1, le=1000)
    snapshot_size_gb: float = Field(
        35, gt=0, le=100_000, description="the largest image 'save as image' makes"
    )
    snapshot_layers: int = Field(125, ge=1, le=1000, description="the most layers it may have")
    jobs_per_user: int = Field(4, ge=1, le=1000, description="pending or running training jobs")
    job_nodes: int = Field(8, ge=1, le=1024)
    job_processes: int = Field(8, ge=1, le=256, description="processes (ranks) per node")
    job_retries: int = Field(10, ge=0, le=100, description="restarts a job may ask for")
    job_time_limit_minutes: int = Field(7 * 24 * 60, ge=1, le=365 * 24 * 60)
    job_log_retention_days: int = Field(
        30, ge=1, le=3650, description="how long a finished job's logs and metrics are kept"
    )
    deployments_per_user: int = Field(4, ge=1, le=1000)
    deployment_replicas: int = Field(8, ge=1, le=256, description="replicas per deployment")
    deployment_timeout_seconds: int = Field(
        600, ge=1, le=3600, description="the longest request timeout a deployment may ask for"
    )
    app_keys_per_deployment: int = Field(10, ge=1, le=1000)

    def to_limits(self) -> core.Limits:
        return core.Limits(**self.model_dump())


class CullingConfig(Strict):
    idle_minutes: float = Field(60, ge=0, description="stop instances idle this long; 0: never")
    every_seconds: int = Field(60, ge=1, le=3600)
    activity_interval_seconds: int = Field(
        60, ge=1, le=3600, description="how often instances report activity (and busy kernels)"
    )


class DeviceConfig(Strict):
    kind: Literal["gpu", "ascend"]
    type: str = Field(pattern=r"^[a-z0-9]+$")
    index: int = Field(ge=0)

    def to_device(self) -> Device:
        return Device(self.kind, self.type, self.index)


class AuthConfig(Strict):
    """How people sign in: Atelier's own accounts, or an OAuth/OIDC provider (OAuthenticator)."""

    kind: Literal["native", "oidc", "github", "gitlab"] = "native"
    client_id: str = ""
    client_secret: str = ""
    callback_url: str = Field("", description="default http://<ip>:<port>/hub/oauth_callback")
    authorize_url: str = ""
    token_url: str = ""
    userdata_url: str = ""
    gitlab_url: str = "https://gitlab.com"
    scope: list[str] = ["openid", "profile", "email"]
    username_claim: str = "preferred_username"
    groups_claim: str = Field("groups", description="claim whose groups become workspaces")
    allowed_groups: list[str] = Field([], description="empty: everyone the provider signs in")
    admin_groups: list[str] = []

    @model_validator(mode="after")
    def _complete(self):
        needed = {
            "oidc": ("client_id", "client_secret", "authorize_url", "token_url", "userdata_url"),
            "github": ("client_id", "client_secret"),
            "gitlab": ("client_id", "client_secret"),
        }.get(self.kind, ())
        missing = [key for key in needed if not getattr(self, key)]
        if missing:
            raise ValueError(f"auth kind {self.kind} needs {', '.join(missing)}")
        return self


class SSHConfig(Strict):
    enabled: bool = Field(True, description="run the SSH gateway")
    ip: str = Field("0.0.0.0", description="where the gateway listens")
    port: int = Field(2222, ge=1, le=65535)
    public_host: str = Field(
        "",
        description="host name users connect to; default: the hub's ip (localhost for 127.0.0.1)",
    )
    default_allowed_cidrs: list[str] = Field(
        [], max_length=20, description="used where an instance's allow-list is empty"
    )
    max_failed_logins: int = Field(10, ge=1, le=1000, description="per source address...")
    failed_login_window_seconds: int = Field(60, ge=1, le=86400, description="...in this window")

    @field_validator("default_allowed_cidrs")
    @classmethod
    def _networks(cls, cidrs: list[str]) -> list[str]:
        try:
            return list(check_cidrs(cidrs, "default_allowed_cidrs"))
        except core.OptionsError as error:
            raise ValueError(error.message) from None

    def host(self, hub_ip: str) -> str:
        if self.public_host:
            return self.public_host
        return "localhost" if hub_ip in ("127.0.0.1", "0.0.0.0", "") else hub_ip


class Settings(Strict):
    backend: str = Field(
        "local", description="how instances run: a registered backend (atelier.backends)"
    )
    backend_options: dict = Field(
        default_factory=dict, description="the chosen backend's own settings (its Options)"
    )
    data_dir: Path = Field(Path(".atelier"), description="the hub's private state (0700)")
    shared_dir: Path | None = Field(
        None,
        description="what instance accounts reach (image environments, instance homes, "
        "volumes, SSH sockets); default /var/lib/atelier as root, else data_dir",
    )
    envs_dir: Path | None = Field(
        None, description="local image environments; default shared_dir/envs"
    )
    database_url: str | None = Field(
        None,
        pattern=r"^(sqlite|postgresql(\+psycopg)?)://",
        description="Atelier's store; default SQLite in data_dir",
    )
    ip: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    hub_port: int = Field(8081, ge=0, le=65535)
    proxy_api_port: int = Field(8001, ge=1, le=65535)
    admin_user: str = Field("admin", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    devices: list[DeviceConfig] | None = Field(
        None, description="null: detect with nvidia-smi/npu-smi"
    )
    auth: AuthConfig = AuthConfig()
    ssh: SSHConfig = SSHConfig()
    limits: LimitsConfig = LimitsConfig()
    culling: CullingConfig = CullingConfig()
    autostop_every_seconds: int = Field(60, ge=1, le=3600)
    service_port: int = Field(8002, ge=1, le=65535, description="the Atelier service, on loopback")
    router_port: int = Field(
        8003, ge=1, le=65535, description="the deployments' router, on loopback"
    )
    audit_retention_days: int = Field(7, ge=1, le=3650)
    images: list[ImageConfig] = Field(
        default_factory=shipped("images"),
        validate_default=True,
        min_length=1,
        description="the catalog seeded at first start; default: the shipped file's",
    )
    specs: list[SpecConfig] = Field(
        default_factory=shipped("specs"),
        validate_default=True,
        min_length=1,
        description="the specs seeded at first start; default: the shipped file's",
    )

    @field_validator("backend")
    @classmethod
    def _installed(cls, name: str) -> str:
        """A registered backend that loads (its error names what is installed or wrong)."""
        backend_class(name)
        return name

    @field_validator("backend_options")
    @classmethod
    def _backend_options(cls, options: dict, info: ValidationInfo) -> dict:
        """The chosen backend's options, checked by its own model (the bad key named)."""
        if "backend" not in info.data:  # the backend itself was refused
            return options
        try:
            backend_class(info.data["backend"]).Options.model_validate(options)
        except ValidationError as error:
            item = error.errors()[0]
            key = ".".join(["backend_options", *map(str, item["loc"])])
            raise ValueError(f"{key}: {item['msg']}") from None
        return options

    @field_validator("images", "specs")
    @classmethod
    def _unique_names(cls, entries: list) -> list:
        names = [entry.name for entry in entries]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"names must be unique; repeated: {', '.join(duplicates)}")
        return entries

    def initial_catalog(self) -> tuple[list[core.Image], list[core.Spec]]:
        """The images and specs that seed the store at first start."""
        return [i.to_image() for i in self.images], [s.to_spec() for s in self.specs]

    @property
    def resolved_shared_dir(self) -> Path:
        if self.shared_dir is not None:
            return self.shared_dir.absolute()
        return SHARED_DIR if os.geteuid() == 0 else self.data_dir.absolute()

    @property
    def local_url(self) -> str:
        """The hub's address as this machine reaches it (a wildcard `ip` on loopback)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.ip, self.ip)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def resolved_envs_dir(self) -> Path:
        return (self.envs_dir or self.resolved_shared_dir / "envs").absolute()


def describe(error: ValidationError, path: Path) -> str:
    """Each mistake with its key and the value given, except what may hold a secret (a
    whole block, a password, a token, the database URL): the text reaches terminals and
    every service's log."""
    lines = [f"{path}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        value = item.get("input")
        secret = isinstance(value, dict | list) or SECRET_KEY.search(key)
        lines.append(f"  {key}: {item['msg']}" + ("" if secret else f" (got {value!r})"))
    return "\n".join(lines)


SECRET_KEY = re.compile(r"secret|password|token|database_url", re.IGNORECASE)


def load_settings(path: Path | str | None = None, **overrides) -> Settings:
    """Read and validate atelier.yaml (ATELIER_CONFIG, or the default in config/)."""
    path = Path(path or os.environ.get("ATELIER_CONFIG") or DEFAULT_CONFIG)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read configuration: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        settings = Settings.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe(error, path)) from None
    check_private(path, settings)
    return settings


def check_private(path: Path, settings: Settings) -> None:
    """A file that holds a secret must be its owner's alone: instances run as other accounts."""
    mode = path.stat().st_mode
    if settings.auth.client_secret and mode & 0o077:
        raise ConfigError(
            f"{path}: holds auth.client_secret but others may read it "
            f"(mode {mode & 0o777:o}); run `chmod 600 {path}`"
        )


def settings_from_environment() -> Settings:
    """atelier.yaml with the overrides `atelier run` passes through the environment."""
    return load_settings(
        data_dir=os.environ.get("ATELIER_DATA_DIR"),
        port=os.environ.get("ATELIER_PORT"),
        hub_port=os.environ.get("ATELIER_HUB_PORT"),
        proxy_api_port=os.environ.get("ATELIER_PROXY_API_PORT"),
    )
