"""The OpenAPI 3.1 document of the Atelier API, served at /services/atelier/api/v1/openapi.json."""

from __future__ import annotations

from dataclasses import asdict

from atelier.hub.keypairs import MIN_RSA_BITS
from atelier.hub.service.base import API_PREFIX, HUB_ADMIN, MAX_BODY_BYTES, SCOPES, BaseHandler
from atelier.hub.service.openapi_deployments import (
    DEPLOYMENT_OPERATIONS,
    DEPLOYMENT_RESPONSES,
    deployment_schemas,
)
from atelier.hub.service.openapi_jobs import JOB_OPERATIONS, JOB_RESPONSES, job_schemas
from atelier.hub.service.openapi_schemas import ARGUMENT, query, ref, schemas
from atelier.spawner import core

DEFAULT_LIMITS = core.Limits()  # frozen: safe to share as a default
OWNER = {"name": "owner", "in": "path", "required": True, "schema": ARGUMENT}
NAME = {"name": "name", "in": "path", "required": True, "schema": ARGUMENT}
OPERATION_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": ARGUMENT,
    "description": "the operation's id (`id` in the answer that started it)",
}
KEY_PAIR_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": ARGUMENT,
    "description": "the key pair's id (`id` in its listing), not its name",
}


AUDIT_QUERY = [
    query("user", ARGUMENT, "who acted"),
    query("resource_type", ARGUMENT, "instance, image, spec, ..."),
    query("resource", ARGUMENT, "e.g. alice/lab"),
    query("action", ARGUMENT, "e.g. createNotebook"),
    query("since", {"type": "string", "format": "date-time"}, "from this time on"),
    query("until", {"type": "string", "format": "date-time"}, "before this time"),
    query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (100)"),
    query("offset", {"type": "integer", "minimum": 0, "maximum": 10**9}, "events to skip"),
]

