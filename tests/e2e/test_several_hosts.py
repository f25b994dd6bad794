"""Several service hosts (issue #13): two `gpuaas-api serve` hosts on one PostgreSQL, driving the fleet.

Each host has its own hostname, PID namespace and data directory (conftest.NamespacedService), so
killing a host kills its playbooks too, and `claimed_by` ("<hostname>:<pid>:<scope>.<start>") tells which host ran
a job. Both share the database and GPUAAS_SECRET_KEY, with short leases.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from fleet_service import ADMIN, NamespacedService, install_controller_key, job_processes
from gpuaas_api.jobs.identity import Claimant

FLEET_NODES = 2
LEASE_SECONDS, RENEW_SECONDS = 8, 2
# A lapsed lease is finalised by the next reconcile of any worker: every min(30, RENEW_SECONDS).
FINALISED_WITHIN = LEASE_SECONDS + RENEW_SECONDS + 3


@pytest.fixture(scope="module")
def database(postgres_url):
    engine = create_engine(postgres_url)
    yield engine
    engine.dispose()


def query(database, sql: str, **params) -> list:
    with database.connect() as connection:
        return connection.execute(text(sql), params).all()


@pytest.fixture(scope="module")
def hosts(running_fleet, postgres_url, tmp_path_factory):
    secret = Fernet.generate_key().decode()
    started = []
    try:
        for name in ("host-a", "host-b"):  # one after the other: the first migrates the empty database
            host = NamespacedService(tmp_path_factory.mktemp(name) / "var", name, env={
                "GPUAAS_DATABASE_URL": postgres_url, "GPUAAS_SECRET_KEY": secret,
                "GPUAAS_JOB_LEASE_SECONDS": str(LEASE_SECONDS), "GPUAAS_JOB_LEASE_RENEW_SECONDS": str(RENEW_SECONDS),
                "GPUAAS_METRICS_INTERVAL_SECONDS": "0"})
            started.append(host)
            host.start()
        yield started
    finally:
        for host in started:
            host.stop()


@pytest.fixture(scope="module")
def nodes(hosts, running_fleet):
    api = hosts[0].api
    region = api.call("POST", "/regions", {"region_name": "twohosts"}, expect=201)
    out = {}
    for name in ("node1", "node2"):
        out[name] = api.call("POST", "/gpuaas/node/add", {
            "name": f"{name}-of-two", "region_id": region["id"],
            "node_ip": running_fleet["nodes"][name]["address"], "username": "root", "is_worker_node": True},
            expect=201)["id"]
        install_controller_key(hosts[1].api, out[name], name)  # the keys as the other host lists them
    return out


def host_of(hosts, claimed_by: str) -> NamespacedService:
    claimant = Claimant.parse(claimed_by)
    (host,) = [host for host in hosts if host.hostname == claimant.host]
    assert claimant.pid in host.local_pids(), f"{claimed_by} is no process of {claimant.host}"
    return host


def wait_running_mid_playbook(database, hosts, job_id: int, timeout: float = 60) -> tuple[str, NamespacedService]:
    """Once the job runs, its playbook has started on the host that claimed it and a task has
    begun: its claimant, and that host."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ((status, claimed_by),) = query(database, "SELECT status, claimed_by FROM jobs WHERE id = :id", id=job_id)
        tasks = query(database, "SELECT count(*) FROM job_events WHERE job_id = :id AND event = 'runner_on_start'",
                      id=job_id)[0][0]
        if status == "running" and tasks:
            holder = host_of(hosts, claimed_by)
            if holder.playbook_pids():
                return claimed_by, holder
        assert status in ("pending", "running"), f"job {job_id} ended before the test could interrupt it: {status}"
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach its playbook's tasks in {timeout}s")


