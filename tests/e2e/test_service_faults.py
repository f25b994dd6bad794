"""Faults operators meet every month (issue #38), on the fleet with a real PostgreSQL server:
the database stopped for 20 s in the middle of a node init, and the service stopped (SIGTERM to
gunicorn's master, as `systemctl stop` with KillMode=mixed sends it) in the middle of another.

Each test prints its timeline (pytest -s shows it).
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time

import pytest
from sqlalchemy import create_engine, text

from fleet_service import REPO, Service, install_controller_key, job_processes

FLEET_NODES = 3
OUTAGE_SECONDS = 20
DRAIN_SECONDS = 3  # shorter than an init: the stop hands the run over


@pytest.fixture(scope="module")
def database(postgres_url):
    engine = create_engine(postgres_url, pool_pre_ping=True)  # its connections die with the outage too
    yield engine
    engine.dispose()


def query(database, sql: str, **params) -> list:
    with database.connect() as connection:
        return connection.execute(text(sql), params).all()


def postgres(action: str, url: str) -> None:
    """halt or resume the module's server (tests/api/postgres.sh); its directory is the URL's socket dir."""
    directory = url.split("host=")[1].split("&")[0]
    subprocess.run([str(REPO / "tests/api/postgres.sh"), action, directory], check=True, timeout=60)


@pytest.fixture(scope="module")
def service(running_fleet, postgres_url, tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("faults") / "var", env={
        "GPUAAS_DATABASE_URL": postgres_url, "GPUAAS_METRICS_INTERVAL_SECONDS": "0",
        "GPUAAS_JOB_DRAIN_SECONDS": str(DRAIN_SECONDS)})
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def nodes(service, running_fleet):
    region = service.api.call("POST", "/regions", {"region_name": "faults"}, expect=201)
    added = {}
    for name, spec in running_fleet["nodes"].items():
        added[name] = service.api.call("POST", "/gpuaas/node/add", {
            "name": f"{name} of the faults rack", "region_id": region["id"], "node_ip": spec["address"],
            "username": "root", "is_worker_node": True}, expect=201)["id"]
        install_controller_key(service.api, added[name], name)
    return added


def wait_mid_playbook(database, job_id: int, tasks: int = 3, timeout: float = 120) -> None:
    """Until the job's playbook has started ``tasks`` tasks: it is running, with more to come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = query(database, "SELECT count(*) FROM job_events WHERE job_id = :id AND event = 'runner_on_start'",
                        id=job_id)[0][0]
        if started >= tasks:
            return
        (status,) = query(database, "SELECT status FROM jobs WHERE id = :id", id=job_id)[0]
        assert status in ("pending", "running"), f"job {job_id} ended before the fault: {status}"
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach its playbook's tasks in {timeout}s")


def events_of(database, job_id: int) -> list:
    return query(database, "SELECT counter, event, created_at FROM job_events WHERE job_id = :id ORDER BY counter",
                 id=job_id)


def failures_of(database, job_id: int) -> list:
    """The failed tasks' output, for an assertion's message: what a failed run met."""
    return [row.stdout[-2000:] for row in query(
        database, "SELECT stdout FROM job_events WHERE job_id = :id AND event IN ('runner_on_failed', "
        "'runner_on_unreachable') ORDER BY counter", id=job_id)]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def test_a_database_outage_of_20_s_mid_init_loses_nothing(service, nodes, database, postgres_url):
    api = service.api
    node_id = nodes["node1"]
    submitted = time.monotonic()
    job_id = api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={node_id}")["job_id"]
    wait_mid_playbook(database, job_id)
    stored_before = len(events_of(database, job_id))

    postgres("halt", postgres_url)
    down, down_at = utc_now(), time.monotonic()
    try:
        time.sleep(OUTAGE_SECONDS)
        processes_during = job_processes(job_id)
    finally:
        postgres("resume", postgres_url)
    up, up_at = utc_now(), time.monotonic()
    job = api.wait_job(job_id, timeout=600)
    ended_at = time.monotonic()

    print(f"\ntimeline (s from submission): playbook mid-run and database down at {down_at - submitted:.1f}, "
          f"up at {up_at - submitted:.1f}, job {job['status']} at {ended_at - submitted:.1f}")
    assert processes_during, "the playbook was no longer running during the outage"
    assert job["status"] == "successful", (job, failures_of(database, job_id))
    assert api.call("GET", f"/gpuaas/node/{node_id}")["status"] == "initialized"
    events = events_of(database, job_id)
    counters = [row.counter for row in events]
    assert counters == list(range(1, len(counters) + 1)), "a gap or a repeat in the job's log"
    during = [row for row in events if down <= row.created_at <= up]
    assert during, "no event was created during the outage"
    assert len(events) > stored_before + len(during)  # and the run went on after it
    assert job["emitted_events"] == len(events)
    print(f"events: {len(events)} stored, {stored_before} before the outage, {len(during)} created during it")


