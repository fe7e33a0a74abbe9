"""The limits every door enforces, in one place: atelier.yaml's `limits` block becomes
`Limits`; the API document, the form and the checks read them from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    instances_per_user: int = 10
    tags_per_instance: int = 20
    tag_key_length: int = 36
    tag_value_length: int = 43
    instance_name_length: int = 64
    volume_default_gb: int = 5
    volume_min_gb: int = 1
    volume_max_gb: int = 4096
    volume_step_max_gb: int = 100
    volume_quota_gb: int = 200  # all of one user's volumes together
    ephemeral_storage_gb: int = 10  # each instance's disk outside work/, reset at every start
    keypairs_per_user: int = 20
    snapshot_size_gb: float = 35  # the largest image "save as image" makes (ModelArts' limit)
    snapshot_layers: int = 125  # the most layers it may have (OCI engines' practical limit)
    jobs_per_user: int = 4  # pending or running training jobs
    job_nodes: int = 8
    job_processes: int = 8  # processes (ranks) per node
    job_retries: int = 10  # restarts from a checkpoint a job may ask for
    job_time_limit_minutes: int = 7 * 24 * 60
    job_log_retention_days: int = 30  # a finished job's logs and metrics (ModelArts': 30)
    deployments_per_user: int = 4
    deployment_replicas: int = 8
    deployment_timeout_seconds: int = 600  # a request's longest run (ModelArts' default: 60)
    app_keys_per_deployment: int = 10
