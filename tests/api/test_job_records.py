"""Jobs' records: a node's logs are its own, and old jobs, events and scans are pruned.

No job runs here: events are stored as a run's writer stores them, and runs end through finalize().
"""
from __future__ import annotations

import datetime as dt
import time
import uuid

from sqlalchemy import Delete, event, func, select

from api_helpers import add_node
from gpuaas_api.config import Config
from gpuaas_api.db import session
from gpuaas_api.jobs.events import EventWriter
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.jobs.housekeeper import Housekeeper
from gpuaas_api.jobs.retention import prune_jobs
from gpuaas_api.models import Job, JobEvent, Node, Scan
from gpuaas_api.operations.scans import prune_scans
from gpuaas_api.states import JobStatus, ScanStatus


def log_lines(app, node_id: int, count: int, job_id: int) -> None:
    with app.app_context():
        session().add_all([JobEvent(job_id=job_id, node_id=node_id, counter=counter, event="runner_on_ok",
                                    stdout=f"old line {counter}") for counter in range(count)])
        session().commit()


def events_of(app, job_id: int) -> list[tuple[int, int | None]]:
    with app.app_context():
        rows = session().execute(select(JobEvent.counter, JobEvent.node_id).where(JobEvent.job_id == job_id)
                                 .order_by(JobEvent.counter))
        return [tuple(row) for row in rows]


def test_a_node_given_a_deleted_nodes_id_shows_none_of_its_logs(app, client, region):
    old = add_node(client, region, name="old")
    job_id = client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={old['id']}").get_json()["job_id"]
    log_lines(app, old["id"], 3, job_id)
    with app.app_context():
        finalize(job_id, "successful", 0, "", {})
    assert client.get(f"/gpuaas/node/{old['id']}/logs").get_json()["total"] == 3
    assert client.delete(f"/gpuaas/node/{old['id']}/delete").status_code == 200

    if app.extensions["gpuaas_engine"].dialect.name == "sqlite":
        new = add_node(client, region, name="new")  # SQLite gives the next row the highest id + 1: the deleted one's
    else:  # a PostgreSQL sequence never gives an id twice: an id given explicitly (a restored dump) stands in
        with app.app_context():
            session().add(Node(id=old["id"], name="new", region_id=region["id"], node_ip="198.18.0.13", username="root",
                               is_worker_node=True))
            session().commit()
        new = client.get(f"/gpuaas/node/{old['id']}").get_json()

    assert new["id"] == old["id"] and new["name"] == "new"
    logs = client.get(f"/gpuaas/node/{new['id']}/logs").get_json()
    assert (logs["total"], logs["items"]) == (0, [])
    assert events_of(app, job_id) == [(0, None), (1, None), (2, None)]  # the job's own log stays


def test_events_of_a_node_deleted_during_its_run_stay_with_their_job(app, client, region):
    # A read-only job does not hold its node: the node may be deleted while the job runs.
    node = add_node(client, region)
    other = add_node(client, region, name="w2")
    job_id = client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}").get_json()["job_id"]
    other_job = client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={other['id']}").get_json()["job_id"]
    writer = EventWriter(app, {job_id: node["id"], other_job: other["id"]})
    assert client.delete(f"/gpuaas/node/{node['id']}/delete").status_code == 200

    writer.put(job_id, {"counter": 1, "event": "runner_on_ok", "stdout": "ok", "event_data": {"host": "node-1"}})
    writer.put(other_job, {"counter": 1, "event": "runner_on_ok", "stdout": "ok", "event_data": {"host": "node-2"}})

    assert writer.close() == {job_id: 1, other_job: 1}
    assert events_of(app, job_id) == [(1, None)]
    assert events_of(app, other_job) == [(1, other["id"])]


DAY = dt.timedelta(days=1)


def add_job(app, finished_days_ago: float | None, status: JobStatus = JobStatus.SUCCESSFUL, node_id: int | None = None,
            events: int = 0) -> int:
    """A job that finished that many days ago (None: unfinished, ``status`` pending or running), with events."""
    with app.app_context():
        at = dt.datetime.now(dt.timezone.utc) - DAY * (finished_days_ago or 0)
        job = Job(operation="test_conn", mutating=False, status=status, node_id=node_id,
                  finished_at=at if finished_days_ago is not None else None)
        session().add(job)
        session().flush()
        session().add_all([JobEvent(job_id=job.id, node_id=node_id, counter=counter, event="runner_on_ok")
                           for counter in range(events)])
        session().commit()
        return job.id


def remaining(app, model) -> list[int]:
    with app.app_context():
        return list(session().scalars(select(model.id).order_by(model.id)))


