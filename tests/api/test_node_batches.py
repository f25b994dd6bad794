"""Node operations for different nodes that arrive together share one playbook run (issue #13, section 2).

claim_next() is what a worker does first; JobWorker.execute() runs the claimed batch, here with
run_playbook replaced by a fake that records what it was asked and answers as ansible-runner's
stats would (processed, failures, dark per host), so that each job's ending is the worker's own
reading of its host's result. tests/e2e runs the same operations on the fleet.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select, update

from api_helpers import add_node, set_created, set_status
from gpuaas_api.config import Config
from gpuaas_api.db import session
from gpuaas_api.jobs import inventory as inventory_module
from gpuaas_api.jobs import worker as worker_module
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.jobs.queue import claim_next
from gpuaas_api.jobs.runner import RunResult
from gpuaas_api.models import Job, Node
from gpuaas_api.states import JobStatus, NodeStatus


class FakeRun:
    """run_playbook's stand-in: records each call; ``answer(call)`` gives the RunResult."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def __call__(self, job_id, playbook, hosts, extravars, data_dir, key_file, on_event, should_cancel, timeout,
                 operator_extravars):
        call = {"job_id": job_id, "playbook": playbook, "hosts": [host.name for host in hosts],
                "hostvars": {host.name: host.hostvars for host in hosts},
                "targets": extravars["gpuaas_targets"].split(","), "extravars": {**operator_extravars, **extravars}}
        self.calls.append(call)
        return self.answer(call)


def stats(processed=(), failures=(), dark=()) -> dict:
    return {"processed": {h: 1 for h in processed}, "failures": {h: 1 for h in failures}, "dark": {h: 1 for h in dark}}


def run_claimed(app, monkeypatch, answer) -> tuple[list[int], FakeRun]:
    fake = FakeRun(answer)
    monkeypatch.setattr(worker_module, "run_playbook", fake)
    with app.app_context():
        batch = claim_next()
        if batch:
            worker_module.JobWorker(app).execute(batch)
    return batch, fake


def nodes_in(client, region, count: int, status=None, app=None, prefix="w") -> list[dict]:
    nodes = [add_node(client, region, name=f"{prefix}{i}") for i in range(count)]
    if status is not None:
        for node in nodes:
            set_status(app, node["id"], status)
    return nodes


def jobs(app) -> dict[int, Job]:
    with app.app_context():
        found = {job.id: job for job in session().scalars(select(Job))}
        for job in found.values():
            session().expunge(job)
        return found


def status_of(client, node) -> str:
    return client.get(f"/gpuaas/node/{node['id']}").get_json()["status"]


def test_inits_arriving_together_wait_out_their_burst_then_share_one_run(app, client, region):
    app.config["GPUAAS"].NODE_BATCH_QUIET_SECONDS = 0.25  # the default; the fixture's is 0
    nodes = nodes_in(client, region, 3)
    inits = [client.get(f"/gpuaas/node/init?gpuaas_node_id={n['id']}").get_json()["job_id"] for n in nodes]

    set_created(app, {job_id: 0.0 for job_id in inits})  # the last request just now: more may follow
    with app.app_context():
        assert claim_next() == []
    set_created(app, {job_id: -0.5 for job_id in inits})  # quiet for longer than 0.25 s
    with app.app_context():
        assert claim_next() == inits
    assert all(job.status is JobStatus.RUNNING for job in jobs(app).values())


def test_a_burst_never_holds_its_first_job_past_the_window(app, client, region):
    config = app.config["GPUAAS"]
    config.NODE_BATCH_QUIET_SECONDS, config.NODE_BATCH_WINDOW_SECONDS = 0.25, 2.0
    old, new = (client.get(f"/gpuaas/node/init?gpuaas_node_id={n['id']}").get_json()["job_id"]
                for n in nodes_in(client, region, 2))
    set_created(app, {old: -3.0, new: 0.0})
    with app.app_context():
        assert claim_next() == [old, new]  # the old one goes, and takes the newcomer along


def test_each_node_of_a_batch_is_finalised_from_its_own_host(app, client, region, monkeypatch):
    nodes = nodes_in(client, region, 3)
    names = [f"node-{n['id']}" for n in nodes]
    inits = [client.get(f"/gpuaas/node/init?gpuaas_node_id={n['id']}").get_json()["job_id"] for n in nodes]

    batch, fake = run_claimed(app, monkeypatch, lambda call: RunResult(
        "failed", 2, stats(processed=names, failures=[names[1]]), {}, {}))

    assert batch == inits
    assert len(fake.calls) == 1 and fake.calls[0]["playbook"] == "node_init"
    assert fake.calls[0]["targets"] == names and fake.calls[0]["hosts"] == names
    ended = jobs(app)
    assert [ended[j].status for j in inits] == [JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.SUCCESSFUL]
    assert [status_of(client, n) for n in nodes] == ["initialized", "error", "initialized"]
    with app.app_context():  # every node is free again
        assert [session().get(Node, n["id"]).busy_job_id for n in nodes] == [None, None, None]


