"""The Docker and Kubernetes volume plans, validated against the Kubernetes schemas offline."""

import pytest
from kubernetes_validate import validate

from atelier.spawner.manifests import (
    pod_volume,
    pvc,
    pvc_resize_patch,
    volume_name,
)

KUBERNETES = "1.33.0"


@pytest.mark.parametrize(
    "owner, instance",
    [("alice", "lab"), ("Alice.Smith@example.org", "x" * 64), ("a", "b"), ("ünïcode", "exp-1")],
)
def test_volume_names_are_valid_unique_kubernetes_names(owner, instance):
    name = volume_name(owner, instance)
    assert len(name) <= 63 and name == name.lower()
    claim = pvc(owner, instance, 5, "atelier", "expandable")
    validate(claim, KUBERNETES, strict=True)
    assert volume_name(owner, instance + "2") != name


def test_pvc_is_the_plan_and_grows_by_patch():
    claim = pvc("alice", "lab", 5, "atelier", "expandable")
    assert claim == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": volume_name("alice", "lab"),
            "namespace": "atelier",
            "labels": {
                "app.kubernetes.io/name": "atelier",
                "app.kubernetes.io/component": "work-volume",
                "atelier.io/owner-hash": claim["metadata"]["labels"]["atelier.io/owner-hash"],
                "atelier.io/instance": "lab",
            },
            "annotations": {"atelier.io/owner": "alice", "atelier.io/instance": "lab"},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "expandable",
            "resources": {"requests": {"storage": "5Gi"}},
        },
    }
    grown = {**claim, "spec": {**claim["spec"], **pvc_resize_patch(15)["spec"]}}
    validate(grown, KUBERNETES, strict=True)
    assert grown["spec"]["resources"]["requests"]["storage"] == "15Gi"


def test_pod_mounts_the_claim_at_work():
    volume, mount = pod_volume("alice", "lab")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "jupyter-alice-lab"},
        "spec": {
            "containers": [
                {"name": "notebook", "image": "atelier/python:3.11", "volumeMounts": [mount]}
            ],
            "volumes": [volume],
        },
    }
    validate(pod, KUBERNETES, strict=True)
    assert volume["persistentVolumeClaim"]["claimName"] == volume_name("alice", "lab")
