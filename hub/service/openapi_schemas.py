"""The schemas of the OpenAPI document (openapi.py): the bodies the Atelier API takes and
answers with, bounded by the hub's configured limits."""

from __future__ import annotations

from atelier.hub.keypairs import KEY_NAME
from atelier.hub.ssh import MAX_CIDRS
from atelier.spawner import core
from atelier.spawner.core.snapshots import PHASES

STRING, INTEGER, NUMBER, BOOLEAN = ({"type": t} for t in ("string", "integer", "number", "boolean"))
NULLABLE_STRING = {"type": ["string", "null"]}
# a name or filter in the path or the query: never a control character (base.py)
ARGUMENT = {"type": "string", "pattern": r"^[^\x00-\x1f\x7f]*$"}


def obj(properties: dict, required: tuple = (), open_: bool = False) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": open_}
    if required:
        schema["required"] = list(required)
    return schema


def query(name: str, schema: dict, description: str) -> dict:
    """An optional query parameter."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def listing(key: str, item: str) -> dict:
    return obj({key: {"type": "array", "items": ref(item)}}, (key,))


SSH_ACCESS = {
    "enabled": BOOLEAN,
    "keypairs": {"type": "array", "items": STRING, "description": "ids of your key pairs"},
    "allowed_cidrs": {
        "type": "array",
        "items": STRING,
        "maxItems": MAX_CIDRS,
        "description": "client addresses allowed (IPv4/IPv6 CIDRs); empty: the admin's default",
    },
}
IMAGE_CHANGE = {
    "display_name": STRING,
    "description": STRING,
    "status": {"enum": ["active", "deprecated", "disabled"]},
    "successor": NULLABLE_STRING,
    "accelerator_types": {"type": "array", "items": STRING},
    "visibility": {"enum": ["public", "shared", "private"]},
    "workspace": NULLABLE_STRING,
    "owner": NULLABLE_STRING,
}


def schemas(limits: core.Limits) -> dict:
    """Every schema, with the bounds this hub enforces: clients (and the schemathesis tests)
    learn the configured limits, not the defaults."""
    tags = {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "maxProperties": limits.tags_per_instance,
    }
    options = {
        "image": STRING,
        "spec": STRING,
        "tags": tags,
        "autostop_hours": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": core.MAX_AUTOSTOP_HOURS,
        },
        "volume_gb": {
            "type": ["integer", "null"],
            "minimum": limits.volume_min_gb,
            "maximum": limits.volume_max_gb,
        },
    }
    return {
        "Error": obj(
            {
                "error": obj(
                    {"code": STRING, "message": STRING, "field": NULLABLE_STRING},
                    ("code", "message"),
                )
            },
            ("error",),
        ),
        "Instance": obj(
            {
                "owner": STRING,
                "name": STRING,
                "status": {"enum": ["creating", "running", "stopping", "stopped", "failed"]},
                "reason": NULLABLE_STRING,
                "image": NULLABLE_STRING,
                "spec": NULLABLE_STRING,
                "tags": tags,
                "autostop_hours": {"type": ["number", "null"]},
                "autostop_at": NULLABLE_STRING,
                "created": NULLABLE_STRING,
                "workspace": NULLABLE_STRING,
                "volume_gb": {"type": ["integer", "null"]},
                "volume": {"oneOf": [{"type": "null"}, ref("Volume")]},
                "ssh": {"oneOf": [{"type": "null"}, ref("SSH")]},
                "started": NULLABLE_STRING,
                "last_activity": NULLABLE_STRING,
                "url": NULLABLE_STRING,
                "saving": {
                    "oneOf": [{"type": "null"}, ref("Operation")],
                    "description": "the save of this instance in progress, if any",
                },
            }
        ),
        "InstanceCreate": obj(
            {
                "name": {
                    "type": "string",
                    "pattern": f"^[a-z0-9-]{{1,{limits.instance_name_length}}}$",
                },
                "owner": STRING,
                "workspace": STRING,
                **options,
            },
            ("name", "image", "spec"),
        ),
        "InstanceChange": obj({**options, "ssh": ref("SSHChange")}),
        "SSHChange": obj(SSH_ACCESS),
        "SSH": obj(
            {
                **SSH_ACCESS,
                "command": {
                    "type": "string",
                    "description": "ssh command line through the gateway",
                },
                "config": {"type": "string", "description": "a ~/.ssh/config block for IDEs"},
            }
        ),
        "InstanceList": listing("instances", "Instance"),
        "Image": obj(
            {
                "name": STRING,
                "display_name": STRING,
                "description": STRING,
                "flavor": {"enum": ["cpu", "gpu", "ascend"]},
                "engine": STRING,
                "engine_version": STRING,
                "accelerator_stack": STRING,
                "python": STRING,
                "os": STRING,
                "arch": {"enum": ["x86_64", "aarch64"]},
                "status": STRING,
                "successor": NULLABLE_STRING,
                "accelerator_types": {"type": "array", "items": STRING},
                "visibility": {"enum": ["public", "shared", "private"]},
                "workspace": NULLABLE_STRING,
                "owner": NULLABLE_STRING,
                "digest": NULLABLE_STRING,
                "base": {
                    "type": ["string", "null"],
                    "description": "a snapshot's: the catalog image it was saved from, at the root",
                },
            }
        ),
        "ImageCreate": obj({"name": STRING, **IMAGE_CHANGE}, ("name",)),
        "ImageChange": obj(IMAGE_CHANGE),
        "ImageList": listing("images", "Image"),
        "SnapshotCreate": obj(
            {
                "name": {
                    "type": "string",
                    "pattern": core.SNAPSHOT_NAME.pattern,
                    "description": "the image is named <owner>/<name>",
                },
                "display_name": STRING,
                "description": STRING,
            },
            ("name",),
        ),
        "SnapshotChange": obj(
            {
                "display_name": STRING,
                "description": STRING,
                "visibility": {"enum": ["private", "shared"]},
                "workspace": NULLABLE_STRING,
            }
        ),
        "Operation": obj(
            {
                "id": STRING,
                "kind": {"type": "string", "description": "the audit action: saveImage"},
                "owner": STRING,
                "resource": {"type": "string", "description": "what it acts on: alice/lab"},
                "target": {"type": "string", "description": "what it makes: alice/my-env"},
                "status": {"enum": list(core.OPERATION_STATUSES)},
                "phase": {"enum": list(PHASES)},
                "done_bytes": INTEGER,
                "total_bytes": INTEGER,
                "percent": {"type": "integer", "minimum": 0, "maximum": 100},
                "reason": NULLABLE_STRING,
                "created": {"type": "string", "format": "date-time"},
                "updated": {"type": "string", "format": "date-time"},
            }
        ),
        "OperationList": listing("operations", "Operation"),
        "Spec": obj(
            {
                "name": STRING,
                "display_name": STRING,
                "flavor": {"enum": ["cpu", "gpu", "ascend"]},
                "cpu": INTEGER,
                "memory_gb": INTEGER,
                "accelerator_type": NULLABLE_STRING,
                "accelerator_count": INTEGER,
                "disabled": BOOLEAN,
            }
        ),
        "SpecCreate": obj({"name": STRING, "display_name": STRING, "disabled": BOOLEAN}, ("name",)),
        "SpecChange": obj({"display_name": STRING, "disabled": BOOLEAN}),
        "SpecList": listing("specs", "Spec"),
        "Quotas": obj(
            {
                "user": STRING,
                "instances": obj({"used": INTEGER, "allowed": INTEGER}),
                "tags_per_instance": obj({"allowed": INTEGER}),
                "volume_gb": ref("Usage"),
                "workspaces": {"type": "object", "additionalProperties": ref("Usage")},
            }
        ),
        "Usage": obj({"used": INTEGER, "allowed": INTEGER}),
        "KeyPair": obj(
            {
                "id": STRING,
                "owner": STRING,
                "name": STRING,
                "public_key": STRING,
                "fingerprint": STRING,
                "algorithm": STRING,
                "created": STRING,
                "private_key": STRING,
            }
        ),
        "KeyPairCreate": obj(
            {
                "name": {"type": "string", "pattern": KEY_NAME.pattern},
                "public_key": STRING,
                "generate": BOOLEAN,
            },
            ("name",),
        ),
        "KeyPairList": listing("keypairs", "KeyPair"),
        "Volume": obj(
            {
                "size_gb": INTEGER,
                "used_bytes": {"type": ["integer", "null"]},
                "enforced": BOOLEAN,
                "path": STRING,
            }
        ),
        "VolumeExpand": obj(
            {"add_gb": {"type": "integer", "minimum": 1, "maximum": limits.volume_step_max_gb}},
            ("add_gb",),
        ),
        "Workspace": obj(
            {
                "name": STRING,
                "max_instances": INTEGER,
                "created": STRING,
                "members": {"type": "array", "items": STRING},
                "instances": INTEGER,
            }
        ),
        "WorkspaceCreate": obj(
            {
                "name": STRING,
                "members": {"type": "array", "items": STRING},
                "max_instances": INTEGER,
            },
            ("name",),
        ),
        "WorkspaceChange": obj(
            {"members": {"type": "array", "items": STRING}, "max_instances": INTEGER}
        ),
        "WorkspaceList": listing("workspaces", "Workspace"),
        "AuditEvent": obj(
            {
                "id": INTEGER,
                "time": STRING,
                "actor": STRING,
                "source_ip": STRING,
                "action": STRING,
                "resource_type": STRING,
                "resource": STRING,
                "owner": STRING,
                "result": {"enum": ["success", "failure"]},
                "reason": STRING,
            }
        ),
        "AuditPage": obj(
            {"total": INTEGER, "events": {"type": "array", "items": ref("AuditEvent")}}
        ),
    }
