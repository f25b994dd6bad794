"""Pool metrics: the collector's jobs, the stored samples and rollups, the series, storage, /metrics."""
from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from api_helpers import assert_error, create, settle
from gpuaas_api import create_app
from gpuaas_api.config import Config
from gpuaas_api.db import session
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.metrics.collector import claim_period, submit_collection, tick
from gpuaas_api.metrics.store import record_gpu_samples
from gpuaas_api.models import Gpu, Job, JobEvent, MetricRollup, MetricSample, Node
from gpuaas_api.states import GpuAssignment

UTC = dt.timezone.utc
MONDAY_10 = dt.datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def active_pool(app, client, fleet_db, **pool) -> dict:
    reply = create(client, fleet_db, **pool).get_json()
    settle(app, reply)
    return reply


def record(app, pool_id: int, at: dt.datetime, utilization: float) -> None:
    """Store one reading of every GPU of the pool, through the collector's own path."""
    with app.app_context():
        gpu_ids = session().scalars(select(Gpu.id).where(Gpu.pool_id == pool_id)).all()
        record_gpu_samples([{"gpu_id": gpu_id, "pool_id": pool_id, "sampled_at": at,
                             "utilization_gpu_percent": utilization, "memory_used_mb": 1000.0 + utilization,
                             "temperature_c": 40.0, "power_w": 200.0} for gpu_id in gpu_ids])
        session().commit()


def series(client, pool_id: int, query: str) -> list[tuple]:
    reply = client.get(f"/gpuaas/pool/{pool_id}/metrics?{query}")
    assert reply.status_code == 200, reply.get_json()
    return [(b["bucket_start"], b["samples"], b["utilization_gpu_percent"]) for b in reply.get_json()["series"]]


def reading(uuid: str, utilization: int) -> dict:
    return {"uuid": uuid, "status": "ok", "metrics": {"utilization_gpu_percent": utilization,
                                                      "utilization_memory_percent": 5, "memory_used_mb": 2048,
                                                      "temperature_c": 51, "power_w": 123.4}}


def collect(app, reports: dict, unreachable=()) -> Job:
    """Run the collector's job to its end as the nodes would answer: ``reports`` per node name."""
    with app.app_context():
        job = submit_collection()
        assert job is not None
        nodes = session().scalars(select(Node)).all()
        names = {node.id: node.name for node in nodes}
        hosts = {node.name: node.inventory_name for node in nodes}  # the artifact is keyed by inventory name
        outcomes = {node_id: names[node_id] not in unreachable for node_id in job.extravars["targets"]}
        artifact = {"gpuaas_gpu_scan": {hosts[name]: {"gpus": gpus} for name, gpus in reports.items()
                                        if name not in unreachable}}
        finalize(job.id, "failed" if unreachable else "successful", 4 if unreachable else 0, "", artifact,
                 host_outcomes=outcomes)
        return job


def test_each_time_grouping_buckets_the_samples_with_avg_and_max(app, client, fleet_db):
    pool = active_pool(app, client, fleet_db)  # two GPUs
    for offset, utilization in ((dt.timedelta(0), 10.0), (dt.timedelta(minutes=1), 30.0),
                                (dt.timedelta(minutes=61), 50.0), (dt.timedelta(days=1), 70.0),
                                (dt.timedelta(days=8), 90.0)):
        record(app, pool["id"], MONDAY_10 + offset, utilization)
    window = "from=2026-11-01T00:00:00Z&to=2026-11-16T00:00:00Z"

    assert series(client, pool["id"], "time_grouping=minute&from=2026-11-02T10:00:00Z&to=2026-11-02T10:02:00Z") == [
        ("2026-11-02T10:00:00+00:00", 2, {"avg": 10.0, "max": 10.0}),
        ("2026-11-02T10:01:00+00:00", 2, {"avg": 30.0, "max": 30.0})]
    assert series(client, pool["id"], "time_grouping=1h&from=2026-11-02T10:00:00Z&to=2026-11-02T12:00:00Z") == [
        ("2026-11-02T10:00:00+00:00", 4, {"avg": 20.0, "max": 30.0}),
        ("2026-11-02T11:00:00+00:00", 2, {"avg": 50.0, "max": 50.0})]
    assert series(client, pool["id"], f"time_grouping=day&{window}") == [
        ("2026-11-02T00:00:00+00:00", 6, {"avg": 30.0, "max": 50.0}),
        ("2026-11-03T00:00:00+00:00", 2, {"avg": 70.0, "max": 70.0}),
        ("2026-11-10T00:00:00+00:00", 2, {"avg": 90.0, "max": 90.0})]
    # Weeks start on Monday (UTC).
    assert series(client, pool["id"], f"time_grouping=1w&{window}") == [
        ("2026-11-02T00:00:00+00:00", 8, {"avg": 40.0, "max": 70.0}),
        ("2026-11-09T00:00:00+00:00", 2, {"avg": 90.0, "max": 90.0})]
    assert series(client, pool["id"], f"time_grouping=1d&{window}") == series(
        client, pool["id"], f"time_grouping=day&{window}")