def test_a_stop_mid_init_hands_the_job_over_and_the_next_start_runs_it(service, nodes, database):
    """SIGTERM to the master alone: it drains for GPUAAS_JOB_DRAIN_SECONDS, then stops the run and
    puts its job back to pending; no process of that run outlives the service; after the start the
    job runs again from the start and ends successful. Its two runs never overlap."""
    api = service.api
    node_id = nodes["node2"]
    job_id = api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={node_id}")["job_id"]
    wait_mid_playbook(database, job_id)
    assert job_processes(job_id)

    os.kill(service.process.pid, signal.SIGTERM)
    stopping = time.monotonic()
    service.process.wait(timeout=DRAIN_SECONDS + 30)
    stopped_in = time.monotonic() - stopping
    first_run_ended = utc_now()
    assert job_processes(job_id) == []  # the first run is over before any other can begin
    (status, claimed_by, started_at) = query(database, "SELECT status, claimed_by, started_at FROM jobs WHERE id = :id",
                                             id=job_id)[0]
    assert (status, claimed_by, started_at) == ("pending", None, None)
    assert "were handed over: pending again" in service.log_path.read_text()

    service.start()
    restarted = time.monotonic()
    job = service.api.wait_job(job_id, timeout=600)
    print(f"\nstopped in {stopped_in:.1f} s (drain {DRAIN_SECONDS} s); after the start the job ended {job['status']} "
          f"in {time.monotonic() - restarted:.1f} s")
    assert DRAIN_SECONDS <= stopped_in < DRAIN_SECONDS + 20
    assert job["status"] == "successful", (job, failures_of(database, job_id))
    assert service.api.call("GET", f"/gpuaas/node/{node_id}")["status"] == "initialized"
    events = events_of(database, job_id)
    starts = [row for row in events if row.event == "playbook_on_start"]
    assert len(starts) == 2
    assert [row.counter for row in events] == sorted({row.counter for row in events})  # numbered on, no repeat
    first = [row for row in events if row.counter < starts[1].counter]
    assert max(row.created_at for row in first) <= first_run_ended <= starts[1].created_at


def test_a_worker_killed_mid_init_takes_its_playbook_with_it_before_its_job_is_finalised(service, nodes, database):
    """gunicorn's master (child_exit) ends the dead worker's Ansible processes; the worker it starts in
    its place finds the job's claimant gone and finalises it, with nothing of the run left running."""
    from gpuaas_api.jobs.identity import Claimant

    if service.process.poll() is not None:
        service.start()
    api = service.api
    node_id = nodes["node3"]
    job_id = api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={node_id}")["job_id"]
    wait_mid_playbook(database, job_id)
    (claimed_by,) = query(database, "SELECT claimed_by FROM jobs WHERE id = :id", id=job_id)[0]
    worker = Claimant.parse(claimed_by).pid
    playbooks = job_processes(job_id)
    assert playbooks and worker not in playbooks

    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 10
    while job_processes(job_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    gone_in = time.monotonic() - killed
    assert job_processes(job_id) == [], "the dead worker's playbook ran on"
    assert "ended" in service.log_path.read_text().split(f"worker {worker} is gone")[1].splitlines()[0]
    job = api.wait_job(job_id, timeout=60)
    print(f"\nworker {worker} killed: its run's processes gone in {gone_in:.2f} s, its job {job['status']} "
          f"in {time.monotonic() - killed:.1f} s")
    assert job["status"] == "error" and "stopped before it finished" in job["explanation"], job
    assert api.call("GET", f"/gpuaas/node/{node_id}")["status"] == "error"