# (path, method): (summary, scope, parameters, request schema, status, response schema);
# a summary names a limit as {field} of core.Limits, filled in with the hub's own
OPERATIONS = {
    ("/instances", "get"): (
        "List your instances (an admin's token with admin:users: everyone's, or ?owner=)",
        "instances:read",
        [query("owner", ARGUMENT, "only this owner's")],
        None,
        200,
        "InstanceList",
    ),
    ("/instances", "post"): (
        "Create and start an instance",
        "instances:create",
        [],
        "InstanceCreate",
        201,
        "Instance",
    ),
    ("/instances/{owner}/{name}", "get"): (
        "Show an instance",
        "instances:read",
        [OWNER, NAME],
        None,
        200,
        "Instance",
    ),
    ("/instances/{owner}/{name}", "patch"): (
        "Change image (stopped only), spec (a running instance restarts), tags, auto-stop, "
        "or SSH access (at once, running or not)",
        "instances:update",
        [OWNER, NAME],
        "InstanceChange",
        200,
        "Instance",
    ),
    ("/instances/{owner}/{name}", "delete"): (
        "Stop and delete an instance and its work volume (needs ?confirm=delete-volume)",
        "instances:delete",
        [
            OWNER,
            NAME,
            {**query("confirm", {"enum": ["delete-volume"]}, "required"), "required": True},
        ],
        None,
        204,
        None,
    ),
    ("/instances/{owner}/{name}/start", "post"): (
        "Start a stopped instance with its options",
        "instances:update",
        [OWNER, NAME],
        None,
        200,
        "Instance",
    ),
    ("/instances/{owner}/{name}/stop", "post"): (
        "Stop an instance",
        "instances:update",
        [OWNER, NAME],
        None,
        200,
        "Instance",
    ),
    ("/instances/{owner}/{name}/volume/expand", "post"): (
        "Grow the work volume (1 to {volume_step_max_gb} GB a step, {volume_max_gb} GB at most; "
        "online while running)",
        "instances:update",
        [OWNER, NAME],
        "VolumeExpand",
        200,
        "Instance",
    ),
    ("/instances/{owner}/{name}/images", "post"): (
        "Save a running instance as your private image `<owner>/<name>` (save as image): "
        "answers 202 at once with the save's operation; refused with 400 `too_large` past "
        "`limits.snapshot_size_gb` ({snapshot_size_gb} GB) or `limits.snapshot_layers` "
        "({snapshot_layers}), 409 while the instance is not running, is being saved already, "
        "or the name is taken",
        "images:save",
        [OWNER, NAME],
        "SnapshotCreate",
        202,
        "Operation",
    ),
    ("/operations", "get"): (
        "Your operations (saves), newest first (an admin's token with admin:users: "
        "everyone's, or ?owner=)",
        "instances:read",
        [query("owner", ARGUMENT, "only this owner's (admins)")],
        None,
        200,
        "OperationList",
    ),
    ("/operations/{id}", "get"): (
        "Follow one operation: status, phase, percent; `reason` once failed (404: not yours)",
        "instances:read",
        [OPERATION_ID],
        None,
        200,
        "Operation",
    ),
    ("/images", "get"): ("List the image catalog", "images:read", [], None, 200, "ImageList"),
    ("/images", "post"): ("Add an image (admin)", "images:admin", [], "ImageCreate", 201, "Image"),
    ("/images/{name}", "get"): ("Show an image", "images:read", [NAME], None, 200, "Image"),
    ("/images/{name}", "patch"): (
        "Change an image: status, successor, ... (admin)",
        "images:admin",
        [NAME],
        "ImageChange",
        200,
        "Image",
    ),
    ("/images/{name}", "delete"): (
        "Delete an image (admin)",
        "images:admin",
        [NAME],
        None,
        204,
        None,
    ),
    ("/images/{owner}/{name}", "get"): (
        "Show a snapshot (a saved image; yours, or shared with your workspace)",
        "images:read",
        [OWNER, NAME],
        None,
        200,
        "Image",
    ),
    ("/images/{owner}/{name}", "patch"): (
        "Describe or share your snapshot: display_name, description, visibility (private, "
        "or shared with one of your workspaces); only an admin makes it public",
        "images:save",
        [OWNER, NAME],
        "SnapshotChange",
        200,
        "Image",
    ),
    ("/images/{owner}/{name}", "delete"): (
        "Delete your snapshot and its content (instances running from it keep running)",
        "images:save",
        [OWNER, NAME],
        None,
        204,
        None,
    ),
    ("/specs", "get"): ("List the specs", "images:read", [], None, 200, "SpecList"),
    ("/specs", "post"): ("Add a spec (admin)", "images:admin", [], "SpecCreate", 201, "Spec"),
    ("/specs/{name}", "get"): ("Show a spec", "images:read", [NAME], None, 200, "Spec"),
    ("/specs/{name}", "patch"): (
        "Change a spec (admin)",
        "images:admin",
        [NAME],
        "SpecChange",
        200,
        "Spec",
    ),
    ("/specs/{name}", "delete"): ("Delete a spec (admin)", "images:admin", [NAME], None, 204, None),
    ("/workspaces", "get"): (
        "List workspaces with members and usage (admin)",
        "workspaces:admin",
        [],
        None,
        200,
        "WorkspaceList",
    ),
    ("/workspaces", "post"): (
        "Create a workspace: a JupyterHub group plus its quota (admin)",
        "workspaces:admin",
        [],
        "WorkspaceCreate",
        201,
        "Workspace",
    ),
    ("/workspaces/{name}", "get"): (
        "Show a workspace (admin)",
        "workspaces:admin",
        [NAME],
        None,
        200,
        "Workspace",
    ),
    ("/workspaces/{name}", "patch"): (
        "Change members or quota (admin)",
        "workspaces:admin",
        [NAME],
        "WorkspaceChange",
        200,
        "Workspace",
    ),
    ("/workspaces/{name}", "delete"): (
        "Delete an empty workspace (admin)",
        "workspaces:admin",
        [NAME],
        None,
        204,
        None,
    ),
    ("/keypairs", "get"): (
        "Your SSH key pairs (an admin's token with admin:users: ?owner=)",
        "keypairs:manage",
        [query("owner", ARGUMENT, "whose (admins)")],
        None,
        200,
        "KeyPairList",
    ),
    ("/keypairs", "post"): (
        f"Register a public key (ed25519, ecdsa, RSA >= {MIN_RSA_BITS}), or generate one: the "
        "private key is in this answer only; a name once per user (409); at most "
        "`limits.keypairs_per_user` ({keypairs_per_user}) each",
        "keypairs:manage",
        [],
        "KeyPairCreate",
        201,
        "KeyPair",
    ),
    ("/keypairs/{id}", "get"): (
        "Show a key pair",
        "keypairs:manage",
        [KEY_PAIR_ID],
        None,
        200,
        "KeyPair",
    ),
    ("/keypairs/{id}", "delete"): (
        "Delete a key pair",
        "keypairs:manage",
        [KEY_PAIR_ID],
        None,
        204,
        None,
    ),
    ("/quotas", "get"): ("Your usage and limits", "instances:read", [], None, 200, "Quotas"),
    ("/audit", "get"): (
        "Audit events (yours; an admin's token with admin:users: all), newest first",
        "audit:read",
        AUDIT_QUERY,
        None,
        200,
        "AuditPage",
    ),
    **JOB_OPERATIONS,
    **DEPLOYMENT_OPERATIONS,
}
ERRORS = {
    "400": "a bad input: the message names the field and the limit",
    "401": "not signed in",
    "403": "missing the scope",
    "404": "no such resource, or not yours",
    "409": "it exists already, or is still in use",
}


