"""Pruning: the finished jobs of long ago go, with their events (GPUAAS_JOB_RETENTION_DAYS).

A job stays while anything still needs it: unfinished, held by a node (nodes.busy_job_id), or the
newest job (SQLite gives a new row the highest id + 1: without the newest job, the next one would
be given its id, and an audit record or a client's stored id would name another job). Deleted a
chunk at a time, each its own transaction, so that a large table is never locked for long.
"""
from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import delete, func, select

from ..db import session
from ..models import Job, JobEvent, Node
from ..states import JobStatus
from .claims import now as utc_now

log = logging.getLogger(__name__)
FINISHED = [status for status in JobStatus if status.finished]
# Jobs per transaction, and events per transaction (a run stores tens to thousands of events).
JOB_CHUNK = 200
EVENT_CHUNK = 5000


def prune_jobs(retention_days: int, now: dt.datetime | None = None, job_chunk: int = JOB_CHUNK,
               event_chunk: int = EVENT_CHUNK) -> int:
    """Delete the jobs finished more than ``retention_days`` ago, with their events (0 keeps them all);
    how many jobs went. Committed, a chunk at a time."""
    if retention_days <= 0:
        return 0
    db = session()
    cutoff = (now or utc_now()) - dt.timedelta(days=retention_days)
    removed = 0
    while ids := db.scalars(select(Job.id).where(*prunable(cutoff)).order_by(Job.id).limit(job_chunk)).all():
        delete_events(ids, event_chunk)
        gone = db.execute(delete(Job).where(Job.id.in_(ids), *prunable(cutoff))).rowcount
        db.commit()
        removed += gone
        if not gone:  # each of them was taken meanwhile: the next look would find them again
            break
    if removed:
        log.info("jobs: %d finished more than %d days ago deleted, with their events", removed, retention_days)
    return removed


def prunable(cutoff: dt.datetime) -> tuple:
    """The conditions of a job that may go: finished before ``cutoff``, held by no node, not the newest."""
    return (Job.status.in_(FINISHED), func.coalesce(Job.finished_at, Job.created_at) < cutoff,
            Job.id.not_in(select(Node.busy_job_id).where(Node.busy_job_id.is_not(None))),
            Job.id < select(func.max(Job.id)).scalar_subquery())


def delete_events(job_ids: list[int], chunk: int) -> None:
    """Delete the events of ``job_ids``, ``chunk`` at a time (each committed)."""
    db = session()
    while True:
        some = select(JobEvent.id).where(JobEvent.job_id.in_(job_ids)).limit(chunk)
        gone = db.execute(delete(JobEvent).where(JobEvent.id.in_(some))).rowcount
        db.commit()
        if gone < chunk:
            return
