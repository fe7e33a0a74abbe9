"""atelier.yaml -> JupyterHub configuration (what config/jupyterhub_config.py applies)."""

from __future__ import annotations

import os
import shutil
import sys
from importlib.metadata import entry_points
from pathlib import Path

from atelier.hub.app.auth import audit_oauth_login, audited
from atelier.hub.service.base import ACCESS_SCOPE, API_PREFIX, SCOPES, SERVICE, USER_SCOPES
from atelier.hub.settings import PROJECT_ROOT, ConfigError, Settings, settings_from_environment
from atelier.hub.web.pages import TEMPLATES, render_options_form
from atelier.spawner.backend import Backend, load_backend

PROXY = "configurable-http-proxy"


def proxy_command() -> str:
    """The project's own proxy (never one from the working directory, which the root hub
    might share with users), else the system's."""
    local = PROJECT_ROOT / "node_modules" / ".bin" / PROXY
    if local.exists():
        return str(local)
    found = shutil.which(PROXY)
    if found is None:
        raise ConfigError(f"{PROXY} not found: run `npm install` in the project (make does)")
    return found


def prepare_data_dir(settings: Settings, backend: Backend | None = None) -> Path:
    """The hub's private state (0700, and whatever the hub writes from now on is private:
    umask 077), and what the backend needs beside it (the local backend: the shared dir
    that instance accounts reach)."""
    os.umask(0o077)
    try:
        (backend or load_backend(settings, None)).prepare()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    data_dir = settings.data_dir.absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    return data_dir


def configure(c, settings: Settings | None = None) -> None:
    settings = settings or settings_from_environment()
    backend = load_backend(settings, None)
    data_dir = prepare_data_dir(settings, backend)

    c.JupyterHub.ip = settings.ip
    c.JupyterHub.port = settings.port
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = settings.hub_port
    c.JupyterHub.db_url = f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(data_dir / "jupyterhub.pid")
    c.ConfigurableHTTPProxy.command = [proxy_command()]
    c.ConfigurableHTTPProxy.pid_file = str(data_dir / "proxy.pid")
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port}"
    # instances outlive the hub (a restart picks them up) unless the operator asks otherwise
    c.JupyterHub.cleanup_servers = os.environ.get("ATELIER_STOP_INSTANCES_ON_EXIT") == "1"
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = settings.limits.instances_per_user
    c.JupyterHub.default_url = "/hub/home"
    c.JupyterHub.template_paths = [str(TEMPLATES)]

    configure_sign_in(c, settings)

    backend.configure_hub(c, data_dir)
    c.Spawner.options_form = render_options_form
    c.Spawner.default_url = "/lab"
    interval = str(settings.culling.activity_interval_seconds)
    service_url = f"http://127.0.0.1:{settings.service_port}"
    c.Spawner.environment = {
        "JUPYTERHUB_ACTIVITY_INTERVAL": interval,
        "ATELIER_BUSY_CHECK_SECONDS": interval,
        "ATELIER_API_URL": f"{service_url}{API_PREFIX}",
        "ATELIER_HUB_URL": settings.local_url,  # deployments' URLs (atelier.sdk's predict)
    }
    # the instance's own token reaches the Atelier API (the SDK inside notebooks)
    c.Spawner.server_token_scopes = [
        "users:activity!user",
        "access:servers!server",
        ACCESS_SCOPE,
        *USER_SCOPES,
    ]

    # /deployments/ on the hub's address: the Atelier service's router (app keys, no sign-in)
    c.Proxy.extra_routes = {"/deployments/": f"http://127.0.0.1:{settings.router_port}"}
    c.JupyterHub.custom_scopes = {scope: {"description": text} for scope, text in SCOPES.items()}
    c.JupyterHub.services, c.JupyterHub.load_roles = services_and_roles(
        settings, data_dir, backend.environment(), backend.services(data_dir)
    )


OAUTHENTICATORS = {
    "oidc": ("generic-oauth", "GenericOAuthenticator"),
    "github": ("github", "GitHubOAuthenticator"),
    "gitlab": ("gitlab", "GitLabOAuthenticator"),
}


