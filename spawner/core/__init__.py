"""The backend-neutral core: catalog words, option validation, volume rules, the instance
plan, snapshots, refusals and audit actions.

Everything here is pure: values in, values (or an `OptionsError`) out, no I/O and no
JupyterHub import. Backends realise an `InstancePlan`; the hub's API and form call the same
validation. The names are re-exported here: `from atelier.spawner import core; core.Image`.
"""

from atelier.spawner.core import audit
from atelier.spawner.core.catalog import (
    FLAVORS,
    IMAGE_NAME,
    IMAGE_NAME_FORMAT,
    IMAGE_STATUSES,
    IMAGE_VISIBILITIES,
    SPEC_NAME,
    SPEC_NAME_FORMAT,
    WORKSPACE_NAME,
    Catalog,
    Image,
    Spec,
    image_json,
    spec_fits_image,
    spec_json,
    validate_image_name,
    validate_spec_name,
)
from atelier.spawner.core.deployments import DeploymentPlan, plan_deployment
from atelier.spawner.core.errors import (
    OptionsError,
)
from atelier.spawner.core.instances import (
    DELETE_VOLUME,
    INSTANCE_NAME,
    MAX_AUTOSTOP_HOURS,
    OPTION_FIELDS,
    STATUSES,
    TRANSIENT,
    InstanceOptions,
    InstancePlan,
    autostop_at,
    check_change,
    check_instance_count,
    choose,
    instance_status,
    parse_autostop,
    parse_options,
    parse_tags,
    plan_instance,
    validate_instance_name,
    whole_number,
)
from atelier.spawner.core.jobs import JobPlan, check_job_count, plan_job
from atelier.spawner.core.limits import (
    Limits,
)
from atelier.spawner.core.snapshots import (
    OPERATION_STATUSES,
    SNAPSHOT_FIELDS,
    SNAPSHOT_NAME,
    SnapshotPlan,
    check_snapshot_size,
    plan_snapshot,
    snapshot_name,
)
from atelier.spawner.core.volumes import (
    VolumeUnavailable,
    check_expand,
    check_volume_quota,
    check_volume_size,
)

__all__ = [
    "audit",
    "OptionsError",
    "Limits",
    "IMAGE_NAME",
    "IMAGE_NAME_FORMAT",
    "SPEC_NAME",
    "SPEC_NAME_FORMAT",
    "FLAVORS",
    "IMAGE_STATUSES",
    "IMAGE_VISIBILITIES",
    "WORKSPACE_NAME",
    "Image",
    "Spec",
    "image_json",
    "spec_json",
    "validate_image_name",
    "validate_spec_name",
    "spec_fits_image",
    "Catalog",
    "check_volume_size",
    "check_volume_quota",
    "check_expand",
    "VolumeUnavailable",
    "INSTANCE_NAME",
    "OPTION_FIELDS",
    "DELETE_VOLUME",
    "MAX_AUTOSTOP_HOURS",
    "STATUSES",
    "TRANSIENT",
    "InstanceOptions",
    "InstancePlan",
    "validate_instance_name",
    "check_instance_count",
    "parse_tags",
    "parse_autostop",
    "parse_options",
    "whole_number",
    "choose",
    "instance_status",
    "check_change",
    "plan_instance",
    "autostop_at",
    "OPERATION_STATUSES",
    "SNAPSHOT_FIELDS",
    "SNAPSHOT_NAME",
    "SnapshotPlan",
    "check_snapshot_size",
    "plan_snapshot",
    "snapshot_name",
    "DeploymentPlan",
    "plan_deployment",
    "JobPlan",
    "check_job_count",
    "plan_job",
]
