"""Which pending job runs next: claiming exactly once, batching read-only jobs, and queued jobs' turns.

Any number of workers, in any number of API processes, poll the same database: a run is claimed
with one conditional UPDATE (status pending -> running), which only one of them can win.

A mutating job holds its nodes (Node.busy_job_id) while it runs. One that was submitted while
its node or pool was held by another job waits, pending, without holding anything (a queued job).
The order guarantees (docs/api.md, "Queued requests"):
- jobs that share a node, or change the same pool, run one at a time, in the order they were
  submitted; a job never overtakes an earlier one that shares a node or pool with it;
- when a queued job's turn comes, the state check runs again against the state as it is then; if
  it now refuses the job, the job ends `failed` with the refusal as its explanation, and the jobs
  behind it go on;
- a job that failed, errored or was canceled does not cancel the ones behind it;
- a queued job can be canceled: it ends `canceled` without running, and nothing it would have
  changed is touched.
"""
from __future__ import annotations

import datetime as dt
import os
import socket

from sqlalchemy import select, update

from ..db import session
from ..errors import ApiError
from ..models import Job, Node
from ..states import NODE_TRANSITIONS, JobStatus, Operation, refusal

# A burst of read-only requests (one per node, as clients send them) is gathered into one
# playbook run: a read-only job waits while such requests keep arriving less than
# BATCH_QUIET_SECONDS apart, and never longer than BATCH_WINDOW_SECONDS. A lone request
# waits only the quiet interval.
BATCH_MAX = 50
BATCH_QUIET_SECONDS = 0.03
BATCH_WINDOW_SECONDS = 0.2
# How many pending jobs one claim looks through for one that may run (the oldest first).
CLAIM_SCAN_LIMIT = 200

UNFINISHED = (JobStatus.PENDING, JobStatus.RUNNING)


def claimant() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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


def jobs_ahead(node_ids: set[int], pool_id: int | None = None, before: int | None = None) -> list[Job]:
    """Unfinished mutating jobs that hold, or wait for, any of ``node_ids`` or change ``pool_id``
    (those submitted before job ``before``, if given), oldest first."""
    return [job for job in unfinished_mutating_jobs()
            if (before is None or job.id < before)
            and ((node_ids & set(lock_set(job))) or (pool_id is not None and job.pool_id == pool_id))]


def statuses_after(status, ahead: list[Job]) -> set:
    """Every status a node in ``status`` may be in once the jobs ``ahead`` have ended, each either way."""
    possible = {status}
    for job in ahead:
        transition = NODE_TRANSITIONS.get(Operation(job.operation))
        if transition is None or (transition.on_success is None and transition.on_failure is None):
            continue  # a pool change or a reboot leaves the node's status as it is
        possible = {transition.on_success or s for s in possible} | {transition.on_failure or s for s in possible}
    return possible


def refusal_whatever_happens(operation: Operation, status, ahead: list[Job]) -> str | None:
    """Why ``operation`` can never start behind ``ahead``: refused from every status they may leave."""
    if all(refusal(operation, possible) for possible in statuses_after(status, ahead)):
        return refusal(operation, status)
    return None


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


def claim_next() -> list[int]:
    """Claim the next run: its job ids, oldest first (see claim_run)."""
    return claim_run()[0]


