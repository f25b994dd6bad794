"""Start a node operation: validate the transition, take the node, record the job."""
from __future__ import annotations

import datetime as dt
import threading

from sqlalchemy import select, update

from ..db import session
from ..errors import conflict
from ..models import Job, Node
from ..states import NODE_TRANSITIONS, Operation, refusal


# Released once per submission: one job worker of this process wakes at once instead of at its
# next poll (an Event would wake them all to race for the same job). A permit left while every
# worker is busy costs a later worker one extra look; a wake-up is never lost.
job_submitted = threading.Semaphore(0)


def submit(operation: Operation, node: Node, extravars: dict | None = None, cluster_id: int | None = None,
           extra_hosts: list[int] | None = None) -> Job:
    """Record a pending job for ``operation`` on ``node``; 409 when the state or a running job forbids it."""
    db = session()
    reason = refusal(operation, node.status)
    if reason:
        raise conflict(f"node {node.id}: {reason}")
    transition = NODE_TRANSITIONS[operation]
    job = Job(created_at=dt.datetime.now(dt.timezone.utc), operation=operation.value, node_id=node.id, cluster_id=cluster_id, mutating=transition.mutating,
              extravars={"hosts": [node.id] + list(extra_hosts or []), "vars": extravars or {}})
    db.add(job)
    db.flush()
    if transition.mutating:
        # One mutating operation per node: a conditional UPDATE is atomic on SQLite and PostgreSQL,
        # so two requests racing for the node cannot both win.
        taken = db.execute(update(Node).where(Node.id == node.id, Node.busy_job_id.is_(None))
                           .values(busy_job_id=job.id)).rowcount
        if taken != 1:
            db.rollback()
            busy = db.get(Node, node.id).busy_job_id
            raise conflict(f"node {node.id} is busy with job {busy}; wait for it or cancel it")
        if transition.running is not None:
            db.execute(update(Node).where(Node.id == node.id).values(status=transition.running))
    db.commit()
    job_submitted.release()
    return job


def submit_pool_apply(pool_id: int, cluster_id: int, node_ids: list[int], extra_hosts: list[int],
                      extravars: dict) -> Job:
    """Record a pool_apply job over ``node_ids`` (all of them taken, or 409 naming the busy one).

    The caller has already committed nothing: on 409 its session is rolled back whole.
    """
    db = session()
    job = Job(created_at=dt.datetime.now(dt.timezone.utc), operation=Operation.POOL_APPLY.value, node_id=None,
              cluster_id=cluster_id, mutating=True,
              extravars={"hosts": list(node_ids) + [h for h in extra_hosts if h not in node_ids],
                         "targets": list(node_ids), "pool_id": pool_id, "vars": extravars})
    db.add(job)
    db.flush()
    taken = db.execute(update(Node).where(Node.id.in_(node_ids), Node.busy_job_id.is_(None))
                       .values(busy_job_id=job.id)).rowcount
    if taken != len(node_ids):
        busy = db.scalars(select(Node).where(Node.id.in_(node_ids), Node.busy_job_id.is_not(None),
                                             Node.busy_job_id != job.id)).first()
        db.rollback()
        raise conflict(f"node {busy.id if busy else '?'} is busy with job {busy.busy_job_id if busy else '?'}; "
                       "wait for it or cancel it")
    return job