def test_from_and_to_bound_the_series(app, client, fleet_db):
    pool = active_pool(app, client, fleet_db)
    for minute in range(5):
        record(app, pool["id"], MONDAY_10 + dt.timedelta(minutes=minute), float(minute))

    # A bucket is in the series when it overlaps [from, to).
    assert [b[0][11:16] for b in series(client, pool["id"], "time_grouping=minute&from=2026-11-02T10:01:30Z"
                                                            "&to=2026-11-02T10:04:00Z")] == ["10:01", "10:02", "10:03"]
    # Without bounds: the last 60 buckets up to now, which hold none of these old samples.
    reply = client.get(f"/gpuaas/pool/{pool['id']}/metrics?time_grouping=minute").get_json()
    assert reply["series"] == []
    assert dt.datetime.fromisoformat(reply["to"]) - dt.datetime.fromisoformat(reply["from"]) == dt.timedelta(hours=1)


@pytest.mark.parametrize("query, field", [("time_grouping=fortnight", "time_grouping"),
                                          ("from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "from"),
                                          ("from=yesterday", "from")])
def test_a_bad_query_is_a_field_error(app, client, fleet_db, query, field):
    pool = active_pool(app, client, fleet_db)
    assert_error(client.get(f"/gpuaas/pool/{pool['id']}/metrics?{query}"), 422, field=field)
    assert_error(client.get("/gpuaas/pool/999/metrics"), 404)


def test_a_collection_stores_each_pool_gpus_reading(app, client, fleet_db):
    uuids = fleet_db["uuids"]
    pool = active_pool(app, client, fleet_db, attach_gpu_ids=uuids["w1"] + uuids["w2"][:1])

    job = collect(app, {"w1": [reading(uuids["w1"][0], 10), reading(uuids["w1"][1], 30)],
                        "w2": [reading(uuids["w2"][0], 50), reading(uuids["w2"][1], 99)]})

    assert job.extravars["vars"] == {"collect_metrics_gpu_hosts": ["node-1", "node-2"],
                                     "collect_metrics_storage_hosts": []}
    reply = client.get(f"/gpuaas/pool/{pool['id']}/metrics?time_grouping=minute").get_json()
    assert [(b["samples"], b["utilization_gpu_percent"]) for b in reply["series"]] == [(3, {"avg": 30.0, "max": 50.0})]
    assert (reply["slots_total"], reply["slots_assigned"], reply["slots_unavailable"]) == (12, 12, 0)
    usage = reply["usage"]
    assert (usage["sampled_gpus"], usage["utilization_gpu_percent"], usage["memory_used_mb"]) == (3, 30.0, 6144)
    assert usage["memory_total_mb"] == 3 * 81559
    assert {gpu["uuid"]: gpu["power_w"] for gpu in usage["gpus"]} == {uuid: 123.4 for uuid in uuids["w1"] + uuids["w2"][:1]}
    with app.app_context():  # the GPU outside any pool is not sampled
        assert session().scalar(select(func.count(MetricSample.id))) == 3


def test_an_unreachable_node_or_a_lost_gpu_is_unavailable_until_it_answers(app, client, fleet_db):
    uuids = fleet_db["uuids"]
    pool = active_pool(app, client, fleet_db, attach_gpu_ids=uuids["w1"] + uuids["w2"][:1])

    collect(app, {"w2": [reading(uuids["w2"][1], 1)]}, unreachable=("w1",))  # w2's pool GPU is lost

    def assignment():
        with app.app_context():
            return {gpu.uuid: gpu.assignment_status for gpu in session().scalars(select(Gpu))}
    after_outage = assignment()
    assert [after_outage[uuid] for uuid in uuids["w1"] + uuids["w2"]] == [
        GpuAssignment.UNAVAILABLE, GpuAssignment.UNAVAILABLE, GpuAssignment.UNAVAILABLE, GpuAssignment.UNASSIGNED]
    metrics = client.get(f"/gpuaas/pool/{pool['id']}/metrics").get_json()
    assert (metrics["slots_assigned"], metrics["slots_unavailable"]) == (0, 12)
    with app.app_context():
        job = session().scalars(select(Job).where(Job.operation == "collect_metrics")).one()
        assert job.status.value == "failed"

    collect(app, {"w1": [reading(u, 5) for u in uuids["w1"]], "w2": [reading(u, 5) for u in uuids["w2"]]})

    recovered = assignment()
    assert [recovered[uuid] for uuid in uuids["w1"] + uuids["w2"]] == [
        GpuAssignment.ASSIGNED, GpuAssignment.ASSIGNED, GpuAssignment.ASSIGNED, GpuAssignment.UNASSIGNED]


def test_one_caller_per_period_starts_the_collection(app):
    with app.app_context():
        assert claim_period(60, MONDAY_10)
        assert not claim_period(60, MONDAY_10)
        assert not claim_period(60, MONDAY_10 + dt.timedelta(seconds=59))
        assert claim_period(60, MONDAY_10 + dt.timedelta(seconds=60))


def test_the_collection_waits_for_its_last_run_and_skips_busy_nodes(app, client, fleet_db):
    with app.app_context():
        assert submit_collection() is None  # nothing is in a pool: nothing to sample
    pending = create(client, fleet_db).get_json()
    with app.app_context():
        assert submit_collection() is None  # w1 is held by the pool's apply job
    settle(app, pending)
    with app.app_context():
        first = submit_collection()
        assert [session().get(Node, node_id).name for node_id in first.extravars["targets"]] == ["w1"]
        assert submit_collection() is None  # the first is not finished


def test_a_zero_interval_turns_the_collector_off(app, client, fleet_db):
    active_pool(app, client, fleet_db)
    config = app.config["GPUAAS"]
    with app.app_context():
        config.METRICS_INTERVAL_SECONDS = 0
        assert tick(config) is None
        config.METRICS_INTERVAL_SECONDS = 60
        assert tick(config) is not None
        assert tick(config) is None  # same period


def test_storage_nodes_are_read_by_the_collection_and_served(app, client, storage_node):
    node_id = storage_node
    report = {"volume_groups": [{"name": "gpuaas", "size_bytes": 1000, "free_bytes": 400, "used_bytes": 600}],
              "volume_group": {"name": "gpuaas", "size_bytes": 1000, "free_bytes": 400, "used_bytes": 600},
              "filesystems": [{"path": "/", "size_bytes": 10, "used_bytes": 4, "free_bytes": 6}]}
    with app.app_context():
        job = submit_collection()
        assert job.extravars["vars"]["collect_metrics_storage_hosts"] == [f"node-{node_id}"]
        finalize(job.id, "successful", 0, "", {"gpuaas_storage_metrics": {f"node-{node_id}": report}},
                 host_outcomes={node_id: True})

    reply = client.get(f"/gpuaas/node/{node_id}/storage_metrics").get_json()

    assert reply["metrics"] == report and reply["collected_at"]
    assert reply["refresh_job_id"] > job.id
    assert f'gpuaas_storage_volume_group_free_bytes{{node="node-{node_id}",node_name="s1",volume_group="gpuaas"}} 400.0' in \
        client.get("/metrics").get_data(as_text=True)


def test_old_samples_rollups_and_collection_jobs_are_forgotten(app, client, fleet_db):
    uuids = fleet_db["uuids"]
    pool = active_pool(app, client, fleet_db)
    record(app, pool["id"], dt.datetime.now(UTC) - dt.timedelta(days=8), 1.0)  # past the raw retention (7 d)
    record(app, pool["id"], dt.datetime.now(UTC) - dt.timedelta(days=40), 1.0)  # past the minutes' (35 d)
    record(app, pool["id"], dt.datetime.now(UTC) - dt.timedelta(days=401), 1.0)  # past the rollups' (400 d)
    old = collect(app, {"w1": [reading(u, 5) for u in uuids["w1"]]})
    with app.app_context():
        session().get(Job, old.id).finished_at = dt.datetime.now(UTC) - dt.timedelta(days=8)
        session().add(JobEvent(job_id=old.id, counter=1, event="playbook_on_start"))
        session().commit()

    collect(app, {"w1": [reading(u, 5) for u in uuids["w1"]]})

    with app.app_context():
        db = session()
        cutoff = dt.datetime.now(UTC) - dt.timedelta(days=7)
        assert all(s.sampled_at.replace(tzinfo=s.sampled_at.tzinfo or UTC) > cutoff
                   for s in db.scalars(select(MetricSample)))
        assert db.scalar(select(func.count(MetricSample.id))) == 4  # both collections' readings of 2 GPUs
        oldest_rollup = db.scalar(select(func.min(MetricRollup.bucket_start)))
        assert oldest_rollup > (dt.datetime.now(UTC) - dt.timedelta(days=400)).timestamp() - 604800

        def rollups_older_than(days, width):
            return db.scalar(select(func.count(MetricRollup.bucket_start)).where(
                MetricRollup.bucket_start < (dt.datetime.now(UTC) - dt.timedelta(days=days)).timestamp(),
                MetricRollup.width_seconds == width))
        assert rollups_older_than(7, 60) == 1  # the 8-day-old minute survives in the rollups, the 40-day-old not
        assert rollups_older_than(39, 3600) == 1  # its hour does
        assert db.get(Job, old.id) is None
        assert db.scalar(select(func.count(JobEvent.id)).where(JobEvent.job_id == old.id)) == 0


def _families(text: str) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_prometheus_exposition_of_pools_gpus_nodes_and_jobs(app, client, fleet_db):
    uuids = fleet_db["uuids"]
    pool = active_pool(app, client, fleet_db)
    collect(app, {"w1": [reading(uuids["w1"][0], 10), reading(uuids["w1"][1], 30)]})

    assert_error(app.test_client().get("/metrics"), 401)  # a fresh client: no login cookie
    reply = client.get("/metrics")

    assert reply.status_code == 200 and reply.mimetype == "text/plain"
    values = _families(reply.get_data(as_text=True))
    labels = (("gpuaas_id", str(fleet_db["gpuaas_id"])), ("pool_id", str(pool["id"])),
              ("pool_name", "high-throughput-pool"))
    assert values[("gpuaas_pool_slots", labels)] == 8
    assert values[("gpuaas_pool_slots_assigned", labels)] == 8
    assert values[("gpuaas_gpus", (("assignment_status", "ASSIGNED"),))] == 2
    assert values[("gpuaas_gpus", (("assignment_status", "UNASSIGNED"),))] == 3
    assert values[("gpuaas_gpus", (("assignment_status", "UNAVAILABLE"),))] == 0
    assert values[("gpuaas_nodes", (("status", "healthy"),))] == 3
    assert values[("gpuaas_pools", (("status", "ACTIVE"),))] == 1
    assert values[("gpuaas_jobs", (("operation", "collect_metrics"), ("status", "successful")))] == 1
    gpu = (("node", "node-1"), ("node_name", "w1"), ("pool_id", str(pool["id"])), ("uuid", uuids["w1"][1]))
    assert values[("gpuaas_gpu_utilization_percent", gpu)] == 30
    assert values[("gpuaas_gpu_memory_used_bytes", gpu)] == 2048 * 1024 * 1024
    assert values[("gpuaas_gpu_power_watts", gpu)] == 123.4
    assert client.get("/api/metrics").status_code == 200


def test_metrics_can_be_public_for_scrapers_without_a_token(tmp_path, database_url):
    from gpuaas_api.migrate import upgrade

    config = Config({"GPUAAS_DATA_DIR": str(tmp_path / "data"), "GPUAAS_DATABASE_URL": database_url,
                     "GPUAAS_METRICS_PUBLIC": "true"})
    upgrade(database_url)
    app = create_app(config)
    anonymous = app.test_client()

    assert anonymous.get("/metrics").status_code == 200
    assert_error(anonymous.get("/api/regions"), 401)  # nothing else is opened
    app.extensions["gpuaas_engine"].dispose()