def claim_run() -> tuple[list[int], bool]:
    """Claim the next run: a mutating job alone, or a batch of read-only jobs (see batch_of).

    The oldest pending job that may run now is chosen: a read-only one once its burst is over (see
    BATCH_QUIET_SECONDS), a mutating one that holds its nodes, or a queued one whose turn has come
    (see start_queued). Returns the claimed job ids, oldest first, and whether a pending job is
    being held in its burst. An idle poll costs one query.
    """
    db = session()
    pending = db.scalars(select(Job).where(Job.status == JobStatus.PENDING).order_by(Job.id)
                         .limit(CLAIM_SCAN_LIMIT)).all()
    if not pending:
        db.rollback()
        return [], False
    now = dt.datetime.now(dt.timezone.utc)
    burst_going_on = db.scalar(select(Job.id).where(
        Job.status == JobStatus.PENDING, Job.mutating.is_(False),
        Job.created_at > now - dt.timedelta(seconds=BATCH_QUIET_SECONDS)).limit(1)) is not None
    window_open = set(db.scalars(select(Job.id).where(
        Job.status == JobStatus.PENDING, Job.mutating.is_(False),
        Job.created_at > now - dt.timedelta(seconds=BATCH_WINDOW_SECONDS)))) if burst_going_on else set()
    held_in_burst = False
    unfinished = None
    for job in pending:
        if not job.mutating:
            if job.id in window_open:
                held_in_burst = True
                continue
            return _claim(batch_of(job)), False
        nodes = lock_set(job)
        holders = dict(db.execute(select(Node.id, Node.busy_job_id).where(Node.id.in_(nodes))).all()) if nodes else {}
        if nodes and all(holders.get(node_id) == job.id for node_id in nodes):
            return _claim([job.id]), False  # submitted onto free nodes: it holds them already
        if any(holder not in (None, job.id) for holder in holders.values()):
            continue  # a node is held by another job: not its turn
        if unfinished is None:
            unfinished = unfinished_mutating_jobs()
        if any(other.id < job.id and ((set(nodes) & set(lock_set(other))) or
                                      (job.pool_id is not None and other.pool_id == job.pool_id))
               for other in unfinished):
            continue  # an earlier job on the same node or pool goes first
        if start_queued(job):
            return _claim([job.id]), False
        unfinished = None  # it ended (refused, canceled) or changed its nodes: look again
    db.rollback()
    return [], held_in_burst


def _claim(wanted: list[int]) -> list[int]:
    db = session()
    won = db.scalars(update(Job).where(Job.id.in_(wanted), Job.status == JobStatus.PENDING)
                     .values(status=JobStatus.RUNNING, claimed_by=claimant(),
                             started_at=dt.datetime.now(dt.timezone.utc))
                     .returning(Job.id)).all()
    db.commit()
    return sorted(won)


def start_queued(job: Job) -> bool:
    """A queued job's turn: check it against the state as it is now, and take its nodes.

    True when it holds its nodes and may be claimed. Otherwise it has ended (refused: failed, or
    canceled before it ran) or must go on waiting (a node was taken meanwhile); False.
    """
    from .. import pools  # the pool domain records and finalises through this module's callers
    from .finalize import end_unstarted

    db = session()
    if job.cancel_requested:
        end_unstarted(job.id, JobStatus.CANCELED, "canceled before it ran")
        return False
    try:
        if "change" in job.extravars:  # a pool change queued behind the pool's previous one
            started = pools.apply_queued_change(job)
        elif job.node_id is None:  # a pool change already applied, waiting for its nodes
            started = take_nodes(job, lock_set(job))
        else:
            started = _start_node_job(job)
    except ApiError as refused:
        db.rollback()
        end_unstarted(job.id, JobStatus.FAILED, f"refused when its turn came: {refused.message}")
        return False
    if not started:
        db.rollback()
        return False
    db.commit()
    return True


def _start_node_job(job: Job) -> bool:
    from ..errors import conflict

    node = session().get(Node, job.node_id)
    operation = Operation(job.operation)
    reason = refusal(operation, node.status)
    if reason:
        raise conflict(f"node {node.id}: {reason}")
    if not take_nodes(job, [node.id]):
        return False
    running = NODE_TRANSITIONS[operation].running
    if running is not None:
        node.status = running
    return True


def batch_of(first: Job) -> list[int]:
    """The pending jobs that can share ``first``'s playbook run, ``first`` included.

    Read-only operations on single nodes (test_conn, scans, storage metrics) with the same
    variables run as one ansible-playbook over all their nodes: one process with many forks
    instead of one process per node. Mutating operations always run alone.
    """
    if first.mutating or len(first.extravars.get("hosts", [])) != 1:
        return [first.id]
    batch, nodes = [first.id], {first.node_id}
    candidates = session().scalars(select(Job).where(Job.status == JobStatus.PENDING, Job.id != first.id,
                                                     Job.operation == first.operation, Job.mutating.is_(False))
                                   .order_by(Job.id).limit(BATCH_MAX)).all()
    for job in candidates:
        if job.node_id in nodes or job.extravars != {"hosts": [job.node_id], "vars": first.extravars.get("vars", {})}:
            continue
        batch.append(job.id)
        nodes.add(job.node_id)
    return batch