def wait_claimed(database, job_id: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while query(database, "SELECT status FROM jobs WHERE id = :id", id=job_id)[0][0] == "pending":
        assert time.monotonic() < deadline, f"job {job_id} was not claimed in {timeout}s"
        time.sleep(0.02)


def job_row(database, job_id: int) -> dict:
    (row,) = query(database, "SELECT status, rc, explanation, finished_at, claimed_by, result FROM jobs "
                             "WHERE id = :id", id=job_id)
    return dict(row._mapping)


def node_row(database, node_id: int) -> dict:
    (row,) = query(database, "SELECT status, busy_job_id FROM nodes WHERE id = :id", id=node_id)
    return dict(row._mapping)


def test_ssh_keys_is_the_same_on_both_hosts(hosts, nodes, database):
    a, b = hosts
    for node_id in nodes.values():
        listed = [host.api.call("GET", f"/gpuaas/node/{node_id}/ssh_keys") for host in hosts]
        assert listed[0] == listed[1] and len(listed[0]) == 1
    (active,) = query(database, "SELECT public_key FROM controller_keys WHERE state = 'active'")
    assert [active[0]] == listed[0]
    assert a.api.token != b.api.token  # each host logged in on its own, one user: ADMIN
    assert query(database, "SELECT count(*) FROM users WHERE username = :name", name=ADMIN["username"])[0][0] == 1


def test_jobs_submitted_to_either_host_run_on_either_exactly_once(hosts, nodes, database):
    """Connection checks on one node, through one host, each sent once the one before it is claimed
    (an identical request while one is still pending is answered with that job): same-node checks
    never share a run, so with 4 job threads a host runs at most 4 at a time and the other host
    takes the rest."""
    a, b = hosts
    submitted = {}
    for via, node in ((a, "node1"), (b, "node2")):
        ids = []
        for _job in range(6):
            ids.append(via.api.call("GET", f"/gpuaas/node/test_conn?gpuaas_node_id={nodes[node]}")["job_id"])
            wait_claimed(database, ids[-1])
        assert len(set(ids)) == 6
        for job_id in ids:
            assert via.api.wait_job(job_id, timeout=120)["status"] == "successful"
            submitted[job_id] = via
    ran_on = {}
    for job_id, via in submitted.items():
        ran_on[job_id] = host_of(hosts, job_row(database, job_id)["claimed_by"])
        # One playbook run for each job: one start, and the host's result once.
        events = query(database, "SELECT event, host, count(*) FROM job_events WHERE job_id = :id "
                                 "AND event IN ('playbook_on_start', 'playbook_on_stats') GROUP BY event, host",
                       id=job_id)
        assert sorted((event, count) for event, _host, count in events) == [
            ("playbook_on_start", 1), ("playbook_on_stats", 1)], (job_id, events)
        counters = query(database, "SELECT count(*), count(DISTINCT counter) FROM job_events WHERE job_id = :id",
                         id=job_id)[0]
        assert counters[0] == counters[1]
    for via in hosts:
        other = b if via is a else a
        mine = [job_id for job_id, through in submitted.items() if through is via]
        assert {ran_on[job_id] for job_id in mine} == {a, b}, \
            f"jobs submitted to {via.hostname}: {[ran_on[job_id].hostname for job_id in mine]}"
        assert sum(ran_on[job_id] is other for job_id in mine) >= 2
    # Both hosts' jobs authenticated with the one identity: the same private key in each data dir.
    keys = [sorted((host.data_dir / "ssh").glob("controller-*")) for host in hosts]
    assert [len(found) for found in keys] == [1, 1] and keys[0][0].name == keys[1][0].name
    assert keys[0][0].read_bytes() == keys[1][0].read_bytes()
    assert not any((host.data_dir / "ssh" / "id_ed25519").exists() for host in hosts)  # no host key of its own


def test_a_stopped_host_that_lost_its_lease_stops_its_run_and_overwrites_nothing(hosts, nodes, database):
    """The stop stays shorter than gunicorn's worker timeout (30 s): past it, the master of the
    resumed host may kill its own workers first, and this test is about the lease."""
    node_id = nodes["node2"]
    job_id = hosts[0].api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={node_id}")["job_id"]
    claimed_by, holder = wait_running_mid_playbook(database, hosts, job_id)
    other = hosts[1] if holder is hosts[0] else hosts[0]
    playbooks = holder.playbook_pids()

    holder.freeze()
    stopped = time.monotonic()
    try:
        job = other.api.wait_job(job_id, timeout=FINALISED_WITHIN + 5)
        took = time.monotonic() - stopped
        recorded, node_after = job_row(database, job_id), node_row(database, node_id)
        assert all(pid in holder.pids() for pid in playbooks)  # still there, stopped, while the other finalised
    finally:
        holder.thaw()
        frozen_for = time.monotonic() - stopped
    assert frozen_for < 25, frozen_for
    assert job["status"] == "error" and took < FINALISED_WITHIN, (job, took)
    assert job["explanation"].startswith(f"the API process {claimed_by} stopped renewing its lease")
    assert recorded["claimed_by"].startswith(f"{other.hostname}:")
    assert node_after == {"status": "error", "busy_job_id": None}

    # Resumed, the holder finds its renewal refused and stops its playbook...
    deadline = time.monotonic() + 20
    while (holder.playbook_pids() or job_processes(job_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert holder.playbook_pids() == [] and job_processes(job_id) == []
    deadline = time.monotonic() + 10
    while "not finalised by" not in holder.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = holder.log_path.read_text()
    assert f"jobs [{job_id}]: lease lost" in log
    assert f"job {job_id}: not finalised by {claimed_by}, which no longer holds it" in log
    assert list((holder.data_dir / "jobs").glob(f"job-{job_id}-*")) == []  # its run ended as a cancel does
    # ...and what the other host recorded stands.
    time.sleep(1)
    assert job_row(database, job_id) == recorded
    assert node_row(database, node_id) == {"status": "error", "busy_job_id": None}
    assert holder.api.call("GET", f"/api/jobs/{job_id}") == other.api.call("GET", f"/api/jobs/{job_id}")
    assert holder.api.call("GET", "/api/health", expect=None)[0] == 200  # the host itself goes on


def test_a_host_killed_mid_job_is_finalised_by_the_other_and_a_retry_succeeds(hosts, nodes, database):
    node_id = nodes["node1"]
    job_id = hosts[1].api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={node_id}")["job_id"]
    claimed_by, holder = wait_running_mid_playbook(database, hosts, job_id)
    survivor = hosts[1] if holder is hosts[0] else hosts[0]
    playbooks = holder.playbook_pids()
    assert playbooks

    holder.kill()  # SIGKILL of its PID 1; kill() also waits until the namespace is empty
    killed = time.monotonic()
    assert not any(Path(f"/proc/{pid}").exists() for pid in playbooks)  # its playbooks died with it
    assert job_processes(job_id) == []  # and every other process of the run

    job = survivor.api.wait_job(job_id, timeout=FINALISED_WITHIN + 5)
    took = time.monotonic() - killed
    assert job["status"] == "error" and took < FINALISED_WITHIN, (job, took)
    assert job["explanation"].startswith(f"the API process {claimed_by} stopped renewing its lease")
    assert node_row(database, node_id) == {"status": "error", "busy_job_id": None}  # free again

    retry = survivor.api.run("GET", f"/gpuaas/node/init?gpuaas_node_id={node_id}", timeout=300)
    assert retry["status"] == "successful", retry
    assert job_row(database, retry["id"])["claimed_by"].startswith(f"{survivor.hostname}:")
    assert node_row(database, node_id) == {"status": "initialized", "busy_job_id": None}
