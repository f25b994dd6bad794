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


def test_cached_replies_follow_every_kind_of_write(app, client, region):
    from sqlalchemy import update

    from gpuaas_api.db import session
    from gpuaas_api.models import Gpu, Node
    from gpuaas_api.states import NodeStatus

    node = client.post("/gpuaas/node/add", json={"name": "w1", "region_id": region["id"], "node_ip": "198.18.0.12",
                                                 "username": "root", "is_worker_node": True}).get_json()
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["status"] == "uninitialized"  # now cached

    with app.app_context():  # an ORM change
        session().add(Gpu(node_id=node["id"], index=0, uuid="GPU-1", model="NVIDIA L40S", memory_in_mb=46068))
        session().commit()
    assert [g["uuid"] for g in client.get(f"/gpuaas/node/{node['id']}").get_json()["gpus"]] == ["GPU-1"]

    with app.app_context():  # a bulk UPDATE statement
        session().execute(update(Node).where(Node.id == node["id"]).values(status=NodeStatus.INITIALIZED))
        session().commit()
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["status"] == "initialized"
    assert client.get("/gpuaas/node/list").get_json()[0]["status"] == "initialized"

    client.put(f"/api/regions/{region['id']}", json={"city": "Cork"})  # the region nested in every node
    assert client.get("/gpuaas/node/list").get_json()[0]["region"]["city"] == "Cork"
