"""The Atelier service: a hub-managed process serving the REST API v1 (routes.py, people.py),
its OpenAPI document (openapi.py) and the SSH page, on the handlers of base.py; and, on the
same loop, the training and deployment supervisors and the deployments' router."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import uvloop
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from tornado import web

from atelier.hub.context import Context
from atelier.hub.router import server as router
from atelier.hub.service import catalog, deployments, jobs, snapshots
from atelier.hub.service.base import (
    AUTH_CACHE_SECONDS,
    READ_LIMIT_BYTES,
    SERVICE,
    NotFoundHandler,
    Recent,
)
from atelier.hub.service.hubclient import HubClient
from atelier.hub.service.openapi import OpenAPIHandler
from atelier.hub.service.people import (
    KeyPairHandler,
    KeyPairsHandler,
    SSHPage,
    WorkspaceHandler,
    WorkspacesHandler,
)
from atelier.hub.service.routes import NAME, ROUTES
from atelier.hub.service.serving import Serving
from atelier.hub.service.training import Training
from atelier.hub.settings import settings_from_environment


def all_routes() -> list[tuple[str, type]]:
    """Every route of the API: these and the people routes (workspaces, key pairs)."""
    return [
        *ROUTES,
        *catalog.ROUTES,
        *snapshots.ROUTES,
        *jobs.ROUTES,
        *deployments.ROUTES,
        ("/workspaces", WorkspacesHandler),
        (f"/workspaces/{NAME}", WorkspaceHandler),
        ("/keypairs", KeyPairsHandler),
        (f"/keypairs/{NAME}", KeyPairHandler),
    ]


def make_app(
    context: Context,
    hub: HubClient,
    saves: snapshots.Saves,
    training: Training,
    serving: Serving,
) -> web.Application:
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE}/").rstrip("/")
    handlers = [(prefix + "/api/v1" + path, handler) for path, handler in all_routes()]
    handlers += [
        (prefix + "/api/v1/openapi.json", OpenAPIHandler),
        (prefix + "/oauth_callback", HubOAuthCallbackHandler),
        (prefix + "/ssh", SSHPage),
        (r".*", NotFoundHandler),
    ]
    return web.Application(
        handlers,
        context=context,
        hub=hub,
        saves=saves,
        training=training,
        serving=serving,
        prefix=prefix,
        recent=Recent(1.0),
        cookie_secret=os.urandom(32),
    )


def main() -> None:
    async def serve():
        context = Context.from_settings(settings_from_environment())
        hub = HubClient(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
        url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
        HubOAuth.instance(cache_max_age=AUTH_CACHE_SECONDS)  # JupyterHub's default: 5 minutes
        saves = snapshots.Saves(context)
        await asyncio.to_thread(saves.recover)
        training = Training(context)
        serving = Serving(context)
        app = make_app(context, hub, saves, training, serving)
        app.listen(url.port, url.hostname, max_body_size=READ_LIMIT_BYTES)
        supervisors = [  # noqa: F841 - they run for good
            asyncio.ensure_future(training.supervise()),
            asyncio.ensure_future(serving.supervise()),
            asyncio.ensure_future(router.serve(context.settings.router_port, context.store)),
        ]
        gc.freeze()  # start-up's objects live as long as the service: keep them out of GC scans
        retention = timedelta(days=context.settings.audit_retention_days)
        while True:
            context.store.expire_audit(datetime.now(UTC) - retention)
            await asyncio.to_thread(training.expire_logs)
            await asyncio.sleep(3600)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C on `atelier run`: stop quietly
        uvloop.run(serve())  # less CPU a request, the router's above all