def configure_sign_in(c, settings: Settings) -> None:
    """Atelier's own accounts (sign-up with approval), or OAuthenticator for `auth.kind`."""
    auth = settings.auth
    c.Authenticator.admin_users = {settings.admin_user}
    if auth.kind == "native":
        c.JupyterHub.authenticator_class = "atelier.hub.app.auth.AtelierAuthenticator"
        c.AtelierAuthenticator.open_signup = False  # sign-up waits for an admin's approval
        c.AtelierAuthenticator.minimum_password_length = 8
        c.Authenticator.allow_all = True  # NativeAuthenticator lets in only approved accounts
        return
    entry_point, class_name = OAUTHENTICATORS[auth.kind]
    (oauthenticator,) = entry_points(group="jupyterhub.authenticators", name=entry_point)
    c.JupyterHub.authenticator_class = audited(oauthenticator.load())
    oauth = c[class_name]
    oauth.client_id = auth.client_id
    oauth.client_secret = auth.client_secret
    oauth.oauth_callback_url = (
        auth.callback_url or f"http://{settings.ip}:{settings.port}/hub/oauth_callback"
    )
    oauth.allow_all = not auth.allowed_groups
    oauth.allowed_groups = set(auth.allowed_groups)
    oauth.admin_groups = set(auth.admin_groups)
    oauth.manage_groups = True  # the provider's groups are JupyterHub groups: workspaces
    oauth.post_auth_hook = audit_oauth_login
    if auth.kind == "oidc":
        oauth.authorize_url = auth.authorize_url
        oauth.token_url = auth.token_url
        oauth.userdata_url = auth.userdata_url
        oauth.scope = auth.scope
        oauth.username_claim = auth.username_claim
        oauth.auth_state_groups_key = f"oauth_user.{auth.groups_claim}"
    if auth.kind == "gitlab":
        oauth.gitlab_url = auth.gitlab_url


def service(name: str, command: list[str], scopes: list[str], **more) -> tuple[dict, dict]:
    """A hub-managed service (a module run so that it ends with this hub process) and the
    role that gives it exactly `scopes`."""
    role = {"name": f"{name}-service", "services": [name], "scopes": scopes}
    # -P: nothing is imported from the working directory, which users might write to
    launcher = [sys.executable, "-P", "-m", "atelier.hub.app.managed", str(os.getpid())]
    return {"name": name, "command": [*launcher, *command], **more}, role


def services_and_roles(
    settings: Settings,
    data_dir: Path,
    backend_environment: dict[str, str],
    backend_services: list[dict],
) -> tuple[list[dict], list[dict]]:
    # the services read atelier.yaml as the hub does, with the same overrides
    environment = {
        **backend_environment,
        **{k: v for k, v in os.environ.items() if k.startswith("ATELIER_")},
        "ATELIER_DATA_DIR": str(data_dir),
    }
    pairs = [
        service(
            SERVICE,
            ["atelier.hub.service"],
            ["list:users", "read:users", "admin:servers", "admin:groups"],
            url=f"http://127.0.0.1:{settings.service_port}",
            environment=environment,
            oauth_no_confirm=True,
            # a browser session carries what the user's roles give, admin scopes included
            oauth_client_allowed_scopes=list(SCOPES),
        ),
        service(
            "autostop",
            ["atelier.hub.autostop", f"--every={settings.autostop_every_seconds}"],
            ["list:users", "read:servers", "delete:servers"],
        ),
    ]
    if settings.ssh.enabled:
        pairs.append(service("ssh-gateway", ["atelier.hub.gateway"], [], environment=environment))
    if settings.culling.idle_minutes:
        pairs.append(
            service(
                "idle-culler",
                [
                    "jupyterhub_idle_culler",
                    f"--timeout={round(settings.culling.idle_minutes * 60)}",
                    f"--cull-every={settings.culling.every_seconds}",
                ],
                ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            )
        )
    # the backend's own (a registry), with no hub scopes, first: JupyterHub starts services
    # one after the other, waiting for each with a URL, and the Atelier service's start
    # waits for them
    for extra in reversed(backend_services):
        more = {key: value for key, value in extra.items() if key not in ("name", "command")}
        pairs.insert(0, service(extra["name"], extra["command"], [], **more))
    # every user may reach the Atelier service and use its API on their own resources
    user_role = {
        "name": "user",
        "scopes": ["self", ACCESS_SCOPE, *USER_SCOPES],
    }
    return [s for s, _ in pairs], [r for _, r in pairs] + [user_role]