def operation(summary, scope, parameters, request, status, response) -> dict:
    error = {"content": {"application/json": {"schema": ref("Error")}}}
    ok = {"description": "success"}
    if response:
        ok["content"] = {"application/json": {"schema": ref(response)}}
    op = {
        "summary": summary,
        "description": f"Needs the scope `custom:atelier:{scope}` in the token "
        + (
            f"(not in the default user role; an admin's token with JupyterHub's `{HUB_ADMIN}` "
            "has it)."
            if scope.endswith(":admin")
            else "(in every user's default role, for their own resources)."
        ),
        "parameters": parameters,
        "security": [{"token": []}],
        "responses": {
            str(status): ok,
            **{code: {"description": d, **error} for code, d in ERRORS.items()},
        },
    }
    if request:
        op["responses"]["413"] = {"description": f"a body over {MAX_BODY_BYTES} bytes", **error}
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(request)}},
        }
    return op


def document(limits: core.Limits = DEFAULT_LIMITS) -> dict:
    """The document for a hub with these limits: its bounds are the ones the hub enforces."""
    paths: dict[str, dict] = {}
    for (path, method), (summary, *spec) in OPERATIONS.items():
        paths.setdefault(path, {})[method] = operation(summary.format_map(asdict(limits)), *spec)
    for (path, method), responses in {**JOB_RESPONSES, **DEPLOYMENT_RESPONSES}.items():
        paths[path][method]["responses"].update(responses)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Atelier API",
            "version": "1",
            "description": "Instances, image catalog, specs, save as image and its "
            "operations, training jobs, deployments, quotas and audit. Scopes (every "
            "user's default role has all but the two `:admin` ones): "
            + "; ".join(f"`{s}`: {d}" for s, d in SCOPES.items()),
        },
        "servers": [{"url": API_PREFIX}],
        "paths": paths,
        "components": {
            "schemas": {**schemas(limits), **job_schemas(limits), **deployment_schemas(limits)},
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token <JupyterHub API token>`",
                }
            },
        },
    }


class OpenAPIHandler(BaseHandler):
    """The document is public: it describes the API, not anyone's data."""

    def get(self):
        self.reply(document(self.context.limits))