def events_per_job(app) -> dict[int, int]:
    with app.app_context():
        return dict(session().execute(select(JobEvent.job_id, func.count(JobEvent.id)).group_by(JobEvent.job_id)).all())


def test_finished_jobs_past_retention_go_with_their_events(app, client, region):
    node = add_node(client, region)
    old = add_job(app, 31, node_id=node["id"], events=3)
    old_failed = add_job(app, 40, JobStatus.FAILED, events=2)
    held = add_job(app, 31, JobStatus.ERROR, node_id=node["id"], events=1)  # a node still names it
    pending = add_job(app, None, JobStatus.PENDING)
    running = add_job(app, None, JobStatus.RUNNING, events=1)
    recent = add_job(app, 29, events=1)
    with app.app_context():
        session().get(Node, node["id"]).busy_job_id = held
        session().commit()
        assert prune_jobs(30) == 2
        assert prune_jobs(30) == 0
        assert prune_jobs(0) == 0  # 0 keeps them all

    assert remaining(app, Job) == [held, pending, running, recent]
    assert events_per_job(app) == {held: 1, running: 1, recent: 1}
    assert old < old_failed < held


def test_the_newest_job_stays_so_that_sqlite_never_gives_its_id_again(app):
    jobs = [add_job(app, 100) for _job in range(3)]
    with app.app_context():
        assert prune_jobs(30) == 2
    assert remaining(app, Job) == [jobs[-1]]


def test_jobs_and_events_are_deleted_a_chunk_at_a_time(app):
    jobs = [add_job(app, 100, events=7) for _job in range(5)]
    add_job(app, 0)  # the newest stays
    deleted: list[int] = []
    engine = app.extensions["gpuaas_engine"]

    def count_deletes(_connection, statement, _parameters, _multiparams, _options, result):
        if isinstance(statement, Delete):
            deleted.append(result.rowcount)

    event.listen(engine, "after_execute", count_deletes)
    try:
        with app.app_context():
            assert prune_jobs(30, job_chunk=2, event_chunk=4) == 5
    finally:
        event.remove(engine, "after_execute", count_deletes)

    assert set(remaining(app, Job)).isdisjoint(jobs) and sum(events_per_job(app).values()) == 0
    assert max(deleted) <= 4 and sum(deleted) == 5 * 7 + 5, deleted  # never more than a chunk in one statement


def add_scan(app, node_id: int, kind: str, days_ago: float, status: ScanStatus = ScanStatus.COMPLETED) -> int:
    with app.app_context():
        scan = Scan(request_id=str(uuid.uuid4()), kind=kind, node_id=node_id, status=status,
                    created_at=dt.datetime.now(dt.timezone.utc) - DAY * days_ago)
        session().add(scan)
        session().commit()
        return scan.id


def test_scans_past_retention_go_but_each_nodes_latest_of_each_kind_stays(app, client, region):
    first, second = add_node(client, region), add_node(client, region, name="w2")
    old = [add_scan(app, first["id"], "gpus", 50 - day) for day in range(3)]  # the third is the node's latest gpus scan
    old_npus = add_scan(app, first["id"], "npus", 60)  # its latest npus scan
    processing = add_scan(app, second["id"], "gpus", 60, ScanStatus.PROCESSING)
    second_old = add_scan(app, second["id"], "gpus", 40)
    second_latest = add_scan(app, second["id"], "gpus", 1)
    with app.app_context():
        assert prune_scans(30, chunk=1) == 3
        assert prune_scans(30) == 0 and prune_scans(0) == 0

    assert remaining(app, Scan) == [old[2], old_npus, processing, second_latest]
    assert second_old not in remaining(app, Scan)


def test_the_housekeeper_prunes_jobs_and_scans(app, client, region):
    node = add_node(client, region)
    old_job = add_job(app, 100, events=2)
    add_job(app, 0)
    old_scan, latest_scan = add_scan(app, node["id"], "gpus", 100), add_scan(app, node["id"], "gpus", 0)
    housekeeper = Housekeeper(app)
    housekeeper.start()
    try:
        deadline = time.monotonic() + 10
        while (old_job in remaining(app, Job) or old_scan in remaining(app, Scan)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        housekeeper.stopping.set()
        housekeeper.join(5)

    assert old_job not in remaining(app, Job) and remaining(app, Scan) == [latest_scan]


def test_the_retention_settings(tmp_path):
    config = Config({"GPUAAS_DATA_DIR": str(tmp_path)})
    assert (config.JOB_RETENTION_DAYS, config.SCAN_RETENTION_DAYS) == (90, 90)
