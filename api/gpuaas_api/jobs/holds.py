"""Which nodes a job holds, and which jobs come before another on a node or pool.

A mutating job holds its nodes (Node.busy_job_id) while it runs. One submitted while its node or
pool was held by another job waits, pending, without holding anything (a queued job).
"""
from __future__ import annotations

from sqlalchemy import select, update

from ..db import session
from ..models import Job, Node
from ..states import JobStatus

UNFINISHED = (JobStatus.PENDING, JobStatus.RUNNING)


def lock_set(job: Job) -> list[int]:
    """The nodes a mutating job holds while it runs: its node, or a multi-node job's targets (for a
    queued pool change, the pool's nodes when it was queued)."""
    if not job.mutating:
        return []
    if job.node_id is not None:
        return [job.node_id]
    return list(job.extravars.get("targets", []))


def unfinished_mutating_jobs() -> list[Job]:
    return session().scalars(select(Job).where(Job.status.in_(UNFINISHED), Job.mutating.is_(True))
                             .order_by(Job.id)).all()


def shares_work(job: Job, other: Job, nodes: set[int] | None = None) -> bool:
    """Whether ``other`` holds or waits for one of ``job``'s nodes (``nodes``, if given), or changes its pool."""
    nodes = set(lock_set(job)) if nodes is None else nodes
    return bool(nodes & set(lock_set(other))) or (job.pool_id is not None and other.pool_id == job.pool_id)


def jobs_ahead(node_ids: set[int], pool_id: int | None = None, before: int | None = None) -> list[Job]:
    """Unfinished mutating jobs that hold, or wait for, any of ``node_ids`` or change ``pool_id``
    (those submitted before job ``before``, if given), oldest first."""
    return [job for job in unfinished_mutating_jobs()
            if (before is None or job.id < before)
            and ((node_ids & set(lock_set(job))) or (pool_id is not None and job.pool_id == pool_id))]


def take_nodes(job: Job, node_ids: list[int]) -> bool:
    """Hold every one of ``node_ids`` for ``job``, or none (flushed, not committed).

    One conditional UPDATE: atomic on SQLite and PostgreSQL, so two jobs racing for a node cannot
    both win it. A partial win is given back.
    """
    if not node_ids:
        return True
    db = session()
    taken = db.execute(update(Node).where(Node.id.in_(node_ids), Node.busy_job_id.is_(None))
                       .values(busy_job_id=job.id)).rowcount
    if taken == len(set(node_ids)):
        return True
    db.execute(update(Node).where(Node.id.in_(node_ids), Node.busy_job_id == job.id).values(busy_job_id=None))
    return False


def release_nodes(job: Job) -> None:
    """Give back every node ``job`` holds."""
    session().execute(update(Node).where(Node.busy_job_id == job.id).values(busy_job_id=None))
