"""Node operations for different nodes that arrive together share one playbook run (issue #13, section 2).

claim_next() is what a worker does first; JobWorker.execute() runs the claimed batch, here with
run_playbook replaced by a fake that records what it was asked and answers as ansible-runner's
stats would (processed, failures, dark per host), so that each job's ending is the worker's own
reading of its host's result. tests/e2e runs the same operations on the fleet. The last test runs
real job workers of two API hosts (two apps over one database) instead.
"""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, update

from api_helpers import add_node, set_created, set_status
from gpuaas_api import create_app
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


def enabled_controller(app, client, region) -> tuple[dict, dict]:
    """An initialized controller node, and the reply of its enable, whose job succeeded."""
    controller = add_node(client, region, name="ctrl", is_controller_node=True, is_worker_node=False)
    set_status(app, controller["id"], NodeStatus.INITIALIZED)
    enabled = client.post(f"/gpuaas/enable?controller_node_id={controller['id']}").get_json()
    with app.app_context():
        finalize(enabled["job_id"], "successful", 0, "", {"gpuaas_cluster": {"api_server_port": 6443,
                                                                             "api_server_address": "198.18.0.11"}})
    return controller, enabled


def test_joins_share_one_run_with_the_controller_as_a_helper(app, client, region, monkeypatch):
    controller, enabled = enabled_controller(app, client, region)
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


def in_cluster(app, client, region, count: int) -> tuple[dict, list[dict]]:
    """A controller with an active cluster, and ``count`` HEALTHY workers joined to it."""
    controller, enabled = enabled_controller(app, client, region)
    workers = nodes_in(client, region, count, NodeStatus.HEALTHY, app)
    with app.app_context():
        session().execute(update(Node).where(Node.id.in_([w["id"] for w in workers]))
                          .values(joined=True, cluster_id=enabled["gpuaas_id"]))
        session().commit()
    return controller, workers


def node_row(app, node) -> dict:
    with app.app_context():
        found = session().get(Node, node["id"])
        return {"status": found.status.value, "joined": found.joined, "cluster_id": found.cluster_id,
                "disabled": found.disabled, "busy_job_id": found.busy_job_id}


# Each destructive operation's burst: how its nodes are made ready for it, its request, and what a
# node that succeeded and one that failed are left as (the others' fields unchanged).
DESTRUCTIVE = {
    "node_leave": (lambda client, n: client.post(f"/gpuaas/node/leave?node_id={n['id']}"),
                   {"status": "initialized", "joined": False, "cluster_id": None}, {"status": "error", "joined": True}),
    "node_disable": (lambda client, n: client.post(f"/gpuaas/node/{n['id']}/disable"),
                     {"status": "initialized", "disabled": True}, {"status": "initialized", "disabled": False}),
    "node_deinit": (lambda client, n: client.get(f"/gpuaas/node/deinit?gpuaas_node_id={n['id']}"),
                    {"status": "uninitialized"}, {"status": "error"}),
}


@pytest.mark.parametrize("operation", sorted(DESTRUCTIVE))
def test_leave_disable_and_deinit_bursts_share_one_run_and_each_node_ends_by_its_own_host(
        app, client, region, monkeypatch, operation):
    request, succeeded, failed = DESTRUCTIVE[operation]
    app.config["GPUAAS"].NODE_BATCH_QUIET_SECONDS = 0.25
    if operation == "node_leave":
        controller, nodes = in_cluster(app, client, region, 3)
        helpers = [f"node-{controller['id']}"]
    else:
        controller, nodes, helpers = None, nodes_in(client, region, 3, NodeStatus.INITIALIZED, app), []
    names = [f"node-{n['id']}" for n in nodes]
    before = [node_row(app, n) for n in nodes]
    submitted = [request(client, n).get_json()["job_id"] for n in nodes]

    set_created(app, {job_id: 0.0 for job_id in submitted})  # the burst goes on: nothing runs yet
    with app.app_context():
        assert claim_next() == []
    set_created(app, {job_id: -0.5 for job_id in submitted})
    # The middle node fails its part, the last is unreachable; the play went on for the first.
    batch, fake = run_claimed(app, monkeypatch, lambda call: RunResult(
        "failed", 4, stats(processed=[*names, *helpers], failures=[names[1]], dark=[names[2]]), {}, {}))

    assert batch == submitted and len(fake.calls) == 1
    call = fake.calls[0]
    assert call["playbook"] == operation and call["targets"] == names  # destructive: every node named
    assert call["hosts"] == [*names, *helpers]
    if operation == "node_leave":
        assert call["extravars"]["cluster_leave_controller"] == helpers[0]
        assert call["extravars"]["cluster_leave_ungraceful"] is False
    ended = jobs(app)
    assert [(ended[j].status, ended[j].rc) for j in submitted] == [
        (JobStatus.SUCCESSFUL, 0), (JobStatus.FAILED, 2), (JobStatus.FAILED, 4)]
    rows = [node_row(app, n) for n in nodes]
    assert rows[0] == {**before[0], **succeeded}
    assert rows[1] == rows[2] == {**before[1], **failed} == {**before[2], **failed}
    if controller is not None:  # the helper is no target: the controller stays as it was
        assert node_row(app, controller)["status"] == "healthy"


