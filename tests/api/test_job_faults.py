"""Faults operators meet (issue #38): a database outage during a run, a host whose clock runs fast,
two hosts with one hostname and the same pids, a stop that drains, a periodic task that hangs.

The outage is injected at the engine's edge: every statement fails as a dropped connection does
(OperationalError) while the test says the database is down. tests/e2e/test_service_faults.py
stops a real PostgreSQL server in the middle of a node init on the fleet.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError

from api_helpers import add_node
from gpuaas_api.db import session
from gpuaas_api.jobs import claims
from gpuaas_api.jobs import lease as lease_module
from gpuaas_api.jobs import worker as worker_module
from gpuaas_api.jobs.housekeeper import Housekeeper, RECOVERY
from gpuaas_api.jobs.hooks import PeriodicTask
from gpuaas_api.jobs.lease import expire_lapsed
from gpuaas_api.jobs.queue import claim_next
from gpuaas_api.jobs.runner import RunResult
from gpuaas_api.models import Job, JobEvent
from gpuaas_api.states import JobStatus

SUCCEEDED = {"processed": {}, "failures": {}, "dark": {}}


@pytest.fixture
def database_down(app):
    """Set: every statement fails as it does when the server is gone."""
    down = threading.Event()

    def refuse(_connection, _cursor, statement, parameters, _context, _many):
        if down.is_set():
            raise OperationalError(statement, parameters, ConnectionRefusedError("the database is down (injected)"))

    engine = app.extensions["gpuaas_engine"]
    event.listen(engine, "before_cursor_execute", refuse)
    yield down
    down.clear()
    event.remove(engine, "before_cursor_execute", refuse)


def runner_event(counter: int, host: str) -> dict:
    return {"counter": counter, "event": "runner_on_ok", "stdout": f"line {counter}",
            "event_data": {"host": host, "task": f"task {counter}"}}


def init_job(client, region, name="outage") -> tuple[dict, int]:
    node = add_node(client, region, name=name)
    return node, client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]


def execute_claimed(app, monkeypatch, playbook) -> list[int]:
    monkeypatch.setattr(worker_module, "run_playbook", playbook)
    with app.app_context():
        batch = claim_next()
        worker_module.JobWorker(app).execute(batch)
    return batch


def stored_events(app, job_id: int) -> list[JobEvent]:
    with app.app_context():
        return list(session().scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def test_an_outage_within_the_lease_loses_no_event_and_the_job_ends_as_it_ran(app, client, region, monkeypatch,
                                                                              database_down):
    """Down for 1.5 s mid-run (renewals, cancel polls and event writes fail), then down again as the
    run ends (its finalisation waits): the run goes on, every event is stored once and in order, and
    the job ends successful."""
    config = app.config["GPUAAS"]
    monkeypatch.setattr(config, "JOB_LEASE_SECONDS", 4)
    monkeypatch.setattr(config, "JOB_LEASE_RENEW_SECONDS", 0.2)
    node, job_id = init_job(client, region)
    timeline, answers_while_down = {}, []

    def playbook(_job_id, _playbook, hosts, _vars, _data_dir, _key, on_event, should_cancel, **_kwargs):
        host = hosts[0].name
        for counter in range(1, 16):
            if counter == 6:
                database_down.set()
                timeline["down"] = time.monotonic()
                with app.app_context(), pytest.raises(OperationalError):  # down indeed, for every statement
                    session().execute(select(Job.id).limit(1))
            if counter == 11:
                database_down.clear()
                timeline["up"] = time.monotonic()
            on_event(runner_event(counter, host))
            answer = should_cancel()
            if database_down.is_set():
                answers_while_down.append(answer)
            time.sleep(0.3 if database_down.is_set() else 0.05)
        database_down.set()  # down as the run ends: its events and its finalisation wait
        threading.Timer(1.5, database_down.clear).start()
        return RunResult("successful", 0, {**SUCCEEDED, "processed": {host: 1}}, {}, {})

    assert execute_claimed(app, monkeypatch, playbook) == [job_id]

    assert timeline["up"] - timeline["down"] >= 1.4
    assert answers_while_down and not any(answers_while_down)  # never stopped for an unknown answer
    job = client.get(f"/api/jobs/{job_id}").get_json()
    assert job["status"] == "successful", job
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["status"] == "initialized"
    events = stored_events(app, job_id)
    assert [row.counter for row in events] == list(range(1, 16))  # each once, in order, none lost
    assert [row.stdout for row in events[5:10]] == [f"line {n}" for n in range(6, 11)]  # those emitted while down
    assert job["emitted_events"] == 15


def test_an_outage_longer_than_the_lease_stops_the_run_and_says_why(app, client, region, monkeypatch, database_down):
    """Past the lease another process may have taken the job over: the run stops at the lease's end.
    Its log is still stored once the database is back, and the finalisation, tried then, records why
    (nobody took the job over here; had anyone, it would change nothing: finalize's owner)."""
    config = app.config["GPUAAS"]
    monkeypatch.setattr(config, "JOB_LEASE_SECONDS", 1.5)
    monkeypatch.setattr(config, "JOB_LEASE_RENEW_SECONDS", 0.2)
    _node, job_id = init_job(client, region)
    stopped = {}

    def playbook(_job_id, _playbook, hosts, _vars, _data_dir, _key, on_event, should_cancel, **_kwargs):
        database_down.set()
        down_at = time.monotonic()
        on_event(runner_event(1, hosts[0].name))
        while not should_cancel():
            assert time.monotonic() - down_at < 10, "the run was never stopped"
            time.sleep(0.05)
        stopped["after"] = time.monotonic() - down_at
        threading.Timer(2, database_down.clear).start()
        return RunResult("canceled", None, SUCCEEDED, {}, {})

    execute_claimed(app, monkeypatch, playbook)

    assert 1.3 <= stopped["after"] < 3, stopped  # at the lease's end, not before
    assert [row.stdout for row in stored_events(app, job_id)] == ["line 1"]
    job = client.get(f"/api/jobs/{job_id}").get_json()
    assert job["status"] == "error" and job["explanation"].startswith("the run was stopped: its lease could not be renewed")


def test_a_host_whose_clock_runs_five_minutes_fast_expires_no_live_job(app, client, region, monkeypatch):
    _node, job_id = init_job(client, region, name="skewed")
    with app.app_context():
        assert claim_next() == [job_id]
    fast = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)
    monkeypatch.setattr(claims, "now", lambda: fast)  # this host's clock

    with app.app_context():
        skew = (claims.now() - claims.database_now()).total_seconds()
        assert 299 < skew < 301  # the setting took: this host is 5 minutes ahead of the database
        assert expire_lapsed("fast-host:1:00000000.1") == []
        assert session().get(Job, job_id).status is JobStatus.RUNNING
        # Wrong on purpose: a lease read by this host's clock would have been taken from its live owner.
        with monkeypatch.context() as wrong:
            wrong.setattr(lease_module, "database_now", claims.now)
            assert expire_lapsed("fast-host:1:00000000.1") == [job_id]