def test_an_unreachable_node_fails_alone(app, client, region, monkeypatch):
    nodes = nodes_in(client, region, 2)
    names = [f"node-{n['id']}" for n in nodes]
    inits = [client.get(f"/gpuaas/node/init?gpuaas_node_id={n['id']}").get_json()["job_id"] for n in nodes]

    run_claimed(app, monkeypatch, lambda call: RunResult("failed", 4, stats(processed=names, dark=[names[0]]), {}, {}))

    ended = jobs(app)
    assert (ended[inits[0]].status, ended[inits[0]].rc) == (JobStatus.FAILED, 4)
    assert ended[inits[1]].status is JobStatus.SUCCESSFUL
    assert [status_of(client, n) for n in nodes] == ["error", "initialized"]


def test_a_cancel_of_one_job_stops_the_run_and_the_others_run_again(app, client, region, monkeypatch):
    nodes = nodes_in(client, region, 3)
    inits = [client.get(f"/gpuaas/node/init?gpuaas_node_id={n['id']}").get_json()["job_id"] for n in nodes]

    def canceled_midway(call):
        assert client.post(f"/api/jobs/{inits[1]}/cancel").status_code == 202  # asked; the run stops
        return RunResult("canceled", None, {}, {}, {}, explanation="canceled on request")

    run_claimed(app, monkeypatch, canceled_midway)

    ended = jobs(app)
    assert ended[inits[1]].status is JobStatus.CANCELED
    assert [ended[j].status for j in (inits[0], inits[2])] == [JobStatus.PENDING, JobStatus.PENDING]
    with app.app_context():  # they keep their nodes, so nothing else slips in before they run again
        assert [session().get(Node, nodes[i]["id"]).busy_job_id for i in (0, 2)] == [inits[0], inits[2]]
    names = [f"node-{nodes[i]['id']}" for i in (0, 2)]
    batch, fake = run_claimed(app, monkeypatch, lambda call: RunResult("successful", 0, stats(processed=names), {}, {}))
    assert batch == [inits[0], inits[2]] and fake.calls[0]["targets"] == names
    ended = jobs(app)
    assert [ended[j].status for j in (inits[0], inits[2])] == [JobStatus.SUCCESSFUL, JobStatus.SUCCESSFUL]


def test_reboot_batches_roll_the_configured_serial_and_unreached_nodes_run_again(app, client, region, monkeypatch):
    nodes = nodes_in(client, region, 3, NodeStatus.INITIALIZED, app)
    names = [f"node-{n['id']}" for n in nodes]
    reboots = [client.post(f"/gpuaas/node/reboot?node_id={n['id']}").get_json()["job_id"] for n in nodes]

    # The first serial batch (node 0) failed as a whole: Ansible ended the play before the others.
    batch, fake = run_claimed(app, monkeypatch, lambda call: RunResult(
        "failed", 2, stats(processed=names[:1], failures=names[:1]), {}, {}))

    assert batch == reboots and fake.calls[0]["playbook"] == "node_reboot"
    assert fake.calls[0]["extravars"]["node_reboot_serial"] == "20%"
    ended = jobs(app)
    assert ended[reboots[0]].status is JobStatus.FAILED
    assert [ended[j].status for j in reboots[1:]] == [JobStatus.PENDING, JobStatus.PENDING]

    app.config["GPUAAS"].REBOOT_SERIAL = "1"
    batch, fake = run_claimed(app, monkeypatch, lambda call: RunResult(
        "successful", 0, stats(processed=names[1:]), {}, {}))
    assert batch == reboots[1:] and fake.calls[0]["extravars"]["node_reboot_serial"] == "1"
    assert [jobs(app)[j].status for j in reboots[1:]] == [JobStatus.SUCCESSFUL, JobStatus.SUCCESSFUL]


def test_a_run_that_failed_before_any_host_fails_every_job(app, client, region, monkeypatch):
    """Not reached, but nobody failed either (a syntax error, a missing role): nothing to retry for."""
    nodes = nodes_in(client, region, 2)
    inits = [client.get(f"/gpuaas/node/init?gpuaas_node_id={n['id']}").get_json()["job_id"] for n in nodes]

    run_claimed(app, monkeypatch, lambda call: RunResult("failed", 1, stats(), {}, {}))

    assert [jobs(app)[j].status for j in inits] == [JobStatus.FAILED, JobStatus.FAILED]
    assert [status_of(client, n) for n in nodes] == ["error", "error"]