def test_a_leave_with_other_variables_runs_apart(app, client, region, monkeypatch):
    _controller, workers = in_cluster(app, client, region, 3)
    graceful = [client.post(f"/gpuaas/node/leave?node_id={w['id']}").get_json()["job_id"] for w in workers[:2]]
    ungraceful = client.post(f"/gpuaas/node/leave?node_id={workers[2]['id']}&ungraceful=true").get_json()["job_id"]
    with app.app_context():
        assert [claim_next() for _round in range(2)] == [graceful, [ungraceful]]


def test_a_burst_submitted_through_two_hosts_runs_once_and_each_job_ends_by_its_own_host(
        app, client, token, migrated_database_url, tmp_path, monkeypatch):
    """Two API hosts over one database, each with its own job workers: a burst of inits whose requests
    arrive through both gathers into one playbook run, claimed by one worker of one host, run once."""
    host_b = create_app(Config({"GPUAAS_DATA_DIR": str(tmp_path / "data-b"), "GPUAAS_DATABASE_URL": migrated_database_url}))
    client_b = host_b.test_client()
    client_b.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    for host in (app, host_b):  # a burst slower than the default, so that a slow test machine still makes one
        host.config["GPUAAS"].NODE_BATCH_QUIET_SECONDS, host.config["GPUAAS"].NODE_BATCH_WINDOW_SECONDS = 1.0, 10.0
    region = client.post("/api/regions", json={"region_name": "two-hosts"}).get_json()
    nodes = nodes_in(client, region, 4)
    names = [f"node-{n['id']}" for n in nodes]
    lock = threading.Lock()
    fake = FakeRun(lambda call: RunResult("failed", 2, stats(processed=names, failures=[names[2]]), {}, {}))

    def run_once(*args, **kwargs):
        with lock:
            return fake(*args, **kwargs)
    monkeypatch.setattr(worker_module, "run_playbook", run_once)
    workers = [worker_module.JobWorker(host, poll_seconds=0.1) for host in (app, host_b) for _worker in range(2)]
    for worker in workers:
        worker.start()
    try:
        through = [client, client_b, client_b, client]
        submitted = [via.get(f"/gpuaas/node/init?gpuaas_node_id={n['id']}").get_json()["job_id"]
                     for via, n in zip(through, nodes)]
        deadline = time.monotonic() + 30
        while any(client.get(f"/api/jobs/{j}").get_json()["status"] in ("pending", "running") for j in submitted):
            assert time.monotonic() < deadline, "the jobs did not finish"
            time.sleep(0.05)
    finally:
        for worker in workers:
            worker.stopping.set()
        for worker in workers:
            worker.join(timeout=10)
        host_b.extensions["gpuaas_engine"].dispose()

    assert len(fake.calls) == 1, [call["targets"] for call in fake.calls]
    assert fake.calls[0]["playbook"] == "node_init" and fake.calls[0]["targets"] == names
    ended = jobs(app)
    assert [ended[j].status for j in submitted] == [JobStatus.SUCCESSFUL, JobStatus.SUCCESSFUL, JobStatus.FAILED,
                                                    JobStatus.SUCCESSFUL]
    assert len({ended[j].claimed_by for j in submitted}) == 1 and len({ended[j].started_at for j in submitted}) == 1
    # Each host reads the same endings.
    assert [status_of(client_b, n) for n in nodes] == [status_of(client, n) for n in nodes] == [
        "initialized", "initialized", "error", "initialized"]
    assert [node_row(app, n)["busy_job_id"] for n in nodes] == [None] * 4