HOLD_AND_RECONCILE = r"""
import json, os, sys, time
from sqlalchemy import update
from gpuaas_api.app import create_app
from gpuaas_api.config import Config
from gpuaas_api.db import session
from gpuaas_api.jobs.claims import lease_until
from gpuaas_api.jobs.housekeeper import reconcile
from gpuaas_api.jobs.identity import claimant
from gpuaas_api.models import Job
from gpuaas_api.states import JobStatus

action, url, data_dir = sys.argv[1], sys.argv[2], sys.argv[3]
app = create_app(Config({"GPUAAS_DATABASE_URL": url, "GPUAAS_DATA_DIR": data_dir}))
with app.app_context():
    if action == "reconcile":
        print(json.dumps({"pid": os.getpid(), "finalised": reconcile(app)}), flush=True)
        sys.exit(0)
    job_id = int(sys.argv[4])
    session().execute(update(Job).where(Job.id == job_id).values(status=JobStatus.RUNNING, claimed_by=claimant(),
                                                                lease_expires_at=lease_until()))
    session().commit()
    print(json.dumps({"pid": os.getpid(), "claimant": claimant()}), flush=True)
    if action == "hold":
        time.sleep(120)
"""


def in_own_pid_namespace(hostname: str, script: str, *args: str) -> list[str]:
    """A shell as PID 1 of a new PID and UTS namespace, named ``hostname``; ``script``'s processes are
    its children, numbered from 2 in the same order in every such namespace, as a container's are."""
    source = str(Path(__import__("gpuaas_api").__file__).parents[1])
    return ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "--", "sh", "-c",
            f'hostname {hostname} && {script}', "sh", sys.executable, source, HOLD_AND_RECONCILE, *args]


