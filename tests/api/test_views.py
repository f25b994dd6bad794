"""The hand-built node replies and the schema that documents them stay in step."""
from __future__ import annotations

from gpuaas_api.schemas import NodeSchema, RegionSchema


def test_node_reply_has_exactly_the_documented_fields(client, region):
    node = client.post("/gpuaas/node/add", json={"name": "w1", "region_id": region["id"], "node_ip": "198.18.0.12",
                                                 "username": "root", "is_worker_node": True}).get_json()

    documented = set(NodeSchema().fields) | {"Id"}
    assert set(node) == documented
    assert set(node["region"]) == set(RegionSchema().fields)


def test_the_list_and_the_single_reply_agree(app, client, region):
    from gpuaas_api.db import session
    from gpuaas_api.models import Gpu

    node = client.post("/gpuaas/node/add", json={"name": "w1", "region_id": region["id"], "node_ip": "198.18.0.12",
                                                 "username": "root", "is_worker_node": True}).get_json()
    with app.app_context():
        session().add(Gpu(node_id=node["id"], index=0, uuid="GPU-1", model="NVIDIA L40S", memory_in_mb=46068))
        session().commit()

    assert client.get("/gpuaas/node/list").get_json() == [client.get(f"/gpuaas/node/{node['id']}").get_json()]
    assert client.get(f"/gpuaas/node/list?region_id={region['id']}").get_json()[0]["gpus"][0]["uuid"] == "GPU-1"
