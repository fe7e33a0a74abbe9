"""The OpenAPI document states the hub's configured limits, not the defaults (no hub needed)."""

from atelier.hub.service.openapi import document
from atelier.spawner.core import Limits


def test_the_document_carries_the_configured_limits():
    limits = Limits(tags_per_instance=3, volume_max_gb=50, volume_step_max_gb=7)
    openapi = document(limits)
    schemas = openapi["components"]["schemas"]
    create = schemas["InstanceCreate"]["properties"]
    assert create["tags"]["maxProperties"] == 3
    assert schemas["InstanceChange"]["properties"]["tags"]["maxProperties"] == 3
    assert schemas["Instance"]["properties"]["tags"]["maxProperties"] == 3
    assert create["volume_gb"]["maximum"] == 50
    assert schemas["VolumeExpand"]["properties"]["add_gb"]["maximum"] == 7
    expand = openapi["paths"]["/instances/{owner}/{name}/volume/expand"]["post"]
    assert expand["summary"].startswith("Grow the work volume (1 to 7 GB a step, 50 GB at most;")


def test_the_instance_name_and_key_pair_count_follow_the_limits():
    openapi = document(Limits(instance_name_length=12, keypairs_per_user=2))
    create = openapi["components"]["schemas"]["InstanceCreate"]["properties"]
    assert create["name"]["pattern"] == "^[a-z0-9-]{1,12}$"
    assert "`limits.keypairs_per_user` (2) each" in openapi["paths"]["/keypairs"]["post"]["summary"]