@pytest.mark.skipif(os.geteuid() != 0, reason="PID namespaces need root (CI runs as root)")
def test_two_hosts_with_one_hostname_and_equal_pids_keep_their_own_jobs(app, client, region, migrated_database_url,
                                                                        tmp_path):
    """Host B holds its job; host A's process (the same hostname, the same pid, in its own namespace)
    claimed one and died; A's next process reconciles: it finalises its own dead job, not B's live one
    (with `claimed_by` = hostname:pid both jobs had one claimant, and B's pid is dead in A's namespace)."""
    _node_a, job_a = init_job(client, region, name="host-a-job")
    _node_b, job_b = init_job(client, region, name="host-b-job")
    run = 'PYTHONPATH="$2" "$1" -c "$3" "$4" "$5" "$6" "$7"'
    host_b = subprocess.Popen(in_own_pid_namespace("gpuaas-api", run, "hold", migrated_database_url,
                                                   str(tmp_path / "b"), str(job_b)), stdout=subprocess.PIPE, text=True)
    try:
        held = json.loads(host_b.stdout.readline())
        # In A's namespace: a process claims job A and exits (a crash), then the restarted service reconciles.
        host_a = subprocess.run(in_own_pid_namespace("gpuaas-api", f"{run} && {run.replace('$4', 'reconcile')}", "claim",
                                                     migrated_database_url, str(tmp_path / "a"), str(job_a)),
                                capture_output=True, text=True, timeout=120, check=True)
        claimed, reconciled = (json.loads(line) for line in host_a.stdout.splitlines())
    finally:
        host_b.kill()
        host_b.wait()

    assert held["pid"] == claimed["pid"]  # one hostname, one pid: only the scope tells them apart
    assert held["claimant"].split(":")[:2] == claimed["claimant"].split(":")[:2] == ["gpuaas-api", str(held["pid"])]
    assert held["claimant"] != claimed["claimant"]
    assert reconciled["finalised"] == [job_a]
    assert client.get(f"/api/jobs/{job_b}").get_json()["status"] == "running"
    assert client.get(f"/api/jobs/{job_a}").get_json()["status"] == "error"


def test_a_stop_lets_a_run_end_within_the_grace(app, client, region, monkeypatch):
    _node, job_id = init_job(client, region, name="drained")
    started = threading.Event()

    def playbook(_job_id, _playbook, hosts, *_args, **_kwargs):
        started.set()
        time.sleep(1)
        return RunResult("successful", 0, {**SUCCEEDED, "processed": {hosts[0].name: 1}}, {}, {})

    monkeypatch.setattr(worker_module, "run_playbook", playbook)
    workers = worker_module.start_workers(app, 1)
    assert started.wait(10)
    began = time.monotonic()
    assert workers.drain(grace=5) == []
    assert time.monotonic() - began < 3  # it waited for the run, not the whole grace
    assert client.get(f"/api/jobs/{job_id}").get_json()["status"] == "successful"
    assert not any(thread.is_alive() for thread in workers.threads)


