"""Start an operation: validate the transition, take the node (or queue behind the job holding it),
record the job."""
from __future__ import annotations

import datetime as dt
import threading

from sqlalchemy import select, update

from .. import actor
from ..db import session
from ..errors import conflict
from ..models import Job, Node
from ..states import NODE_TRANSITIONS, Operation, refusal
from .queue import jobs_ahead, refusal_whatever_happens, take_nodes


# Released once per submission (and when a job ends, so that a job queued behind it starts at once):
# one job worker of this process wakes at once instead of at its next poll (an Event would wake them
# all to race for the same job). A permit left while every worker is busy costs a later worker one
# extra look; a wake-up is never lost.
job_submitted = threading.Semaphore(0)


def submit(operation: Operation, node: Node, extravars: dict | None = None, cluster_id: int | None = None,
           extra_hosts: list[int] | None = None) -> Job:
    """Record a pending job for ``operation`` on ``node``; 409 when the node's state forbids it.

    A mutating operation on a node that another job holds (or waits for) is queued behind it (see
    queue.py): accepted like any other, unless the node's state forbids it whatever those jobs do.
    The job's ``queued_behind`` (not stored) names the job it waits for, or is None.
    """
    db = session()
    transition = NODE_TRANSITIONS[operation]
    ahead = jobs_ahead({node.id}) if transition.mutating else []
    reason = (refusal_whatever_happens(operation, node.status, ahead, node.busy_job_id) if ahead
              else refusal(operation, node.status))
    if reason:
        raise conflict(f"node {node.id}: {reason}")
    job = Job(created_at=dt.datetime.now(dt.timezone.utc), operation=operation.value, node_id=node.id,
              cluster_id=cluster_id, mutating=transition.mutating,
              extravars={"hosts": [node.id] + list(extra_hosts or []), "vars": extravars or {}}, **actor.job_actor())
    db.add(job)
    db.flush()
    actor.job_recorded(job.id)
    job.queued_behind = ahead[-1].id if ahead else None
    if transition.mutating and not ahead:
        # One mutating operation per node: a conditional UPDATE is atomic on SQLite and PostgreSQL,
        # so of two requests racing for a free node one takes it and the other queues behind it.
        for _attempt in range(2):  # a request that took the node meanwhile may have ended meanwhile too
            if take_nodes(job, [node.id]):
                if transition.running is not None:
                    db.execute(update(Node).where(Node.id == node.id).values(status=transition.running))
                break
            job.queued_behind = db.get(Node, node.id, populate_existing=True).busy_job_id
            if job.queued_behind is not None:
                break  # queued behind the request that took it
    db.commit()
    job_submitted.release()
    return job


def submit_pool_apply(pool_id: int, cluster_id: int, node_ids: list[int], extravars: dict,
                      job: Job | None = None) -> Job:
    """Record (or, for a queued change whose turn came, fill in) the pool_apply job over ``node_ids``.

    It takes every node at once; when one is held by another job, it takes none and waits, pending,
    until they are all free (queue.py). Flushed, not committed.
    """
    db = session()
    fields = {"hosts": list(node_ids), "targets": list(node_ids), "pool_id": pool_id, "vars": extravars}
    if job is None:
        job = Job(created_at=dt.datetime.now(dt.timezone.utc), operation=Operation.POOL_APPLY.value, node_id=None,
                  cluster_id=cluster_id, pool_id=pool_id, mutating=True, extravars=fields, **actor.job_actor())
        db.add(job)
    else:  # a queued change's turn: its job keeps the actor of the request that queued it
        job.extravars = fields
    db.flush()
    actor.job_recorded(job.id)
    ahead = jobs_ahead(set(node_ids), before=job.id)
    job.queued_behind = ahead[-1].id if ahead else None
    if not ahead and not take_nodes(job, node_ids):
        job.queued_behind = db.scalar(select(Node.busy_job_id).where(Node.id.in_(node_ids),
                                                                     Node.busy_job_id.is_not(None)).limit(1))
    return job
