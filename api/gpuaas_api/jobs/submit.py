"""Record a job: its operation accepts it (or refuses it), and it takes its nodes or queues behind
the jobs that hold them (queue.py). Flushed, not committed: the operation's request commits it."""
from __future__ import annotations

from flask import current_app
from sqlalchemy import func, select

from .. import actor
from ..db import session
from ..domain_errors import Refused
from ..models import Job, Node
from ..states import JobStatus
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
    everything rolled back). The job's ``queued_behind`` (not stored) names the job it waits for, or None.

    A single-node job the node already has pending is not recorded twice: its pending twin is returned
    (``already_pending``, not stored, is True). Past GPUAAS_NODE_QUEUE_MAX pending jobs, the node refuses more.
    """
    db = session()
    if job.node_id is not None:
        twin = pending_twin(job)
        if twin is not None:
            twin.already_pending, twin.queued_behind = True, None
            actor.job_recorded(twin.id)
            return twin
        check_queue_room(job.node_id)
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


def pending_twin(job: Job) -> Job | None:
    """The node's latest pending job in ``job``'s lane, if it is the same request (operation, variables,
    cluster) and not asked to cancel. The lane of a mutating job is the node's mutating jobs, which run in
    order: init, deinit, init are three jobs. A read-only job's is its operation's pending jobs on the
    node: they run beside anything, so a test_conn between two scans changes nothing.

    The node's row is locked first, so that on PostgreSQL two requests at once see each other's job: one
    is recorded, the other returns it, and the queue's count is exact. SQLite locks no row and reads
    outside the write transaction: two requests at the very same instant may both be recorded.
    """
    db = session()
    db.execute(select(Node.id).where(Node.id == job.node_id).with_for_update())
    lane = (Job.mutating.is_(True),) if job.mutating else (Job.mutating.is_(False), Job.operation == job.operation)
    latest = db.scalar(select(Job).where(Job.node_id == job.node_id, Job.status == JobStatus.PENDING, *lane)
                       .order_by(Job.id.desc()).limit(1))
    if latest is None or latest.cancel_requested:
        return None
    same = (latest.operation, latest.extravars, latest.cluster_id, latest.pool_id) == \
        (job.operation, job.extravars, job.cluster_id, job.pool_id)
    return latest if same else None


def check_queue_room(node_id: int) -> None:
    """Refused when the node already has GPUAAS_NODE_QUEUE_MAX jobs pending: a script looping on a request
    would otherwise queue a playbook run per request."""
    most = current_app.config["GPUAAS"].NODE_QUEUE_MAX
    pending = session().scalar(select(func.count(Job.id)).where(Job.node_id == node_id, Job.status == JobStatus.PENDING))
    if pending >= most:
        raise Refused(f"node {node_id} already has {pending} jobs pending, the most GPUAAS_NODE_QUEUE_MAX ({most}) allows; "
                      "wait for them to run, or cancel some")