def test_a_run_past_the_grace_is_handed_over_and_runs_again_without_overlap(app, client, region, monkeypatch):
    """The run is stopped as a cancel is, its job made pending again (not canceled, not failed), and
    the next process runs it from the start: one run after the other, its log numbered on."""
    node, job_id = init_job(client, region, name="handed")
    runs = []

    def playbook(_job_id, _playbook, hosts, _vars, _data_dir, _key, on_event, should_cancel, **_kwargs):
        runs.append({"start": time.monotonic()})
        for counter in range(1, 1000):
            on_event(runner_event(counter, hosts[0].name))
            if should_cancel():
                runs[-1]["end"] = time.monotonic()
                return RunResult("canceled", None, SUCCEEDED, {}, {})
            if len(runs) == 2 and counter == 3:
                runs[-1]["end"] = time.monotonic()
                return RunResult("successful", 0, {**SUCCEEDED, "processed": {hosts[0].name: 1}}, {}, {})
            time.sleep(0.05)
        raise AssertionError("never stopped")

    monkeypatch.setattr(worker_module, "run_playbook", playbook)
    workers = worker_module.start_workers(app, 1)
    deadline = time.monotonic() + 10
    while not runs and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert workers.drain(grace=0.5) == [job_id]
    job = client.get(f"/api/jobs/{job_id}").get_json()
    assert job["status"] == "pending" and job["started_at"] is None, job
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["status"] != "error"

    successor = worker_module.start_workers(app, 1)  # the service started again
    try:
        deadline = time.monotonic() + 10
        while client.get(f"/api/jobs/{job_id}").get_json()["status"] in ("pending", "running") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        successor.stop()
    assert client.get(f"/api/jobs/{job_id}").get_json()["status"] == "successful"
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["status"] == "initialized"
    assert len(runs) == 2 and runs[0]["end"] <= runs[1]["start"]
    counters = [row.counter for row in stored_events(app, job_id)]
    assert counters == sorted(set(counters)) and counters[-3:] == [counters[-4] + n for n in (1, 2, 3)]


def claimed_by_a_dead_host(app, job_id: int) -> None:
    """The job runs, claimed by a host that stopped renewing: its lease lapsed a second ago."""
    with app.app_context():
        assert claim_next() == [job_id]
        session().execute(update(Job).where(Job.id == job_id).values(
            claimed_by="gone-host:1:00000000.1", lease_expires_at=claims.database_now() - dt.timedelta(seconds=1)))
        session().commit()


def test_a_lapsed_lease_is_finalised_while_a_periodic_task_hangs(app, client, region, monkeypatch):
    """Recovery has a thread of its own: a metrics collection stuck on agents that never answer does
    not hold back the finalisation of a dead host's job."""
    monkeypatch.setattr(app.config["GPUAAS"], "JOB_LEASE_RENEW_SECONDS", 0.2)
    hung, unblock = threading.Event(), threading.Event()

    def hang(_config):
        hung.set()
        unblock.wait(30)

    _node, orphan = init_job(client, region, name="lapsed")
    claimed_by_a_dead_host(app, orphan)
    threads = [Housekeeper(app, [RECOVERY], "recovery", wait_first=True),
               Housekeeper(app, [PeriodicTask("a collection that hangs", lambda config: 0.1, hang)], "periodic")]
    for thread in threads:
        thread.start()
    try:
        assert hung.wait(5)
        deadline = time.monotonic() + 5
        while client.get(f"/api/jobs/{orphan}").get_json()["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get(f"/api/jobs/{orphan}").get_json()["status"] == "error"
        assert not unblock.is_set()  # finalised while the collection still hung
    finally:
        unblock.set()
        for thread in threads:
            thread.stopping.set()
            thread.join(10)


def test_one_housekeeper_for_both_would_wait_for_the_hung_task(app, client, region, monkeypatch):
    """The control for the test above: with recovery behind the hung task in one thread, the job stays running."""
    monkeypatch.setattr(app.config["GPUAAS"], "JOB_LEASE_RENEW_SECONDS", 0.2)
    hung, unblock = threading.Event(), threading.Event()
    _node, orphan = init_job(client, region, name="lapsed")
    claimed_by_a_dead_host(app, orphan)
    together = Housekeeper(app, [PeriodicTask("a collection that hangs", lambda config: 0.1,
                                              lambda config: (hung.set(), unblock.wait(30))), RECOVERY])
    together.start()
    try:
        assert hung.wait(5)
        time.sleep(1)
        assert client.get(f"/api/jobs/{orphan}").get_json()["status"] == "running"
    finally:
        unblock.set()
        together.stopping.set()
        together.join(10)
