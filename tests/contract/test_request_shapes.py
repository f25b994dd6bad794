"""Every string a client sends has a published shape (issue #28): an enum, or a pattern or a format plus
a maxLength, so that the OpenAPI document alone tells which values are refused.

Only the request side: path and query parameters and request bodies (nested objects and array items
included).  Reply strings carry what the service stored or made, and need no pattern.
"""
from __future__ import annotations

import pytest
from request_fields import is_string, request_fields, shape_gaps

from gpuaas_api import create_app
from gpuaas_api.config import Config


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> dict:
    data_dir = tmp_path_factory.mktemp("shapes")
    app = create_app(Config({"GPUAAS_DATA_DIR": str(data_dir), "GPUAAS_JOB_WORKERS": "0"}))
    reply = app.test_client().get("/api/openapi.json")
    assert reply.status_code == 200
    return reply.get_json()


def test_every_request_string_field_has_a_pattern_format_or_enum_and_a_max_length(document):
    strings = [field for field in request_fields(document) if is_string(field.schema)]
    assert len(strings) >= 20, f"the walk found only {len(strings)} request string fields"
    gaps = [f"{field}: no {' and no '.join(shape_gaps(field.schema))}" for field in strings if shape_gaps(field.schema)]
    print(f"\nrequest shapes: {len(strings)} string fields, {len(gaps)} without a full shape")
    assert not gaps, "request string fields without a published shape:\n" + "\n".join(gaps)


def test_the_walk_reaches_nested_objects_array_items_and_query_parameters(document):
    """The walk itself: it would pass on any document if it found no fields."""
    names = {(field.operation, field.location, field.name) for field in request_fields(document)}
    assert ("POST /api/gpuaas/pool/create", "body", ("pool", "pool_name")) in names
    assert ("POST /api/gpuaas/pool/{pool_id}/add_gpus", "body", ("gpu_uuids", "[]")) in names
    assert ("GET /api/gpuaas/node/scan_gpus/status", "query", ("scan_id",)) in names
    assert ("GET /api/regions/{region_id}", "path", ("region_id",)) in names


def test_reply_strings_need_no_pattern(document):
    """Reply schemas are not walked: a reply's free text (a job's explanation) has no pattern, and is not
    counted as a gap."""
    job = document["components"]["schemas"]["Job"]["properties"]["explanation"]
    assert job["type"] == "string" and "pattern" not in job
    assert all(field.schema is not job for field in request_fields(document))
