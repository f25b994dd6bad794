from __future__ import annotations

from api_helpers import assert_error


def test_create_list_get_update_delete(client):
    created = client.post("/api/regions", json={"region_name": "us-east-2", "country_code": "US", "lat": 39.9})

    assert created.status_code == 201
    region = created.get_json()
    assert region["status"] == {"gpuaas": "none", "compute": "none"}
    assert client.get("/regions").get_json() == [region]  # bare array, without the /api prefix too
    assert client.get("/gpuaas/list/regions").get_json() == [region]
    assert client.get(f"/api/regions/{region['id']}").get_json()["city"] == ""

    updated = client.put(f"/api/regions/{region['id']}", json={"city": "Columbus"})
    assert updated.get_json()["city"] == "Columbus"
    assert updated.get_json()["region_name"] == "us-east-2"

    assert client.delete(f"/api/regions/{region['id']}").status_code == 204
    assert_error(client.get(f"/api/regions/{region['id']}"), 404)


def test_region_name_rules(client):
    assert_error(client.post("/api/regions", json={"region_name": "much-too-long-name"}), 422, field="region_name")
    assert_error(client.post("/api/regions", json={"region_name": "eu west"}), 422, field="region_name")
    assert_error(client.post("/api/regions", json={}), 422, field="region_name")
    assert_error(client.post("/api/regions", json={"region_name": "r1", "lat": 91}), 422, field="lat")


def test_duplicate_region_name_is_409(client, region):
    assert_error(client.post("/api/regions", json={"region_name": region["region_name"]}), 409, field="region_name")


def test_region_with_nodes_cannot_be_deleted(client, region):
    client.post("/api/gpuaas/node/add", json={"name": "w1", "region_id": region["id"], "node_ip": "198.18.0.12",
                                              "username": "root", "is_worker_node": True})

    assert_error(client.delete(f"/api/regions/{region['id']}"), 409)
    assert client.get(f"/api/regions/{region['id']}").status_code == 200
