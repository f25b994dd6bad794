"""A node's queue is bounded: a repeated request is answered with the job already pending, and past
GPUAAS_NODE_QUEUE_MAX pending jobs a node refuses more (jobs/submit.py). No job runs here."""
from __future__ import annotations

from sqlalchemy import func, select

from api_helpers import add_node, assert_error, set_status
from gpuaas_api.db import session
from gpuaas_api.jobs.submit import new_job, submit
from gpuaas_api.models import Job, Scan
from gpuaas_api.states import NodeStatus


def job_count(app) -> int:
    with app.app_context():
        return session().scalar(select(func.count(Job.id)))


def test_a_request_identical_to_the_nodes_latest_pending_job_is_answered_with_it(app, client, region):
    node = add_node(client, region)
    first = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()

    again = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}")

    assert again.status_code == 200 and again.get_json()["job_id"] == first["job_id"]
    assert again.get_json()["message"] == f"initialisation of node {node['id']} already pending as job {first['job_id']} " \
        "(the same request)"
    assert job_count(app) == 1


def test_init_deinit_init_are_three_jobs(app, client, region):
    node = add_node(client, region)
    asked = [client.get(f"/gpuaas/node/{operation}?gpuaas_node_id={node['id']}").get_json()
             for operation in ("init", "deinit", "init")]

    assert all(reply["success"] for reply in asked), asked
    assert len({reply["job_id"] for reply in asked}) == 3
    assert "queued behind" in asked[2]["message"]


def test_repeated_scans_and_connection_tests_on_one_node_make_one_job_each(app, client, region):
    # Found: 100 scan_gpus and 20 test_conn on one node queued 120 jobs, 120 playbook runs.
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    scans, tests = [], []
    for request in range(30):
        scans.append(client.get(f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}").get_json())
        if request % 3 == 0:
            tests.append(client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}").get_json())

    assert len({scan["id"] for scan in scans}) == 1 and len({reply["job_id"] for reply in tests}) == 1
    assert job_count(app) == 2
    with app.app_context():
        assert session().scalar(select(func.count(Scan.id))) == 1


def test_a_pending_job_asked_to_cancel_is_not_the_answer(app, client, region):
    node = add_node(client, region)
    first = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()
    assert client.post(f"/api/jobs/{first['job_id']}/cancel").status_code == 202  # it holds its node: ends when run

    again = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()

    assert again["job_id"] != first["job_id"] and "queued behind" in again["message"]


def test_other_variables_are_another_request(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    with app.app_context():
        jobs = [submit(new_job("node_reboot", mutating=True, node_id=node["id"],
                               extravars={"hosts": [node["id"]], "vars": variables}), [node["id"]])
                for variables in ({"node_reboot_controller": "node-7"}, {}, {})]
        ids = [job.id for job in jobs]
        session().commit()

    assert ids[0] != ids[1] and ids[1] == ids[2]


def test_a_nodes_queue_is_capped(app, client, region):
    app.config["GPUAAS"].NODE_QUEUE_MAX = 3
    node = add_node(client, region)
    for operation in ("init", "deinit", "init"):
        assert client.get(f"/gpuaas/node/{operation}?gpuaas_node_id={node['id']}").status_code == 200

    refused = assert_error(client.get(f"/gpuaas/node/deinit?gpuaas_node_id={node['id']}"), 409)

    assert refused["message"] == (f"node {node['id']} already has 3 jobs pending, the most GPUAAS_NODE_QUEUE_MAX (3) "
                                  "allows; wait for them to run, or cancel some")
    assert_error(client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}"), 409)  # read-only ones count too
    assert client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").status_code == 200  # the same request: no new job
    assert job_count(app) == 3
    other = add_node(client, region, name="w2")
    assert client.get(f"/gpuaas/node/init?gpuaas_node_id={other['id']}").status_code == 200  # the cap is per node
