"""The metrics collector: a periodic read-only job that samples every pool GPU and storage node.

Every GPUAAS_METRICS_INTERVAL_SECONDS one collect_metrics job runs the collection's playbook of
the same name over the nodes holding pool GPUs (gpu_info with metrics, through NVML) and the
storage nodes (storage_info). Its result is stored when the job is finalised (store_collection).
It is a job like any other: its events, its explanation and its processes are those of a job.

The job workers of every API process call ``tick``; the shared schedule row makes one of them
submit the period's job (see models.Schedule).
"""
from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ..config import Config
from ..db import session
from ..models import Gpu, Job, Node, Schedule
from ..states import GPU_METRICS, GpuAssignment, JobStatus, NodeStatus, Operation
from .store import prune, record_gpu_samples, record_storage_sample

log = logging.getLogger(__name__)
SCHEDULE = "metrics"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def claim_period(interval_seconds: float, at: dt.datetime | None = None) -> bool:
    """True for exactly one caller per period, across threads and processes."""
    db = session()
    at = at or now()
    if db.get(Schedule, SCHEDULE) is None:
        try:
            db.add(Schedule(name=SCHEDULE, next_run_at=at))
            db.commit()
        except IntegrityError:  # another process made it first
            db.rollback()
    won = db.execute(update(Schedule).where(Schedule.name == SCHEDULE, Schedule.next_run_at <= at)
                     .values(next_run_at=at + dt.timedelta(seconds=interval_seconds))).rowcount == 1
    db.commit()
    return won


def collection_targets() -> tuple[list[Node], list[Node]]:
    """The nodes to sample: those holding pool GPUs, and storage nodes; none that a mutating job holds
    (a reboot or a pool change would read as an outage)."""
    db = session()
    usable = (Node.status != NodeStatus.UNINITIALIZED, Node.busy_job_id.is_(None))
    gpu_nodes = db.scalars(select(Node).where(*usable, Node.id.in_(
        select(Gpu.node_id).where(Gpu.pool_id.is_not(None)))).order_by(Node.id)).all()
    storage_nodes = db.scalars(select(Node).where(*usable, Node.is_storage_service).order_by(Node.id)).all()
    return gpu_nodes, storage_nodes


def unfinished_collection() -> bool:
    return session().scalar(select(Job.id).where(Job.operation == Operation.COLLECT_METRICS.value,
                                                 Job.status.in_((JobStatus.PENDING, JobStatus.RUNNING)))
                            .limit(1)) is not None


def submit_collection() -> Job | None:
    """Record the period's collect_metrics job; none while the last one is unfinished or nothing is to sample."""
    db = session()
    if unfinished_collection():
        db.rollback()
        return None
    gpu_nodes, storage_nodes = collection_targets()
    if not (gpu_nodes or storage_nodes):
        db.rollback()
        return None
    node_ids = sorted({node.id for node in (*gpu_nodes, *storage_nodes)})
    job = Job(created_at=now(), operation=Operation.COLLECT_METRICS.value, node_id=None, mutating=False,
              extravars={"hosts": node_ids, "targets": node_ids,
                         "vars": {"collect_metrics_gpu_hosts": [node.inventory_name for node in gpu_nodes],
                                  "collect_metrics_storage_hosts": [node.inventory_name for node in storage_nodes]}})
    db.add(job)
    db.commit()
    return job


def tick(config: Config) -> Job | None:
    """Called often by every job worker: submits a collection when this period is due and unclaimed."""
    if config.METRICS_INTERVAL_SECONDS <= 0 or not claim_period(config.METRICS_INTERVAL_SECONDS):
        return None
    job = submit_collection()
    if job is not None:
        log.info("metrics collection: job %s over %d node(s)", job.id, len(job.extravars["targets"]))
    return job


def store_collection(job: Job, artifact_data: dict, node_succeeded: dict[int, bool], config: Config) -> None:
    """Store what the collection read, and say which pool GPUs cannot be used now (UNAVAILABLE) or again.

    A pool GPU is UNAVAILABLE when its node did not answer or NVML no longer reports it; it is
    ASSIGNED again once it answers. GPUs in the middle of a pool change are left to that change.
    """
    db = session()
    sampled_at = job.finished_at or now()
    gpu_reports = artifact_data.get("gpuaas_gpu_scan", {})
    storage_reports = artifact_data.get("gpuaas_storage_metrics", {})
    gpu_hosts = set(job.extravars.get("vars", {}).get("collect_metrics_gpu_hosts", []))
    samples = []
    for node_id, succeeded in node_succeeded.items():
        node = db.get(Node, node_id)
        if node is None:
            continue
        if succeeded and node.inventory_name in storage_reports:
            record_storage_sample(node.id, sampled_at, storage_reports[node.inventory_name])
        if node.inventory_name not in gpu_hosts:
            continue
        report = gpu_reports.get(node.inventory_name) if succeeded else None
        readings = {entry["uuid"]: entry for entry in (report or {}).get("gpus", [])
                    if entry.get("status") == "ok" and "metrics" in entry}
        for gpu in db.scalars(select(Gpu).where(Gpu.node_id == node.id, Gpu.pool_id.is_not(None))).all():
            reading = readings.get(gpu.uuid)
            if reading is None:
                if gpu.assignment_status is GpuAssignment.ASSIGNED:
                    gpu.assignment_status = GpuAssignment.UNAVAILABLE
                continue
            if gpu.assignment_status is GpuAssignment.UNAVAILABLE:
                gpu.assignment_status = GpuAssignment.ASSIGNED
            metrics = reading["metrics"]
            samples.append({"gpu_id": gpu.id, "pool_id": gpu.pool_id, "sampled_at": sampled_at,
                            **{name: float(metrics[name]) for name in GPU_METRICS}})
    record_gpu_samples(samples)
    prune(sampled_at, config.METRICS_RAW_RETENTION_DAYS, config.METRICS_MINUTE_RETENTION_DAYS,
          config.METRICS_ROLLUP_RETENTION_DAYS)
    # The collections' own job records (and their events) go with the raw samples they produced.
    db.execute(delete(Job).where(Job.operation == Operation.COLLECT_METRICS.value, Job.id != job.id,
                                 Job.finished_at < sampled_at - dt.timedelta(days=config.METRICS_RAW_RETENTION_DAYS)))
