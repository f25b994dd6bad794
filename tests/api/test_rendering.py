"""Each kind of object has one rendering (rendering.py), and its schema documents exactly that.

For every kind, the reply the service sends (by the fast path where there is one) is what its
reply schema dumps from the same data, and the schema finds nothing missing or extra.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from gpuaas_api.db import session
from gpuaas_api.models import Cluster, Gpu, Job, Scan
from gpuaas_api.rendering import render_cluster, render_gpu, render_job, render_scan
from gpuaas_api.schemas import (ClusterGpuSchema, ClusterSchema, GpuDetailsSchema, GpuSchema, JobSchema, NodeSchema,
                                OperationReplySchema, PoolChangeSchema, PoolSchema, RegionSchema, ScanSchema)
from gpuaas_api.states import ScanStatus

from api_helpers import create


def same_json(schema, reply: dict) -> None:
    """The schema dumps the reply unchanged and loads it with no error: no field missing, none extra."""
    assert schema.dump(reply) == reply
    assert schema.validate(reply) == {}


def test_a_schema_refuses_a_reply_with_a_field_it_does_not_declare(client, region):
    drifted = {**client.get(f"/api/regions/{region['id']}").get_json(), "undeclared": 1}
    assert "undeclared" in RegionSchema().validate(drifted)
    missing = {key: value for key, value in client.get(f"/api/regions/{region['id']}").get_json().items()
               if key != "city"}
    assert "city" in RegionSchema().validate(missing)


def test_nodes_single_list_and_nested_gpus_and_regions(app, client, fleet_db):
    listed = client.get("/gpuaas/node/list").get_json()
    assert listed and all(node["gpus"] for node in listed if node["name"] != "x1")
    for node in listed:
        same_json(NodeSchema(), node)
        assert client.get(f"/gpuaas/node/{node['id']}").get_json() == node  # fast list == single ORM path
    for gpu in listed[0]["gpus"]:
        same_json(GpuSchema(), gpu)


def test_regions_in_lists_single_replies_and_nodes(client, region, fleet_db):
    regions = client.get("/api/regions").get_json()
    assert regions == client.get("/gpuaas/list/regions").get_json()
    for shown in regions:
        same_json(RegionSchema(), shown)
        assert client.get(f"/api/regions/{shown['id']}").get_json() == shown
    node = client.get("/gpuaas/node/list").get_json()[0]
    assert node["region"] == client.get(f"/api/regions/{node['region_id']}").get_json()


def test_gpus_in_every_list_render_alike(app, client, fleet_db):
    gpuaas_id = fleet_db["gpuaas_id"]
    cluster_gpus = client.get(f"/gpuaas/{gpuaas_id}/gpus").get_json()["items"]
    available = client.get(f"/gpuaas/{gpuaas_id}/pool/available_gpus").get_json()["items"]
    detailed = client.get(f"/gpuaas/{gpuaas_id}/pool/all_gpus").get_json()["items"]
    on_nodes = [gpu for node in client.get("/gpuaas/node/list").get_json() if node["gpuaas_id"] == gpuaas_id
                for gpu in node["gpus"]]

    assert available == on_nodes  # the fast Core-row path and the ORM path agree
    # The cluster's list is the same but for its assignment_status in lower case (compatibility.md).
    assert cluster_gpus == [{**gpu, "assignment_status": gpu["assignment_status"].lower()} for gpu in on_nodes]
    for gpu in cluster_gpus:
        same_json(ClusterGpuSchema(), gpu)
    assert [{key: value for key, value in gpu.items() if not key.endswith("_details")} for gpu in detailed] == on_nodes
    for gpu in detailed:
        same_json(GpuDetailsSchema(), gpu)
    with app.app_context():
        orm = session().scalars(select(Gpu).order_by(Gpu.node_id, Gpu.index)).first()
        assert render_gpu(orm) == on_nodes[0]


def test_pools_clusters_jobs_and_scans(app, client, fleet_db):
    pool = create(client, fleet_db).get_json()
    same_json(PoolChangeSchema(), pool)
    queued = client.post(f"/gpuaas/pool/{pool['id']}/add_gpus", json={"gpu_uuids": ["GPU-w2-0"]}).get_json()
    same_json(PoolChangeSchema(), queued)
    assert queued["queued_behind"] == pool["job_id"]
    same_json(OperationReplySchema(), client.delete(f"/gpuaas/pool/{pool['id']}").get_json())
    listed = client.get(f"/gpuaas/{fleet_db['gpuaas_id']}/pool/list").get_json()["items"]
    same_json(PoolSchema(), listed[0])
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json() == listed[0]
    for cluster in client.get("/gpuaas").get_json():
        same_json(ClusterSchema(), cluster)
    job = client.get(f"/api/jobs/{pool['job_id']}").get_json()
    same_json(JobSchema(), job)
    with app.app_context():
        assert render_job(session().get(Job, pool["job_id"])) == job
        assert render_cluster(session().get(Cluster, fleet_db["gpuaas_id"])) == \
            client.get(f"/gpuaas/{fleet_db['gpuaas_id']}").get_json()
        scan = Scan(request_id="0b8e0c4e-4a53-4bd8-a35b-5d7a0d9d1d41", kind="gpus", node_id=1,
                    status=ScanStatus.COMPLETED, resources={"gpus": []})
        session().add(scan)
        session().commit()
        rendered = render_scan(scan, session().scalars(select(Gpu).where(Gpu.node_id == 1)).all())
    same_json(ScanSchema(), rendered)
    assert client.get(f"/gpuaas/node/scan_gpus/status?scan_id={rendered['id']}").get_json() == rendered


@pytest.mark.parametrize("path", ["/api/openapi.json"])
def test_every_route_declares_its_reply_and_the_error_shape(anonymous, path):
    spec = anonymous.get(path).get_json()
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "errors", "message"] and error["additionalProperties"] is False
    undeclared = []
    for route, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            success = {code: reply for code, reply in operation["responses"].items() if code.startswith("2")}
            if not success or any(code != "204" and "content" not in reply for code, reply in success.items()):
                undeclared.append(f"{method.upper()} {route}")
            assert "default" in operation["responses"], (method, route)
    assert undeclared == []


def test_the_main_flows_links_are_published_and_point_at_real_operations(anonymous):
    spec = anonymous.get("/api/openapi.json").get_json()
    links = spec["paths"]["/api/gpuaas/node/add"]["post"]["responses"]["201"]["links"]
    assert len(links) == 5 and "content" in spec["paths"]["/api/gpuaas/node/add"]["post"]["responses"]["201"]
    for reply in (spec["paths"]["/api/regions"]["post"]["responses"]["201"], spec["paths"]["/api/gpuaas/node/add"]
                  ["post"]["responses"]["201"]):
        for link in reply["links"].values():
            path, method = link["operationRef"].removeprefix("#/paths/").rsplit("/", 1)
            assert method in spec["paths"][path.replace("~1", "/").replace("~0", "~")], link
            assert list(link["parameters"].values()) == ["$response.body#/id"]
