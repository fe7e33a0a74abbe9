"""AtelierHub: JupyterHub with Atelier's checks in front of its server API and spawn page,
and the first admin account created at first run."""

from __future__ import annotations

import asyncio
import secrets
from functools import partial
from pathlib import Path

import bcrypt
from jupyterhub.app import JupyterHub
from nativeauthenticator.orm import UserInfo

from atelier.hub.app.handlers import (
    InstanceAPIHandler,
    InstanceSpawnHandler,
    VolumeExpandAPIHandler,
)
from atelier.hub.app.users import OpenNotebookHandler, UserRecordsAPIHandler
from atelier.hub.context import Context
from atelier.hub.settings import settings_from_environment
from atelier.hub.web.pages import home_view
from atelier.spawner.devices import INSTANCE_HOLDER

PASSWORD_FILE = "admin-password"


def ensure_admin_account(db, username: str, data_dir: Path) -> str | None:
    """Create the admin's sign-in on first run; returns the new password, once, or None."""
    if UserInfo.find(db, username) is not None:
        return None
    password = secrets.token_urlsafe(12)
    db.add(
        UserInfo(
            username=username,
            password=bcrypt.hashpw(password.encode(), bcrypt.gensalt()),
            is_authorized=True,
        )
    )
    db.commit()
    path = data_dir / PASSWORD_FILE
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(password + "\n")
    return password


# Atelier's doors in front of JupyterHub's own handlers of these routes
HANDLERS = [
    (r"/api/users/([^/]+)/servers/([^/]*)", InstanceAPIHandler),
    (r"/api/users/([^/]+)/servers/([^/]+)/volume/expand", VolumeExpandAPIHandler),
    (r"/spawn/([^/]+)/([^/]+)", InstanceSpawnHandler),
    (r"/api/oauth2/authorize", OpenNotebookHandler),
    (r"/api/users/([^/]+)", UserRecordsAPIHandler),
]


class AtelierHub(JupyterHub):
    name = "atelier"
    description = "Atelier: JupyterLab instances from a curated image catalog"

    def init_handlers(self):
        super().init_handlers()
        self.handlers[:0] = self.add_url_prefix(self.hub_prefix, HANDLERS)

    def init_tornado_settings(self):
        """Share one Context (store, backend, devices) with handlers, pages and spawners."""
        self.atelier = Context.from_settings(settings_from_environment())
        self.atelier.store.seed(*self.atelier.settings.initial_catalog())
        # the spawners restore the holds of the instances still running as they load
        self.atelier.store.release_device_holds(INSTANCE_HOLDER)
        self.tornado_settings["atelier"] = self.atelier
        self.template_vars["atelier"] = partial(home_view, self.atelier)
        super().init_tornado_settings()

    async def initialize(self, *args, **kwargs):
        await super().initialize(*args, **kwargs)
        context = self.atelier
        admin = context.settings.admin_user
        data_dir = context.settings.data_dir.absolute()
        url = f"http://{self.ip or '127.0.0.1'}:{self.port}{self.base_url}"
        if context.settings.auth.kind != "native":
            self.sign_in_line = (
                f"Atelier is at {url} - sign in with {context.settings.auth.kind}; "
                f"admins: {admin!r} and the groups {context.settings.auth.admin_groups}"
            )
            return
        password = ensure_admin_account(self.db, admin, data_dir)
        if password:
            self.sign_in_line = (
                f"Atelier is at {url} - sign in as {admin!r} with password {password} "
                f"(shown once; kept in {data_dir / PASSWORD_FILE}, mode 0600)"
            )
        else:
            self.sign_in_line = (
                f"Atelier is at {url} - sign in as {admin!r} "
                f"(password in {data_dir / PASSWORD_FILE})"
            )

    async def start(self):
        await super().start()
        print(self.sign_in_line, flush=True)
        await self.report_strays()

    async def report_strays(self) -> None:
        """What the backend runs for instances the store no longer knows (deleted while the
        hub was down): the operator decides, Atelier never removes what it does not know."""
        records = self.atelier.store.all_instance_records()
        known = {(owner, name) for owner, names in records.items() for name in names}
        strays = await asyncio.to_thread(self.atelier.backend.strays, known)
        if strays:
            print(
                f"Atelier: {len(strays)} running for instances it does not know (deleted?): "
                + ", ".join(strays),
                flush=True,
            )


main = AtelierHub.launch_instance
