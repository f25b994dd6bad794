"""Requests that find their node or pool held by a job are queued behind it (jobs/queue.py).

No job runs here: claim_next() is what a worker does first, and finalize() is how a run ends.
"""
from __future__ import annotations

from api_helpers import add_node, assert_error, create, set_status, settle
from gpuaas_api.config import Config
from gpuaas_api.db import session
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.jobs.queue import claim_next
from gpuaas_api.models import Job, Node
from gpuaas_api.states import NodeStatus


def job(app, job_id) -> Job:
    with app.app_context():
        return session().get(Job, job_id)


def node_status(client, node_id) -> str:
    return client.get(f"/gpuaas/node/{node_id}").get_json()["status"]


def test_the_client_removes_gpus_then_deletes_the_pool_at_once(app, client, fleet_db):
    pool = create(client, fleet_db).get_json()
    settle(app, pool)
    removed = client.get(f"/gpuaas/pool/{pool['id']}/remove_gpus?gpu_uuids={fleet_db['uuids']['w1'][0]}")
    assert removed.status_code == 200

    deleted = client.delete(f"/gpuaas/pool/{pool['id']}")

    assert deleted.status_code == 200 and deleted.get_json()["success"] is True
    queued_id = deleted.get_json()["job_id"]
    assert f"queued behind job {removed.get_json()['job_id']}" in deleted.get_json()["message"]
    assert job(app, queued_id).status.value == "pending"
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "DEPLOYMENT_SCHEDULED"  # untouched
    with app.app_context():
        assert claim_next() == [removed.get_json()["job_id"]]
        assert claim_next() == []  # the delete waits for the removal
    settle(app, removed.get_json())
    with app.app_context():
        assert claim_next() == [queued_id]  # its turn: the pool goes DELETING, its last GPU leaves
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "DELETING"
    settle(app, {"job_id": queued_id})
    assert_error(client.get(f"/gpuaas/pool/{pool['id']}"), 404)


def test_the_client_deinitialises_a_node_right_after_its_pool_change(app, client, fleet_db):
    pool = create(client, fleet_db).get_json()
    deinit = client.get("/gpuaas/node/deinit?gpuaas_node_id=1")

    assert deinit.status_code == 200 and f"queued behind job {pool['job_id']}" in deinit.get_json()["message"]
    assert node_status(client, 1) == "healthy"  # nothing moves while it waits
    with app.app_context():
        assert claim_next() == [pool["job_id"]]
        assert claim_next() == []
    settle(app, pool)
    with app.app_context():
        assert claim_next() == [deinit.get_json()["job_id"]]
        assert session().get(Node, 1).busy_job_id == deinit.get_json()["job_id"]
    assert node_status(client, 1) == "resetting"


def test_a_queued_job_is_checked_again_when_its_turn_comes(app, client, region):
    node = add_node(client, region)
    first = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        assert claim_next() == [first["job_id"]]  # running: no longer the pending job a repeated request gets
    # Init may follow an init that fails (from error): accepted, and queued.
    second = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()
    assert "queued behind" in second["message"]
    with app.app_context():
        finalize(first["job_id"], "successful", 0, "", {})
        assert claim_next() == []  # refused at its turn: an initialized node is not initialised again
    ended = client.get(f"/api/jobs/{second['job_id']}").get_json()
    assert ended["status"] == "failed"
    assert ended["explanation"].startswith("refused when its turn came: node") and "cannot init" in ended["explanation"]
    assert node_status(client, node["id"]) == "initialized"  # the refused job moved nothing
    with app.app_context():
        assert session().get(Node, node["id"]).busy_job_id is None


