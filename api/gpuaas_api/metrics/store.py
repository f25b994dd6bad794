"""Pool GPU samples: stored raw, summed into per-pool rollups as they arrive, read back as series.

A query over 30 days of 1-minute samples of 64 GPUs would read 2.8 million raw rows; the rollups
hold one row per pool and bucket for each time grouping, so the same query reads at most one
row per bucket returned (bench/metrics_query.py).
"""
from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import case, delete, select, text
from sqlalchemy.dialects import postgresql, sqlite

from .. import node_reports
from ..db import session
from ..models import GpuReading, MetricRollup, MetricSample, StorageSample, TenantRollup, TenantTotal
from .series import BUCKET_OFFSET_SECONDS, GPU_METRICS, TIME_GROUPINGS

log = logging.getLogger(__name__)

_ROLLUP = MetricRollup.__table__


def bucket_start(epoch: int, width: int) -> int:
    """The start (epoch seconds) of the ``width``-second bucket holding ``epoch``."""
    offset = BUCKET_OFFSET_SECONDS.get(width, 0)
    return (epoch - offset) // width * width + offset


def record_gpu_samples(samples: list[dict]) -> int:
    """Store samples ({gpu_id, pool_id, sampled_at, <GPU_METRICS>}) and add them to their pools' rollups.

    Runs in the caller's transaction: the samples and the rollups commit together.
    """
    if not samples:
        return 0
    db = session()
    db.execute(MetricSample.__table__.insert(), samples)
    sums: dict[tuple[int, int, int], dict] = {}
    for sample in samples:
        if sample.get("pool_id") is None:
            continue
        epoch = int(sample["sampled_at"].timestamp())
        for width in TIME_GROUPINGS.values():
            key = (sample["pool_id"], width, bucket_start(epoch, width))
            row = sums.get(key)
            if row is None:
                row = sums[key] = {"pool_id": key[0], "width_seconds": width, "bucket_start": key[2], "samples": 0,
                                   **{f"{name}_sum": 0.0 for name in GPU_METRICS},
                                   **{f"{name}_max": float(sample[name]) for name in GPU_METRICS}}
            row["samples"] += 1
            for name in GPU_METRICS:
                row[f"{name}_sum"] += float(sample[name])
                row[f"{name}_max"] = max(row[f"{name}_max"], float(sample[name]))
    if sums:
        db.execute(_rollup_upsert(), list(sums.values()))
    newest: dict[int, dict] = {}
    for sample in samples:
        if sample["gpu_id"] not in newest or sample["sampled_at"] >= newest[sample["gpu_id"]]["sampled_at"]:
            newest[sample["gpu_id"]] = {key: value for key, value in sample.items() if key != "pool_id"}
    db.execute(upsert(GpuReading.__table__, ["gpu_id"], lambda table, new: {
        column: new[column] for column in ("sampled_at", *GPU_METRICS)}), list(newest.values()))
    return len(samples)


def upsert(table, keys: list[str], changes):
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET changes(table, excluded), on SQLite and PostgreSQL."""
    dialect = session().get_bind().dialect.name
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    return statement.on_conflict_do_update(index_elements=keys, set_=changes(table, statement.excluded))


def greater(current, new):
    """The greater of a column and the excluded row's value, in an upsert's SET."""
    return case((new > current, new), else_=current)


def _rollup_upsert():
    """Add to the bucket's sums and count, and raise its maxima."""
    def changes(table, new):
        merged = {"samples": table.c.samples + new.samples}
        for name in GPU_METRICS:
            merged[f"{name}_sum"] = table.c[f"{name}_sum"] + new[f"{name}_sum"]
            merged[f"{name}_max"] = greater(table.c[f"{name}_max"], new[f"{name}_max"])
        return merged
    return upsert(_ROLLUP, ["pool_id", "width_seconds", "bucket_start"], changes)


def pool_series_json(pool_id: int, width: int, start: dt.datetime, end: dt.datetime) -> str:
    """Every bucket overlapping [start, end) that has samples, as JSON text built by the database.

    A month of minutes is 43,200 buckets; building them as Python objects and encoding them took
    about 600 ms, the database's own JSON functions about a quarter of that (bench/metrics_query.py).
    Each bucket: {bucket_start (ISO 8601, UTC), samples, <metric>: {avg (2 decimals), max}}.
    """
    db = session()
    dialect = db.get_bind().dialect.name
    metrics = _SERIES_JOIN[dialect].join(_SERIES_METRIC[dialect].format(name=name) for name in GPU_METRICS)
    statement = text(_SERIES_SQL[dialect].format(metrics=metrics))
    return db.execute(statement, {"pool_id": pool_id, "width": width,
                                  "start": bucket_start(int(start.timestamp()), width),
                                  "end": end.timestamp()}).scalar_one()


