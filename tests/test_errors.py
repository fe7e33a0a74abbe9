"""A refusal travels as structure (code, field, message) from the core to every door."""

import pytest

from atelier.hub.service.base import APIError
from atelier.hub.service.routes import hub_error
from atelier.hub.store.store import CatalogError
from atelier.spawner import checks, core
from atelier.spawner.devices import Allocator, Device, DevicesUnavailable


def test_a_refusal_carries_its_code_field_and_message():
    error = core.OptionsError("tags.k", "value too long", "invalid")
    assert str(error) == "tags.k: value too long"  # JupyterHub's text, audit reasons
    assert error.to_json() == {"code": "invalid", "message": "value too long", "field": "tags.k"}
    assert core.OptionsError("name", "bad").code == "invalid"


def test_too_few_devices_is_a_refusal_of_the_spec():
    allocator = Allocator([Device("gpu", "a100", 0)])
    allocator.acquire("alice:a", "gpu.1xa100.8u64g", "a100", 1)
    with pytest.raises(core.OptionsError) as caught:
        allocator.acquire("bob:b", "gpu.1xa100.8u64g", "a100", 1)
    error = caught.value
    assert isinstance(error, DevicesUnavailable)
    assert (error.code, error.field) == ("unavailable", "spec")
    assert str(error) == error.message  # the message names the spec already
    assert error.message.startswith("spec gpu.1xa100.8u64g needs 1 A100 GPUs; 0 are free.")


def test_catalog_refusals_belong_to_the_same_tree():
    error = CatalogError("name", "no image named 'x'", "not_found")
    assert isinstance(error, core.OptionsError) and str(error) == "name: no image named 'x'"
    api = APIError.refusal(error, 404)
    assert (api.status_code, api.code, api.message, api.field) == (
        404,
        "not_found",
        "no image named 'x'",
        "name",
    )


def test_the_hub_refusal_keeps_jupyterhubs_text_and_the_error():
    error = core.OptionsError("add_gb", "volumes never shrink", "invalid")
    refused = checks.Refused(error)
    assert (refused.status_code, refused.message, refused.error) == (
        400,
        "add_gb: volumes never shrink",
        error,
    )


def test_the_service_reads_the_field_the_hub_answers_not_its_text():
    body = {
        "status": 400,
        "message": "image: image x is disabled",
        "code": "invalid",
        "field": "image",
        "detail": "image x is disabled",
    }
    error = hub_error(400, body)
    assert (error.status_code, error.code, error.field, error.message) == (
        400,
        "invalid",
        "image",
        "image x is disabled",
    )
    # JupyterHub's own refusals name no field, whatever their text looks like
    plain = hub_error(400, {"status": 400, "message": "name: looks like a field"})
    assert (plain.code, plain.field, plain.message) == ("invalid", None, "name: looks like a field")
    failed = hub_error(500, {"status": 500, "message": "boom"})
    assert (failed.status_code, failed.code) == (502, "hub_error")
