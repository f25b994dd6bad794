"""Jobs' records: a node's logs are its own, and old jobs, events and scans are pruned.

No job runs here: events are stored as a run's writer stores them, and runs end through finalize().
"""
from __future__ import annotations

from sqlalchemy import select

from api_helpers import add_node
from gpuaas_api.db import session
from gpuaas_api.jobs.events import EventWriter
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.models import JobEvent, Node


def log_lines(app, node_id: int, count: int, job_id: int) -> None:
    with app.app_context():
        session().add_all([JobEvent(job_id=job_id, node_id=node_id, counter=counter, event="runner_on_ok",
                                    stdout=f"old line {counter}") for counter in range(count)])
        session().commit()


def events_of(app, job_id: int) -> list[tuple[int, int | None]]:
    with app.app_context():
        return [tuple(row) for row in session().execute(select(JobEvent.counter, JobEvent.node_id)
                                                         .where(JobEvent.job_id == job_id).order_by(JobEvent.counter))]


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