_SERIES_METRIC = {
    "sqlite": "'{name}', json_object('avg', round({name}_sum / samples, 2), 'max', {name}_max)",
    # Plain concatenation: PostgreSQL's json_build_object took 315 ms for a month of minutes, this 114 ms.
    # round() of a float8 keeps it a float8, which PostgreSQL prints in its shortest exact form.
    "postgresql": """',"{name}":{{"avg":' || round({name}_sum * 100 / samples) / 100 || ',"max":' || {name}_max || '}}'""",
}
# The rows come in primary-key order (pool, width, bucket_start), which the aggregate keeps.
_SERIES_SQL = {
    "sqlite": """
        SELECT coalesce(json_group_array(json_object(
            'bucket_start', strftime('%Y-%m-%dT%H:%M:%S+00:00', bucket_start, 'unixepoch'),
            'samples', samples, {metrics})), '[]')
        FROM (SELECT * FROM metric_rollups
              WHERE pool_id = :pool_id AND width_seconds = :width AND bucket_start >= :start AND bucket_start < :end
              ORDER BY bucket_start)""",
    "postgresql": """
        SELECT '[' || coalesce(string_agg(
            '{{"bucket_start":"' || to_char(to_timestamp(bucket_start) AT TIME ZONE 'UTC',
                                           'YYYY-MM-DD"T"HH24:MI:SS"+00:00"')
            || '","samples":' || samples || {metrics} || '}}', ',' ORDER BY bucket_start), '') || ']'
        FROM metric_rollups
        WHERE pool_id = :pool_id AND width_seconds = :width AND bucket_start >= :start AND bucket_start < :end""",
}
_SERIES_JOIN = {"sqlite": ", ", "postgresql": " || "}


def latest_gpu_samples(gpu_ids: list[int]) -> dict[int, GpuReading]:
    """Each GPU's newest sample, by GPU id."""
    if not gpu_ids:
        return {}
    return {reading.gpu_id: reading for reading in session().scalars(
        select(GpuReading).where(GpuReading.gpu_id.in_(gpu_ids)))}


def record_storage_sample(node_id: int, sampled_at: dt.datetime, report: dict) -> None:
    """Store the checked parts of a node's storage report (node_reports.storage_report); a report
    that fails is not stored (a storage_metrics job has failed already: jobs/finalize.py)."""
    try:
        checked = node_reports.storage_report(report)
    except node_reports.InvalidNodeReport as refusal:
        log.warning("node %s: %s", node_id, refusal)
        return
    session().add(StorageSample(node_id=node_id, sampled_at=sampled_at, data=checked))


def latest_storage_sample(node_id: int) -> StorageSample | None:
    return session().scalars(select(StorageSample).where(StorageSample.node_id == node_id)
                             .order_by(StorageSample.sampled_at.desc(), StorageSample.id.desc()).limit(1)).first()


def prune(now: dt.datetime, raw_days: int, minute_days: int, rollup_days: int) -> None:
    """Forget raw samples older than ``raw_days``, minute rollups older than ``minute_days`` and the
    other rollups older than ``rollup_days`` (the GPUs' and the teams'), and teams unseen as long."""
    db = session()
    db.execute(delete(MetricSample).where(MetricSample.sampled_at < now - dt.timedelta(days=raw_days)))
    db.execute(delete(StorageSample).where(StorageSample.sampled_at < now - dt.timedelta(days=raw_days)))
    minute = TIME_GROUPINGS["minute"]
    for widths, days in (([minute], minute_days), ([w for w in TIME_GROUPINGS.values() if w != minute], rollup_days)):
        for rollup in (MetricRollup, TenantRollup):
            db.execute(delete(rollup).where(rollup.width_seconds.in_(widths),
                                            rollup.bucket_start < (now - dt.timedelta(days=days)).timestamp()))
    db.execute(delete(TenantTotal).where(TenantTotal.last_seen < now - dt.timedelta(days=rollup_days)))