def test_what_the_state_forbids_whatever_happens_next_is_still_409(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    client.get(f"/gpuaas/node/deinit?gpuaas_node_id={node['id']}")  # resetting: ends uninitialized or error
    refused = client.post(f"/gpuaas/node/{node['id']}/disable")
    assert "cannot disable" in assert_error(refused, 409)["message"]


def test_a_failed_job_ahead_does_not_cancel_the_ones_behind_and_they_run_in_order(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    reboot = client.post(f"/gpuaas/node/reboot?node_id={node['id']}").get_json()["job_id"]
    disable = client.post(f"/gpuaas/node/{node['id']}/disable").get_json()["job_id"]
    second_reboot = client.post(f"/gpuaas/node/reboot?node_id={node['id']}").get_json()["job_id"]
    order = []
    with app.app_context():
        for _attempt in range(3):
            claimed = claim_next()
            assert len(claimed) == 1 and claim_next() == []  # one at a time
            order += claimed
            finalize(claimed[0], "failed", 2, "", {})  # each fails; the next still runs
    assert order == [reboot, disable, second_reboot]
    assert [job(app, job_id).status.value for job_id in order] == ["failed"] * 3


def test_a_queued_job_can_be_canceled_and_changes_nothing(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    reboot = client.post(f"/gpuaas/node/reboot?node_id={node['id']}").get_json()["job_id"]
    disable = client.post(f"/gpuaas/node/{node['id']}/disable").get_json()["job_id"]

    assert client.post(f"/api/jobs/{disable}/cancel").status_code == 202
    with app.app_context():
        assert claim_next() == [reboot]
        finalize(reboot, "successful", 0, "", {})
        assert claim_next() == []
    canceled = client.get(f"/api/jobs/{disable}").get_json()
    assert (canceled["status"], canceled["explanation"]) == ("canceled", "canceled before it ran")
    shown = client.get(f"/gpuaas/node/{node['id']}").get_json()
    assert (shown["status"], shown["disabled"]) == ("initialized", False)


def test_queued_jobs_survive_a_restart(app, client, region, migrated_database_url, tmp_path):
    from gpuaas_api.app import create_app

    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    reboot = client.post(f"/gpuaas/node/reboot?node_id={node['id']}").get_json()["job_id"]
    disable = client.post(f"/gpuaas/node/{node['id']}/disable").get_json()["job_id"]
    with app.app_context():
        assert claim_next() == [reboot]
        finalize(reboot, "successful", 0, "", {})

    # Another process (a restarted service) finds the queued job and runs it.
    restarted = create_app(Config({"GPUAAS_DATABASE_URL": migrated_database_url,
                                   "GPUAAS_DATA_DIR": str(tmp_path / "restarted")}))
    with restarted.app_context():
        assert claim_next() == [disable]
    restarted.extensions["gpuaas_engine"].dispose()


def test_a_queued_job_canceled_while_the_one_ahead_runs_ends_at_once(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    reboot = client.post(f"/gpuaas/node/reboot?node_id={node['id']}").get_json()["job_id"]
    with app.app_context():
        assert claim_next() == [reboot]  # running
    disable = client.post(f"/gpuaas/node/{node['id']}/disable").get_json()["job_id"]

    canceled = client.post(f"/api/jobs/{disable}/cancel").get_json()

    assert (canceled["status"], canceled["explanation"]) == ("canceled", "canceled before it ran")
    assert client.get(f"/api/jobs/{reboot}").get_json()["status"] == "running"  # the one ahead goes on


def test_a_queued_enable_refused_at_its_turn_leaves_the_cluster_enableable_again(app, client, region):
    node = add_node(client, region, name="ctrl")
    init = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]
    enable = client.post(f"/gpuaas/enable?controller_node_id={node['id']}").get_json()  # as the client does
    assert "queued behind" in enable["message"]
    with app.app_context():
        assert claim_next() == [init]
        finalize(init, "failed", 2, "", {})
        assert claim_next() == []  # enable refused: the node is in error
    assert job(app, enable["job_id"]).status.value == "failed"
    assert client.get(f"/gpuaas/{enable['gpuaas_id']}").get_json()["status"] == "GPUAAS_ERROR_WHILE_ENABLING"

    retried_init = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]
    with app.app_context():
        assert claim_next() == [retried_init]
        finalize(retried_init, "successful", 0, "", {})
    again = client.post(f"/gpuaas/enable?controller_node_id={node['id']}").get_json()
    assert again["gpuaas_id"] == enable["gpuaas_id"] and "started" in again["message"]


def test_a_pool_change_waiting_for_its_node_can_be_canceled_and_retried(app, client, fleet_db):
    pool = create(client, fleet_db, attach_gpu_ids=["GPU-w1-0"]).get_json()
    settle(app, pool)
    reboot = client.post("/gpuaas/node/reboot?node_id=1").get_json()["job_id"]
    added = client.post(f"/gpuaas/pool/{pool['id']}/add_gpus", json={"gpu_uuids": ["GPU-w1-1"]}).get_json()
    assert added["queued_behind"] == reboot and added["status"] == "DEPLOYMENT_SCHEDULED"

    canceled = client.post(f"/api/jobs/{added['job_id']}/cancel").get_json()

    assert canceled["status"] == "canceled"
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "ERROR_WHILE_DEPLOYING"
    with app.app_context():
        finalize(reboot, "successful", 0, "", {})
    retry = client.post(f"/gpuaas/pool/{pool['id']}/retry").get_json()
    settle(app, retry)
    assert client.get(f"/gpuaas/pool/{pool['id']}").get_json()["status"] == "ACTIVE"
    gpus = {gpu["uuid"]: gpu["assignment_status"] for gpu in
            client.get(f"/gpuaas/pool/{pool['id']}/gpus").get_json()["items"]}
    assert gpus == {"GPU-w1-0": "ASSIGNED", "GPU-w1-1": "ASSIGNED"}


def test_a_node_with_a_job_queued_or_running_is_not_deleted(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.ERROR)
    init = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]
    set_status(app, node["id"], NodeStatus.ERROR)  # as if the init ahead had left it so, still holding it
    assert f"job {init}" in assert_error(client.delete(f"/gpuaas/node/{node['id']}/delete"), 409)["message"]


def test_of_two_workers_only_one_starts_a_queued_job(app, client, region, migrated_database_url, tmp_path):
    from gpuaas_api.app import create_app
    from gpuaas_api.jobs.queue import start_queued

    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    reboot = client.post(f"/gpuaas/node/reboot?node_id={node['id']}").get_json()["job_id"]
    deinit = client.get(f"/gpuaas/node/deinit?gpuaas_node_id={node['id']}").get_json()["job_id"]
    with app.app_context():
        assert claim_next() == [reboot]
        finalize(reboot, "successful", 0, "", {})
        stale = session().get(Job, deinit)  # worker B read the queued job: pending
        assert stale.status.value == "pending"
        other = create_app(Config({"GPUAAS_DATABASE_URL": migrated_database_url,
                                   "GPUAAS_DATA_DIR": str(tmp_path / "other")}))
        with other.app_context():
            assert claim_next() == [deinit]  # worker A starts it: the node is resetting
        other.extensions["gpuaas_engine"].dispose()

        assert start_queued(stale) is False  # B's turn check finds it taken, and changes nothing
        session().expire_all()
        assert session().get(Job, deinit).status.value == "running"
        assert session().get(Node, node["id"]).busy_job_id == deinit


def test_a_queued_deinit_is_checked_again_for_what_the_route_checks(app, client, region):
    controller = add_node(client, region, name="ctrl", is_controller_node=True)
    set_status(app, controller["id"], NodeStatus.INITIALIZED)
    enabled = client.post(f"/gpuaas/enable?controller_node_id={controller['id']}").get_json()
    with app.app_context():
        assert claim_next() == [enabled["job_id"]]
        finalize(enabled["job_id"], "successful", 0, "", {"gpuaas_cluster": {"api_server_port": 6443}})
    reboot = client.post(f"/gpuaas/node/reboot?node_id={controller['id']}").get_json()["job_id"]
    deinit = client.get(f"/gpuaas/node/deinit?gpuaas_node_id={controller['id']}").get_json()["job_id"]
    worker = add_node(client, region, name="w1")
    with app.app_context():  # a worker joins while the deinit waits
        joined = session().get(Node, worker["id"])
        joined.status, joined.cluster_id, joined.joined = NodeStatus.HEALTHY, enabled["gpuaas_id"], True
        session().commit()
        assert claim_next() == [reboot]
        finalize(reboot, "successful", 0, "", {})
        assert claim_next() == []
    ended = client.get(f"/api/jobs/{deinit}").get_json()
    assert ended["status"] == "failed" and "joined worker" in ended["explanation"]
    assert client.get(f"/gpuaas/{enabled['gpuaas_id']}").get_json()["status"] == "GPUAAS_ACTIVE"