def test_only_the_same_operation_with_the_same_variables_on_free_nodes_shares_a_run(app, client, region):
    fresh = nodes_in(client, region, 2)
    ready = nodes_in(client, region, 2, NodeStatus.INITIALIZED, app, prefix="r")
    init_a = client.get(f"/gpuaas/node/init?gpuaas_node_id={fresh[0]['id']}").get_json()["job_id"]
    deinit = client.get(f"/gpuaas/node/deinit?gpuaas_node_id={ready[0]['id']}").get_json()["job_id"]
    init_b = client.get(f"/gpuaas/node/init?gpuaas_node_id={fresh[1]['id']}").get_json()["job_id"]
    reboot = client.post(f"/gpuaas/node/reboot?node_id={ready[1]['id']}").get_json()["job_id"]
    behind = client.post(f"/gpuaas/node/reboot?node_id={fresh[0]['id']}").get_json()["job_id"]  # queued
    with app.app_context():  # init_b was submitted with other variables
        session().execute(update(Job).where(Job.id == init_b).values(
            extravars={**session().get(Job, init_b).extravars, "vars": {"node_init_manage_packages": False}}))
        session().commit()

        claimed = [claim_next() for _round in range(4)]
    assert claimed == [[init_a], [deinit], [init_b], [reboot]]  # a deinit never joins the inits
    assert jobs(app)[behind].status is JobStatus.PENDING  # queued behind init_a: its turn has not come


def test_joins_share_one_run_with_the_controller_as_a_helper(app, client, region, monkeypatch):
    controller = add_node(client, region, name="ctrl", is_controller_node=True, is_worker_node=False)
    set_status(app, controller["id"], NodeStatus.INITIALIZED)
    enabled = client.post(f"/gpuaas/enable?controller_node_id={controller['id']}").get_json()
    with app.app_context():
        finalize(enabled["job_id"], "successful", 0, "", {"gpuaas_cluster": {"api_server_port": 6443,
                                                                             "api_server_address": "198.18.0.11"}})
    workers = nodes_in(client, region, 2, NodeStatus.INITIALIZED, app)
    joins = [client.post("/gpuaas/node/join", json={"gpuaas_id": enabled["gpuaas_id"], "gpuaas_node_id": w["id"]})
             .get_json()["job_id"] for w in workers]
    names = [f"node-{w['id']}" for w in workers]

    batch, fake = run_claimed(app, monkeypatch, lambda call: RunResult(
        "successful", 0, stats(processed=[*names, f"node-{controller['id']}"]), {}, {}))

    assert batch == joins
    call = fake.calls[0]
    assert call["playbook"] == "node_join"
    assert call["targets"] == names  # the controller is in the run, not among its targets
    assert call["hosts"] == [*names, f"node-{controller['id']}"]
    assert call["extravars"]["cluster_join_controller"] == f"node-{controller['id']}"
    assert [jobs(app)[j].status for j in joins] == [JobStatus.SUCCESSFUL, JobStatus.SUCCESSFUL]
    assert [status_of(client, w) for w in workers] == ["healthy", "healthy"]


@pytest.mark.parametrize("operation", ["init", "reboot"])
def test_each_host_of_a_batch_keeps_the_controller_of_its_own_run(app, client, region, monkeypatch, operation):
    # A controller-flagged node and a worker, neither in a cluster: alone, the worker's run has no
    # controller (its roles look for departure records and kubectl nowhere), and the controller-flagged
    # node's is itself. Batched, the run's `controller` group holds the controller-flagged node, and the
    # roles' defaults would make it the worker's controller too.
    flagged = add_node(client, region, name="c0", is_controller_node=True, is_worker_node=False)
    worker = add_node(client, region, name="w0")
    if operation == "reboot":
        for node in (flagged, worker):
            set_status(app, node["id"], NodeStatus.INITIALIZED)
    submit = ((lambda n: client.get(f"/gpuaas/node/init?gpuaas_node_id={n['id']}")) if operation == "init"
              else (lambda n: client.post(f"/gpuaas/node/reboot?node_id={n['id']}")))
    submitted = [submit(n).get_json()["job_id"] for n in (flagged, worker)]
    names = [f"node-{flagged['id']}", f"node-{worker['id']}"]

    batch, fake = run_claimed(app, monkeypatch, lambda call: RunResult("successful", 0, stats(processed=names), {}, {}))

    assert batch == submitted and fake.calls[0]["hosts"] == names
    hostvars = fake.calls[0]["hostvars"]
    for variable in inventory_module.CONTROLLER_VARIABLES:
        assert hostvars[names[0]][variable] == names[0]
        assert hostvars[names[1]][variable] == ""


@pytest.mark.parametrize("serial", ["0", "0%", "101%", "-1", "20 %", "all"])
def test_an_invalid_reboot_serial_is_refused_at_start(tmp_path, serial):
    with pytest.raises(ValueError, match="GPUAAS_REBOOT_SERIAL"):
        Config({"GPUAAS_DATA_DIR": str(tmp_path), "GPUAAS_REBOOT_SERIAL": serial})


@pytest.mark.parametrize("quiet, window", [("-1", "2"), ("3", "2")])
def test_a_batch_window_shorter_than_its_quiet_interval_is_refused(tmp_path, quiet, window):
    with pytest.raises(ValueError, match="GPUAAS_NODE_BATCH_QUIET_SECONDS"):
        Config({"GPUAAS_DATA_DIR": str(tmp_path), "GPUAAS_NODE_BATCH_QUIET_SECONDS": quiet,
                "GPUAAS_NODE_BATCH_WINDOW_SECONDS": window})
