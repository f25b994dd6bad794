"""What hosted·ai's own admin client sends and reads (../shared/spec/compatibility.md), one test per point.

Each test sends the client's exact request and checks the field the client reads.
"""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from api_helpers import ADMIN, GPU_A, GPU_B, add_node, assert_error, gpu, gpu_report, set_status
from gpuaas_api.credentials import hash_token
from gpuaas_api.db import session
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.models import ApiToken, Cluster, Node, Pool, User
from gpuaas_api.states import ClusterStatus, NodeStatus


@pytest.mark.parametrize("path", ["/gpuaas/node/4242", "/api/regions/4242", "/gpuaas/4242", "/gpuaas/pool/4242",
                                  "/api/jobs/4242", "/gpuaas/node/scan_gpus/status?scan_id=4242",
                                  "/gpuaas/no/such/route", "/gpuaas/node/99999999999999999999999"])
def test_a_404_says_not_found(client, path):
    # The client confirms a delete by the next GET failing with "not found" in its message.
    assert "not found" in assert_error(client.get(path), 404)["message"].lower()


@pytest.mark.parametrize("path", ["/gpuaas/node/18446744073709551616", "/gpuaas/pool/9223372036854775808/gpus",
                                  "/api/jobs/340282366920938463463374607431768211456"])
def test_ids_beyond_64_bits_name_nothing(client, path):
    assert_error(client.get(path), 404)
    assert_error(client.get("/gpuaas/node/init?gpuaas_node_id=9223372036854775808"), 422, field="gpuaas_node_id")


def test_a_405_carries_allow(client):
    response = client.post("/gpuaas/node/list")
    assert response.status_code == 405 and set(response.headers["Allow"].split(", ")) >= {"GET"}
    assert response.get_json()["code"] == 405


