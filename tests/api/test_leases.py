"""Leases (jobs/lease.py): a running job belongs to its claimant only while the claimant renews it."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import update

from api_helpers import add_node
from gpuaas_api.db import session
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.jobs.lease import Lease, expire_lapsed
from gpuaas_api.jobs.identity import claimant
from gpuaas_api.jobs.queue import claim_next
from gpuaas_api.models import Job, Node
from gpuaas_api.states import NodeStatus


def aware(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def lapse(job_id: int) -> None:
    session().execute(update(Job).where(Job.id == job_id).values(
        lease_expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    session().commit()


def test_a_claim_takes_a_lease_and_the_claimant_renews_it(app, client, region):
    node = add_node(client, region)
    init = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]
    with app.app_context():
        before = dt.datetime.now(dt.timezone.utc)
        assert claim_next() == [init]
        taken = aware(session().get(Job, init).lease_expires_at)
        assert before + dt.timedelta(seconds=59) < taken <= before + dt.timedelta(seconds=61)

        lease = Lease([init], claimant(), renew_seconds=0)
        assert lease.still_held() is True
        session().expire_all()
        assert aware(session().get(Job, init).lease_expires_at) >= taken
        # Another process's renewal of it is refused.
        assert Lease([init], "elsewhere:1", renew_seconds=0).still_held() is False


def test_a_lapsed_lease_is_finalised_by_any_process_and_its_old_claimant_changes_nothing(app, client, region):
    node = add_node(client, region)
    init = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]
    with app.app_context():
        assert claim_next() == [init]
        first = session().get(Job, init).claimed_by
        assert expire_lapsed("host-b:2") == []  # still held
        lapse(init)

        assert expire_lapsed("host-b:2") == [init]
        assert expire_lapsed("host-c:3") == []  # once

        # The first process comes back: its lease is gone, it stops, and its result is not recorded.
        assert Lease([init], first, renew_seconds=0).still_held() is False
        finalize(init, "successful", 0, "", {}, owner=first)
    job = client.get(f"/api/jobs/{init}").get_json()
    assert job["status"] == "error"
    assert f"the API process {first} stopped renewing its lease" in job["explanation"]
    shown = client.get(f"/gpuaas/node/{node['id']}").get_json()
    assert shown["status"] == NodeStatus.ERROR.value  # init's failure state
    with app.app_context():
        assert session().get(Node, node["id"]).busy_job_id is None
    retry = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}")  # the node is free again
    assert retry.status_code == 200 and "started" in retry.get_json()["message"]


def test_the_lease_outlasts_two_renewals_and_the_drain(database_url, tmp_path):
    """Refused at start in one line: a lease one late renewal would lose, a drain longer than the lease."""
    import pytest

    from gpuaas_api.config import Config

    with pytest.raises(ValueError, match=r"^GPUAAS_JOB_LEASE_SECONDS \(10\) must be at least twice GPUAAS_JOB_LEASE_RENEW_SECONDS \(6\)$"):
        Config({"GPUAAS_JOB_LEASE_SECONDS": "10", "GPUAAS_JOB_LEASE_RENEW_SECONDS": "6"})
    assert Config({"GPUAAS_JOB_LEASE_SECONDS": "10", "GPUAAS_JOB_LEASE_RENEW_SECONDS": "5"}).JOB_LEASE_SECONDS == 10
    with pytest.raises(ValueError, match=r"^GPUAAS_JOB_DRAIN_SECONDS \(61\) must be no longer than GPUAAS_JOB_LEASE_SECONDS \(60\)$"):
        Config({"GPUAAS_JOB_DRAIN_SECONDS": "61"})
    assert Config({"GPUAAS_JOB_DRAIN_SECONDS": "60"}).JOB_DRAIN_SECONDS == 60
    # Unset, the drain follows a shorter lease rather than refusing it.
    assert Config({"GPUAAS_JOB_LEASE_SECONDS": "8", "GPUAAS_JOB_LEASE_RENEW_SECONDS": "2"}).JOB_DRAIN_SECONDS == 8
    assert Config({}).JOB_LEASE_SECONDS == 60 and Config({}).JOB_LEASE_RENEW_SECONDS == 10 and Config({}).JOB_DRAIN_SECONDS == 45


def test_a_takeover_during_the_claimants_finalisation_finalises_nothing(app, client, region, monkeypatch):
    """The claimant's finalisation and another process's takeover of the lapsed lease race: exactly one
    records the job. The claimant is made to be mid-finalisation (past its ownership check, before its
    commit) when the takeover starts."""
    import threading

    from gpuaas_api.operations import nodes as node_operations

    node = add_node(client, region)
    init = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]
    taken_over: list[list[int]] = []

    def take_over() -> None:
        with app.app_context():
            taken_over.append(expire_lapsed("host-b:2"))

    record_facts = node_operations.record_node_facts

    def record_facts_while_taken_over(*args):
        takeover = threading.Thread(target=take_over)
        takeover.start()
        takeover.join(timeout=1)  # it waits on the claimant's row lock, or ends at once without one
        record_facts(*args)
        racing.append(takeover)

    racing: list[threading.Thread] = []
    with app.app_context():
        assert claim_next() == [init]
        first = session().get(Job, init).claimed_by
        lapse(init)
        monkeypatch.setattr(node_operations, "record_node_facts", record_facts_while_taken_over)
        finalize(init, "successful", 0, "", {}, owner=first)
    racing[0].join(timeout=30)
    assert taken_over == [[]]
    job = client.get(f"/api/jobs/{init}").get_json()
    assert job["status"] == "successful" and "stopped renewing" not in (job["explanation"] or "")
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["status"] == NodeStatus.INITIALIZED.value


def test_the_housekeeper_finalises_a_lapsed_lease_while_every_job_worker_is_busy(app, client, region, monkeypatch):
    """A dead host's job is finalised by a survivor whose only job thread is running a long playbook."""
    import threading
    import time

    from gpuaas_api.jobs import worker as worker_module
    from gpuaas_api.jobs.runner import RunResult

    stuck, release_playbook = threading.Event(), threading.Event()

    def long_playbook(*_args, **_kwargs):
        stuck.set()
        release_playbook.wait(timeout=30)
        return RunResult("successful", 0, {"processed": {}, "failures": {}, "dark": {}}, {}, {})

    monkeypatch.setattr(worker_module, "run_playbook", long_playbook)
    monkeypatch.setattr(app.config["GPUAAS"], "JOB_LEASE_RENEW_SECONDS", 0.2)
    dead_node, busy_node = add_node(client, region, name="dead"), add_node(client, region, name="busy")
    orphan = client.get(f"/gpuaas/node/init?gpuaas_node_id={dead_node['id']}").get_json()["job_id"]
    with app.app_context():
        assert claim_next() == [orphan]
        session().execute(update(Job).where(Job.id == orphan).values(claimed_by="gone-host:1"))
        session().commit()
        lapse(orphan)
    client.get(f"/gpuaas/node/init?gpuaas_node_id={busy_node['id']}")
    workers = worker_module.start_workers(app, 1)
    try:
        assert stuck.wait(timeout=10), "the job worker never started the long playbook"
        deadline = time.monotonic() + 10
        while client.get(f"/api/jobs/{orphan}").get_json()["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        job = client.get(f"/api/jobs/{orphan}").get_json()
        assert job["status"] == "error" and "gone-host:1 stopped renewing" in job["explanation"]
        assert not release_playbook.is_set()  # the worker was busy all along
    finally:
        release_playbook.set()
        workers.stop()
