"""Record a job: its operation accepts it (or refuses it), and it takes its nodes or queues behind
the jobs that hold them (queue.py). Flushed, not committed: the operation's request commits it."""
from __future__ import annotations

from sqlalchemy import select

from .. import actor
from ..db import session
from ..domain_errors import Refused
from ..models import Job, Node
from .claims import now
from .holds import jobs_ahead, take_nodes
from .hooks import hooks_for


def new_job(operation: str, *, mutating: bool, extravars: dict, node_id: int | None = None,
            cluster_id: int | None = None, pool_id: int | None = None) -> Job:
    """A job for ``operation``, not yet recorded, asked for by the request's actor (actor.py)."""
    return Job(created_at=now(), operation=operation, node_id=node_id, cluster_id=cluster_id, pool_id=pool_id,
               mutating=mutating, extravars=extravars, **actor.job_actor())


def submit(job: Job, targets: list[int]) -> Job:
    """Record ``job`` over ``targets`` (flushed): a mutating job takes them all or queues behind the
    jobs that hold or wait for any of them. Its operation's ``accepted`` hook may refuse it (Refused,
    everything rolled back). The job's ``queued_behind`` (not stored) names the job it waits for, or None."""
    db = session()
    db.add(job)
    db.flush()
    ahead = jobs_ahead(set(targets), before=job.id) if job.mutating else []
    holds = take_or_queue(job, targets, ahead) if job.mutating else False
    if not job.mutating:
        job.queued_behind = None
    reason = hooks_for(job.operation).accepted(job, ahead, holds)
    if reason:
        db.rollback()
        raise Refused(reason)
    actor.job_recorded(job.id)
    return job


def take_or_queue(job: Job, node_ids: list[int], ahead: list[Job]) -> bool:
    """Take ``node_ids`` for ``job`` (True), or set its ``queued_behind`` to the job it waits for."""
    job.queued_behind = ahead[-1].id if ahead else None
    if ahead:
        return False
    for _attempt in range(2):  # a request that took a node meanwhile may have ended meanwhile too
        if take_nodes(job, node_ids):
            return True
        job.queued_behind = session().scalar(select(Node.busy_job_id).where(
            Node.id.in_(node_ids), Node.busy_job_id.is_not(None), Node.busy_job_id != job.id).limit(1))
        if job.queued_behind is not None:
            return False  # queued behind the request that took it
    return False
