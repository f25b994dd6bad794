"""Pools at the API edge: validation, persistence, slots, GPU assignment, metrics."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from api_helpers import assert_error, create, settle
from gpuaas_api.db import session
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.jobs.queue import claim_next
from gpuaas_api.pools import start_pool_deployment
from gpuaas_api.models import Cluster, Gpu, Job, Node, Pool, PoolSlot
from gpuaas_api.states import ClusterStatus, GpuAssignment


def statuses(app) -> dict:
    with app.app_context():
        return {g.uuid: (g.assignment_status.value, g.pool_id) for g in session().scalars(select(Gpu))}


def snapshot(app):
    with app.app_context():
        db = session()
        return (db.scalars(select(Pool.id)).all(), db.scalars(select(PoolSlot.id)).all(),
                [(g.uuid, g.pool_id, g.assignment_status) for g in db.scalars(select(Gpu).order_by(Gpu.id))],
                db.scalars(select(Job.id)).all(), [(n.id, n.busy_job_id) for n in db.scalars(select(Node))])


def test_create_persists_the_pool_and_its_slots(app, client, fleet_db):
    response = create(client, fleet_db, sharing_ratio=4.0)  # an integral float is accepted

    assert response.status_code == 201
    pool = response.get_json()
    assert (pool["sharing_ratio"], pool["time_quantum_in_sec"], pool["security_level"]) == (4, 30, "medium")
    assert pool["status"] == "DEPLOYMENT_SCHEDULED"
    assert len(pool["gpus"]) == 2 * 4  # one entry per virtual slot
    assert {slot["uuid"] for slot in pool["gpus"]} == set(fleet_db["uuids"]["w1"])
    assert {slot["memory_in_mb"] for slot in pool["gpus"]} == {81559 // 4}
    assert pool["gpu_model_type"] == "NVIDIA H100 80GB HBM3"
    assert pool["pool_label"] == "high-throughput-pool"  # the name, when no label is given
    # What a tenant's Pod requests: the nodes' agents advertise the pool's slots under this name.
    assert pool["resource_name"] == f"gpuaas.hosted.ai/pool-{pool['id']}"
    listed = {key: value for key, value in pool.items() if key not in ("job_id", "queued_behind")}
    assert client.get(f"/gpuaas/{fleet_db['gpuaas_id']}/pool/list").get_json() == {"items": [listed]}
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json() == listed
    with app.app_context():
        assert session().scalar(select(PoolSlot.id).limit(1)) is not None
    available = client.get(f"/gpuaas/{fleet_db['gpuaas_id']}/pool/available_gpus").get_json()["items"]
    assert [gpu["uuid"] for gpu in available] == fleet_db["uuids"]["w2"]


@pytest.mark.parametrize("change, field, status", [
    ({"sharing_ratio": 0}, "pool.sharing_ratio", 422),
    ({"sharing_ratio": 11}, "pool.sharing_ratio", 422),
    ({"sharing_ratio": 2.5}, "pool.sharing_ratio", 422),
    ({"sharing_ratio": True}, "pool.sharing_ratio", 422),
    ({"time_quantum_in_sec": 9}, "pool.time_quantum_in_sec", 422),
    ({"time_quantum_in_sec": 121}, "pool.time_quantum_in_sec", 422),
    ({"security_level": "max"}, "pool.security_level", 422),
    ({"pool_name": None}, "pool.pool_name", 422),
    ({"attach_gpu_ids": ["GPU-nope"]}, "pool.attach_gpu_ids", 422),
    ({"attach_gpu_ids": ["GPU-x1-0"]}, "pool.attach_gpu_ids", 409),  # another cluster's GPU
])
def test_bad_input_changes_nothing(app, client, fleet_db, change, field, status):
    before = snapshot(app)
    body = {"pool_name": "p", "attach_gpu_ids": fleet_db["uuids"]["w1"], "sharing_ratio": 2,
            "time_quantum_in_sec": 30, "security_level": "low"}
    body.update(change)
    body = {key: value for key, value in body.items() if value is not None}

    response = client.post("/gpuaas/pool/create", json={"gpuaas_id": fleet_db["gpuaas_id"], "pool": body})

    assert_error(response, status, field=field)
    assert snapshot(app) == before


def test_a_gpu_belongs_to_one_pool(app, client, fleet_db):
    first = create(client, fleet_db).get_json()
    settle(app, first)
    before = snapshot(app)

    clash = create(client, fleet_db, pool_name="second")
    assert "already belongs to pool" in assert_error(clash, 409, field="pool.attach_gpu_ids")["message"]
    assert_error(client.post(f"/gpuaas/pool/{first['id']}/remove_gpus", json={"gpu_uuids": ["GPU-w2-0"]}), 409,
                 field="gpu_uuids")
    assert snapshot(app) == before


def test_add_and_remove_gpus_in_every_form(app, client, fleet_db):
    pool = create(client, fleet_db, sharing_ratio=2).get_json()
    pid = pool["id"]
    settle(app, pool)

    added = client.post(f"/gpuaas/pool/{pid}/add_gpus", json={"gpu_uuids": ["GPU-w2-0"]}).get_json()
    assert len(added["gpus"]) == 3 * 2
    assert settle(app, added)["targets"] == ["w2"]  # only the node holding the new GPU
    one = client.post("/gpuaas/pool/gpu", json={"pool_id": pid, "gpuaas_node_id": 2, "gpu_index": 1}).get_json()
    assert {slot["uuid"] for slot in one["gpus"]} == {"GPU-w1-0", "GPU-w1-1", "GPU-w2-0", "GPU-w2-1"}
    settle(app, one)
    removed = client.get(f"/gpuaas/pool/{pid}/remove_gpus?gpu_uuids=GPU-w2-0,GPU-w2-1").get_json()
    assert {slot["uuid"] for slot in removed["gpus"] if slot["assignment_status"] != "UNASSIGNING"} == set(
        fleet_db["uuids"]["w1"])
    applied = settle(app, removed)
    assert applied["targets"] == ["w2"]
    assert applied["vars"]["gpu_sharing_absent_by_host"] == {"w2": [{"uuid": "GPU-w2-0"}, {"uuid": "GPU-w2-1"}]}
    assert applied["vars"]["gpu_sharing_by_host"] == {}
    gpu_id = client.get(f"/gpuaas/pool/{pid}/gpus").get_json()["items"][0]["id"]
    left = client.delete(f"/gpuaas/pool/{pid}/gpu/{gpu_id}").get_json()
    settle(app, left)
    left = client.get(f"/gpuaas/pool/{pid}").get_json()
    assert [slot["uuid"] for slot in left["gpus"]] == ["GPU-w1-1", "GPU-w1-1"]
    all_gpus = client.get(f"/gpuaas/{fleet_db['gpuaas_id']}/pool/all_gpus").get_json()["items"]
    assert {(g["uuid"], (g["pool_details"] or {}).get("id")) for g in all_gpus} == {
        ("GPU-w1-0", None), ("GPU-w1-1", pid), ("GPU-w2-0", None), ("GPU-w2-1", None)}
    assert all_gpus[0]["node_details"] == {"id": 1, "name": "w1"}


def test_put_accepts_aliases_and_rebuilds_slots(app, client, fleet_db):
    pool = create(client, fleet_db, sharing_ratio=2).get_json()
    settle(app, pool)

    aliases = {"name": "renamed", "overcommit_ratio": 5, "security_mode": "high"}
    changed = client.put(f"/gpuaas/pool/{pool['id']}", json=aliases).get_json()

    assert (changed["pool_name"], changed["sharing_ratio"], changed["security_level"]) == ("renamed", 5, "high")
    assert len(changed["gpus"]) == 2 * 5
    applied = settle(app, changed)  # the nodes apply the new sharing
    assert {g["sharing_ratio"] for g in applied["vars"]["gpu_sharing_by_host"]["w1"]} == {5}
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "ACTIVE"
    assert_error(client.put(f"/gpuaas/pool/{pool['id']}", json={"overcommit_ratio": 11}), 422, field="sharing_ratio")


def test_add_needs_an_existing_pool_and_an_active_cluster(app, client, fleet_db):
    body = {"gpuaas_id": fleet_db["gpuaas_id"], "pool": {"pool_name": "extra", "sharing_ratio": 2,
                                                         "security_level": "low"}}
    assert_error(client.post("/gpuaas/pool/add", json=body), 409)
    create(client, fleet_db)
    assert client.post("/gpuaas/pool/add", json=body).status_code == 201
    with app.app_context():
        session().get(Cluster, fleet_db["gpuaas_id"]).status = ClusterStatus.ENABLE_SETTING_UP
        session().commit()
    assert "GPUAAS_ACTIVE" in assert_error(create(client, fleet_db, pool_name="late", attach_gpu_ids=[]), 409)["message"]


def test_delete_in_both_forms_frees_the_gpus(app, client, fleet_db):
    first = create(client, fleet_db).get_json()
    second = create(client, fleet_db, pool_name="b", attach_gpu_ids=fleet_db["uuids"]["w2"]).get_json()
    settle(app, first)
    settle(app, second)

    deleting = client.delete(f"/gpuaas/pool/{first['id']}/delete").get_json()
    assert deleting["success"] is True and "DELETING" in deleting["message"]
    assert client.get(f"/gpuaas/pool/{first['id']}").get_json()["status"] == "DELETING"
    settle(app, deleting)
    settle(app, client.delete(f"/gpuaas/pool/{second['id']}").get_json())
    assert client.get(f"/gpuaas/{fleet_db['gpuaas_id']}/pool/list").get_json() == {"items": []}
    with app.app_context():
        assert {g.assignment_status for g in session().scalars(select(Gpu))} == {GpuAssignment.UNASSIGNED}
        assert session().scalar(select(PoolSlot.id).limit(1)) is None
    assert_error(client.get(f"/gpuaas/pool/{first['id']}"), 404)


def test_a_pool_moves_through_its_statuses_as_its_nodes_apply_it(app, client, fleet_db):
    pool = create(client, fleet_db, attach_gpu_ids=["GPU-w1-0", "GPU-w2-0"]).get_json()
    assert pool["status"] == "DEPLOYMENT_SCHEDULED"
    assert statuses(app)["GPU-w1-0"] == ("ASSIGNING", pool["id"])
    with app.app_context():
        start_pool_deployment(pool["id"])
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "SETTING_UP"
    # One change at a time: the next one waits for this one, and changes nothing meanwhile.
    queued = client.post(f"/gpuaas/pool/{pool['id']}/add_gpus", json={"gpu_uuids": ["GPU-w1-1"]}).get_json()
    assert queued["queued_behind"] == pool["job_id"] and queued["status"] == "SETTING_UP"
    assert statuses(app)["GPU-w1-1"] == ("UNASSIGNED", None)

    applied = settle(app, pool)

    assert applied["targets"] == ["w1", "w2"]
    expected = {"uuid": "GPU-w1-0", "pool_id": pool["id"], "sharing_ratio": 4, "time_quantum_in_sec": 30,
                "security_level": "medium"}
    assert applied["vars"]["gpu_sharing_by_host"]["w1"] == [expected]
    # The role names the resource as the reply does; only the pool's nodes take part (no controller).
    assert applied["vars"]["gpu_sharing_resource_prefix"] == "gpuaas.hosted.ai/pool-"
    assert applied["hosts"] == applied["targets"]
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "ACTIVE"
    assert statuses(app)["GPU-w1-0"] == statuses(app)["GPU-w2-0"] == ("ASSIGNED", pool["id"])
    with app.app_context():  # the queued change's turn: applied to the pool as it is now, on w1 only
        assert claim_next() == [queued["job_id"]]
        assert session().get(Job, queued["job_id"]).extravars["targets"] == [1]
    assert statuses(app)["GPU-w1-1"] == ("ASSIGNING", pool["id"])
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "DEPLOYMENT_SCHEDULED"


def test_partial_failure_says_what_is_configured_where_and_a_retry_completes(app, client, fleet_db):
    pool = create(client, fleet_db, attach_gpu_ids=["GPU-w1-0", "GPU-w2-0"]).get_json()

    settle(app, pool, failed_nodes=("w2",))

    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "ERROR_WHILE_DEPLOYING"
    assert statuses(app)["GPU-w1-0"] == ("ASSIGNED", pool["id"])
    assert statuses(app)["GPU-w2-0"] == ("ASSIGNING", pool["id"])  # not configured there, and not lost
    retry = client.post(f"/gpuaas/pool/{pool['id']}/retry")
    assert retry.status_code == 202
    assert settle(app, retry.get_json())["targets"] == ["w2"]  # only where it did not complete
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "ACTIVE"
    assert statuses(app)["GPU-w2-0"] == ("ASSIGNED", pool["id"])
    assert_error(client.post(f"/gpuaas/pool/{pool['id']}/retry"), 409)  # nothing left to retry


def test_a_failed_delete_stays_deleting_until_a_retry_removes_the_pool(app, client, fleet_db):
    pool = create(client, fleet_db, attach_gpu_ids=["GPU-w1-0", "GPU-w2-0"]).get_json()
    settle(app, pool)

    settle(app, client.delete(f"/gpuaas/pool/{pool['id']}").get_json(), failed_nodes=("w1",))

    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "DELETING"
    assert statuses(app)["GPU-w1-0"] == ("UNASSIGNING", pool["id"]) and statuses(app)["GPU-w2-0"] == ("UNASSIGNED", None)
    settle(app, client.post(f"/gpuaas/pool/{pool['id']}/retry").get_json())
    assert_error(client.get(f"/gpuaas/pool/{pool['id']}"), 404)
    assert statuses(app)["GPU-w1-0"] == ("UNASSIGNED", None)


def test_a_change_on_a_busy_node_waits_for_it_and_takes_nothing_meanwhile(app, client, fleet_db):
    reboot_of_w1 = client.post("/gpuaas/node/reboot?node_id=1").get_json()["job_id"]
    assert reboot_of_w1

    created = create(client, fleet_db, attach_gpu_ids=["GPU-w1-0"])

    assert created.status_code == 201 and created.get_json()["queued_behind"] == reboot_of_w1
    with app.app_context():
        assert session().get(Node, 1).busy_job_id == reboot_of_w1  # the pool's job holds nothing yet
        assert claim_next() == [reboot_of_w1]  # the reboot runs first
        assert claim_next() == []  # and the pool's job cannot start before it ends
        finalize(reboot_of_w1, "successful", 0, "", {})
        assert claim_next() == [created.get_json()["job_id"]]
        assert session().get(Node, 1).busy_job_id == created.get_json()["job_id"]


def test_each_node_receives_its_whole_configuration_across_pools(app, client, fleet_db):
    first = create(client, fleet_db, attach_gpu_ids=["GPU-w1-0"], sharing_ratio=2, security_level="low").get_json()
    settle(app, first)
    second = create(client, fleet_db, pool_name="b", attach_gpu_ids=["GPU-w1-1"], sharing_ratio=1,
                    security_level="high").get_json()

    applied = settle(app, second)

    assert [(g["uuid"], g["pool_id"]) for g in applied["vars"]["gpu_sharing_by_host"]["w1"]] == [
        ("GPU-w1-0", first["id"]), ("GPU-w1-1", second["id"])]
