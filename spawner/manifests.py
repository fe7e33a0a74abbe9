"""Pure builders that turn a volume plan into what the Kubernetes backend sends.

No I/O: values in, plain dicts out (as kubespawner's `objects.py`). The local and Docker
backends' realisation is `atelier.spawner.local.volumes` (Docker mounts the same XFS volume);
these give Kubernetes a PersistentVolumeClaim on an expandable StorageClass, grown by
patching its request.
"""

from __future__ import annotations

import hashlib
import re

WORK_PATH = "/home/jovyan/work"  # where container images mount the work volume


def volume_name(owner: str, instance: str) -> str:
    """A DNS-1123 name for an instance's volume, stable and unique per (owner, instance)."""
    slug = re.sub(r"[^a-z0-9-]", "-", f"{owner}-{instance}".lower()).strip("-")[:40]
    digest = hashlib.sha256(f"{owner}\0{instance}".encode()).hexdigest()[:8]
    return f"atelier-work-{slug}-{digest}"


def labels(owner: str, instance: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "atelier",
        "app.kubernetes.io/component": "work-volume",
        "atelier.io/owner-hash": hashlib.sha256(owner.encode()).hexdigest()[:16],
        "atelier.io/instance": re.sub(r"[^a-z0-9-]", "-", instance)[:63],
    }


def pvc(owner: str, instance: str, size_gb: int, namespace: str, storage_class: str) -> dict:
    """The PersistentVolumeClaim of an instance's work volume."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": volume_name(owner, instance),
            "namespace": namespace,
            "labels": labels(owner, instance),
            "annotations": {"atelier.io/owner": owner, "atelier.io/instance": instance},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": f"{size_gb}Gi"}},
        },
    }


def pvc_resize_patch(size_gb: int) -> dict:
    """The patch that grows a claim (its StorageClass must allow volume expansion)."""
    return {"spec": {"resources": {"requests": {"storage": f"{size_gb}Gi"}}}}


def pod_volume(owner: str, instance: str) -> tuple[dict, dict]:
    """The pod's volume and the container's mount of the claim."""
    name = volume_name(owner, instance)
    return (
        {"name": "work", "persistentVolumeClaim": {"claimName": name}},
        {"name": "work", "mountPath": WORK_PATH},
    )