def test_scan_status_by_the_numeric_id_the_client_passes(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    started = client.get(f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(started["job_id"], "successful", 0, "", gpu_report(gpu(0, GPU_A), gpu(1, GPU_B)))

    by_id = client.get(f"/gpuaas/node/scan_gpus/status?scan_id={started['id']}").get_json()
    by_request_id = client.get(f"/gpuaas/node/scan_gpus/status?scan_id={started['request_id']}").get_json()
    assert by_id == by_request_id and by_id["status"] == "completed"
    # The client reads the node's GPUs from the scan_gpus reply itself.
    assert by_id["gpus"] == [{"index": 0, "name": "NVIDIA L40S", "memory": 46068, "uuid": GPU_A},
                             {"index": 1, "name": "NVIDIA L40S", "memory": 46068, "uuid": GPU_B}]
    again = client.get(f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}").get_json()
    assert [entry["uuid"] for entry in again["gpus"]] == [GPU_A, GPU_B] and again["status"] == "processing"


def test_the_clients_node_names_register(client, region):
    for name in ("Acme Corp.gpu-node-01.dc1.example.com", "ACME-10.0.0.7", "10.0.0.7"):
        node = client.post("/gpuaas/node/add", json={"name": name, "region_id": region["id"], "node_ip": "198.18.0.9",
                                                     "username": "ubuntu", "is_worker_node": True})
        assert node.status_code == 201, node.get_json()
        assert node.get_json()["name"] == name


def enabled_cluster(app, client, region, name="ctrl", **roles):
    controller = add_node(client, region, name=name, **roles)
    set_status(app, controller["id"], NodeStatus.INITIALIZED)
    enabled = client.post(f"/gpuaas/enable?controller_node_id={controller['id']}").get_json()
    assert enabled["success"] is True, enabled
    with app.app_context():
        finalize(enabled["job_id"], "successful", 0, "", {"gpuaas_cluster": {"api_server_port": 6443}})
    return controller, enabled["gpuaas_id"]


def test_enable_makes_the_picked_node_the_controller(app, client, region):
    # The client's form defaults to worker-only: the node it picks carries no controller flag.
    controller, gpuaas_id = enabled_cluster(app, client, region)
    shown = client.get(f"/gpuaas/node/{controller['id']}").get_json()
    assert shown["role"]["is_controller_node"] is True and shown["gpuaas_id"] == gpuaas_id
    assert client.get(f"/gpuaas/{gpuaas_id}").get_json()["controller_node_id"] == controller["id"]

    # A member of another cluster is not taken over.
    other_region = client.post("/api/regions", json={"region_name": "us-2"}).get_json()
    with app.app_context():
        session().get(Node, controller["id"]).region_id = other_region["id"]
        session().commit()
    member = add_node(client, other_region, name="w9")
    with app.app_context():
        node = session().get(Node, member["id"])
        node.status, node.cluster_id, node.joined = NodeStatus.INITIALIZED, gpuaas_id, True
        session().commit()
    refused = client.post(f"/gpuaas/enable?controller_node_id={member['id']}")
    assert "member of GPUaaS cluster" in assert_error(refused, 409, field="controller_node_id")["message"]


def test_region_status_gpuaas_follows_its_cluster(app, client, region):
    assert client.get(f"/api/regions/{region['id']}").get_json()["status"]["gpuaas"] == "none"
    controller, gpuaas_id = enabled_cluster(app, client, region)
    assert client.get(f"/api/regions/{region['id']}").get_json()["status"]["gpuaas"] == "enabled"
    assert client.get(f"/gpuaas/node/{controller['id']}").get_json()["region"]["status"]["gpuaas"] == "enabled"
    assert client.get("/api/regions").get_json()[0]["status"]["gpuaas"] == "enabled"


def test_a_former_controller_is_deleted_and_its_torn_down_cluster_and_region_go(app, client, region):
    controller, gpuaas_id = enabled_cluster(app, client, region)
    deinit = client.get(f"/gpuaas/node/deinit?gpuaas_node_id={controller['id']}").get_json()
    with app.app_context():
        finalize(deinit["job_id"], "successful", 0, "", {})
    assert client.get(f"/api/regions/{region['id']}").get_json()["status"]["gpuaas"] == "disabled"

    # The client's delete: GET .../delete, confirmed by the next GET's "not found".
    deleted = client.get(f"/gpuaas/node/{controller['id']}/delete")
    assert deleted.status_code == 200, deleted.get_json()
    assert "not found" in assert_error(client.get(f"/gpuaas/node/{controller['id']}"), 404)["message"]
    assert client.get(f"/gpuaas/{gpuaas_id}").get_json()["controller_node_id"] is None

    assert client.delete(f"/gpuaas/{gpuaas_id}").get_json()["success"] is True
    assert "not found" in assert_error(client.get(f"/gpuaas/{gpuaas_id}"), 404)["message"]
    assert client.delete(f"/api/regions/{region['id']}").status_code == 204
    assert "not found" in assert_error(client.get(f"/api/regions/{region['id']}"), 404)["message"]


def test_a_region_whose_cluster_was_torn_down_by_its_controller_can_be_deleted(app, client, region):
    controller, gpuaas_id = enabled_cluster(app, client, region)
    with app.app_context():
        session().add(Pool(cluster_id=gpuaas_id, pool_name="left", sharing_ratio=2, time_quantum_in_sec=30,
                           security_level="low"))
        session().commit()
    assert_error(client.delete(f"/api/regions/{region['id']}"), 409)  # a node and a live cluster
    deinit = client.get(f"/gpuaas/node/deinit?gpuaas_node_id={controller['id']}").get_json()
    with app.app_context():
        finalize(deinit["job_id"], "successful", 0, "", {})
    client.get(f"/gpuaas/node/{controller['id']}/delete")

    assert client.delete(f"/api/regions/{region['id']}").status_code == 204
    with app.app_context():
        assert session().scalar(select(func.count(Cluster.id))) == 0
        assert session().scalar(select(func.count(Pool.id))) == 0


def test_the_cluster_list_shows_a_regions_live_cluster_before_a_torn_down_one(app, client, region):
    with app.app_context():
        session().add_all([Cluster(region_id=region["id"], status=ClusterStatus.INACTIVE),
                           Cluster(region_id=region["id"], status=ClusterStatus.ACTIVE)])
        session().commit()
    assert [cluster["status"] for cluster in client.get("/gpuaas").get_json()] == ["GPUAAS_ACTIVE", "GPUAAS_INACTIVE"]


def test_a_cluster_being_enabled_is_not_torn_down(app, client, region):
    controller = add_node(client, region, name="ctrl")
    set_status(app, controller["id"], NodeStatus.INITIALIZED)
    gpuaas_id = client.post(f"/gpuaas/enable?controller_node_id={controller['id']}").get_json()["gpuaas_id"]
    assert "being enabled" in assert_error(client.delete(f"/gpuaas/{gpuaas_id}"), 409)["message"]


def test_the_clusters_gpus_compare_in_lower_case(app, client, fleet_db):
    items = client.get(f"/gpuaas/{fleet_db['gpuaas_id']}/gpus").get_json()["items"]
    assert [item["uuid"] for item in items] == fleet_db["uuids"]["w1"] + fleet_db["uuids"]["w2"]
    assert {item["assignment_status"] for item in items} == {"unassigned"}  # compared exactly, not lower-cased
    assert {item["gpuaas_node_id"] for item in items} == {1, 2}
    assert_error(client.get("/gpuaas/4242/gpus"), 404)


def test_a_pool_label_is_the_name_unless_given(client, fleet_db):
    body = {"pool_name": "h100-pool", "pool_label": "H100 (shared x4)", "sharing_ratio": 4, "security_level": "low",
            "attach_gpu_ids": []}
    pool = client.post("/gpuaas/pool/create", json={"gpuaas_id": fleet_db["gpuaas_id"], "pool": body}).get_json()
    assert pool["pool_label"] == "H100 (shared x4)"
    renamed = client.put(f"/gpuaas/pool/{pool['id']}", json={"name": "h100"}).get_json()
    assert (renamed["pool_name"], renamed["pool_label"]) == ("h100", "H100 (shared x4)")
    items = client.get(f"/gpuaas/{fleet_db['gpuaas_id']}/pool/list").get_json()["items"]
    assert [item["pool_label"] for item in items] == ["H100 (shared x4)"]


def test_expired_tokens_are_pruned_when_a_token_is_issued(app, client, anonymous):
    with app.app_context():
        user = session().scalar(select(User))
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
        session().add_all([ApiToken(user_id=user.id, token_hash=hash_token(f"old-{n}"), expires_at=past)
                           for n in range(3)])
        session().add(ApiToken(user_id=user.id, token_hash=hash_token("forever"), expires_at=None))
        session().commit()
        before = session().scalar(select(func.count(ApiToken.id)))
    assert anonymous.post("/api/login", json=ADMIN).status_code == 200  # issues a token, and prunes
    with app.app_context():
        hashes = set(session().scalars(select(ApiToken.token_hash)))
    assert not {hash_token(f"old-{n}") for n in range(3)} & hashes
    assert hash_token("forever") in hashes and len(hashes) == before - 3 + 1
