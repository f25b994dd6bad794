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

from flask import current_app
from sqlalchemy import select, update

from ..db import session
from ..errors import ApiError, conflict
from ..models import Job, Node
from ..states import NODE_TRANSITIONS, JobStatus, Operation, refusal
from .lease import lease_until

# A burst of requests for the same operation on different nodes (one per node, as clients send
# them) is gathered into one playbook run: a job waits while requests for its operation keep
# arriving less than the quiet interval apart, and never longer than the window. A lone request
# waits only the quiet interval. Read-only jobs (test_conn, scans, storage metrics) wait little;
# the node operations below run for minutes, so their bursts may be slower (a client submitting
# 100 inits one after another) and a quarter of a second more costs nothing: theirs are
# GPUAAS_NODE_BATCH_QUIET_SECONDS (0.25) and GPUAAS_NODE_BATCH_WINDOW_SECONDS (2).
BATCH_MAX = 50
BATCH_QUIET_SECONDS = 0.03
BATCH_WINDOW_SECONDS = 0.2
# The node operations that share a run when they come together (as Ansible runs them: one play,
# many hosts). Each job still holds its own node, and is finalised from its own host's result.
# Enable makes a cluster (one controller each) and runs alone.
BATCHED_MUTATIONS = frozenset({Operation.INIT.value, Operation.DEINIT.value, Operation.JOIN.value,
                               Operation.LEAVE.value, Operation.DISABLE.value, Operation.REBOOT.value})
# How many pending jobs one claim looks through for one that may run (the oldest first).
CLAIM_SCAN_LIMIT = 1000

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


def statuses_after(status, ahead: list[Job], holder: int | None) -> set:
    """Every status a node in ``status`` may be in once the jobs ``ahead`` have ended.

    The job that holds the node (``holder``) has passed its check: it ends either way. A job still
    queued may also be refused at its turn, leaving the node as it was.
    """
    possible = {status}
    for job in ahead:
        transition = NODE_TRANSITIONS.get(Operation(job.operation))
        if transition is None:
            continue  # a pool change leaves the node's status as it is
        started = job.id == holder or job.status is JobStatus.RUNNING
        after = set()
        for before in possible:
            if not started:
                after.add(before)  # refused at its turn
            if started or before in transition.allowed_from:
                after |= {transition.on_success or before, transition.on_failure or before}
        possible = after
    return possible


def refusal_whatever_happens(operation: Operation, status, ahead: list[Job], holder: int | None) -> str | None:
    """Why ``operation`` can never start behind ``ahead``: refused from every status they may leave."""
    if all(refusal(operation, possible) for possible in statuses_after(status, ahead, holder)):
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
    being held in its burst. An idle poll costs one query; a poll over waiting jobs, three.
    """
    db = session()
    pending = db.scalars(select(Job).where(Job.status == JobStatus.PENDING).order_by(Job.id)
                         .limit(CLAIM_SCAN_LIMIT)).all()
    if not pending:
        db.rollback()
        return [], False
    in_burst = bursts(pending, dt.datetime.now(dt.timezone.utc))
    wanted = {node_id for job in pending for node_id in lock_set(job)}
    holders = dict(db.execute(select(Node.id, Node.busy_job_id).where(Node.id.in_(wanted))).all()) if wanted else {}
    held_in_burst = False
    unfinished = None
    for job in pending:
        if not job.mutating:
            if job.id in in_burst:
                held_in_burst = True
                continue
            return _claim(batch_of(job)), False
        nodes = [node_id for node_id in lock_set(job) if node_id in holders]  # a deleted node holds nothing
        if nodes and all(holders[node_id] == job.id for node_id in nodes):
            # Submitted onto free nodes: it holds them already.
            if job.id in in_burst:
                held_in_burst = True
                continue
            return _claim(batch_of(job)), False
        if any(holders[node_id] not in (None, job.id) for node_id in nodes):
            continue  # a node is held by another job: not its turn
        if unfinished is None:
            unfinished = unfinished_mutating_jobs()
        if any(other.id < job.id and ((set(nodes) & set(lock_set(other))) or
                                      (job.pool_id is not None and other.pool_id == job.pool_id))
               for other in unfinished):
            continue  # an earlier job on the same node or pool goes first
        if start_queued(job):
            return [job.id], False
        unfinished = None  # it ended (refused, canceled, nothing to do) or waits on: look again
    db.rollback()
    return [], held_in_burst


def batches_with_others(job: Job) -> bool:
    """Whether ``job`` may share a playbook run with others of its operation (see batch_of)."""
    if not job.mutating:
        return len(job.extravars.get("hosts", [])) == 1
    return job.operation in BATCHED_MUTATIONS and job.node_id is not None and "targets" not in job.extravars


def aware(moment: dt.datetime) -> dt.datetime:
    """SQLite gives back naive datetimes (stored in UTC); PostgreSQL, aware ones."""
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment


def bursts(pending: list[Job], now: dt.datetime) -> set[int]:
    """The pending jobs held in their burst: requests for the same operation are still arriving
    (the newest less than the quiet interval ago) and the job is younger than the window."""
    config = current_app.config["GPUAAS"]
    newest: dict[str, dt.datetime] = {}
    for job in pending:
        if batches_with_others(job):
            newest[job.operation] = max(newest.get(job.operation, aware(job.created_at)), aware(job.created_at))
    held = set()
    for job in pending:
        if job.operation not in newest or not batches_with_others(job):
            continue
        quiet, window = ((config.NODE_BATCH_QUIET_SECONDS, config.NODE_BATCH_WINDOW_SECONDS) if job.mutating
                         else (BATCH_QUIET_SECONDS, BATCH_WINDOW_SECONDS))
        if (now - newest[job.operation]).total_seconds() < quiet and (now - aware(job.created_at)).total_seconds() < window:
            held.add(job.id)
    return held


def _claim(wanted: list[int]) -> list[int]:
    db = session()
    won = db.scalars(update(Job).where(Job.id.in_(wanted), Job.status == JobStatus.PENDING)
                     .values(status=JobStatus.RUNNING, claimed_by=claimant(), lease_expires_at=lease_until(),
                             started_at=dt.datetime.now(dt.timezone.utc))
                     .returning(Job.id)).all()
    db.commit()
    return sorted(won)


# What a queued job's turn came to (start_queued).
STARTED, WAITS, ENDED = "started", "waits", "ended"


def start_queued(job: Job) -> bool:
    """A queued job's turn: claim it, check it against the state as it is now, and take its nodes,
    all in one transaction. True when it is claimed (running) and holds its nodes.

    The claim comes first, with the conditional UPDATE every claim uses, so that of two workers
    looking at the same job only one checks and starts it. Otherwise the job has ended (canceled
    while it waited, refused by the state now, or left with nothing to do), or it goes on waiting
    (a node it now needs is held): everything is rolled back and it is pending again.
    """
    from .. import pools  # the pool domain records its changes through submit, which imports this module
    from .finalize import end_unstarted, finalize

    db = session()
    won = db.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.PENDING)
                     .values(status=JobStatus.RUNNING, claimed_by=claimant(), lease_expires_at=lease_until(),
                             started_at=dt.datetime.now(dt.timezone.utc))).rowcount
    if won != 1:
        db.rollback()
        return False
    db.refresh(job)
    if job.cancel_requested:
        db.rollback()
        cancel_waiting(job)
        return False
    try:
        if "change" in job.extravars:  # a pool change queued behind the pool's previous one
            outcome = pools.apply_queued_change(job)
        elif job.node_id is None:  # a pool change already applied, waiting for its nodes
            outcome = _start_applied_pool_change(job)
        else:
            outcome = _start_node_job(job)
    except ApiError as refused:
        db.rollback()
        end_unstarted(job.id, JobStatus.FAILED, f"refused when its turn came: {refused.message}")
        return False
    if outcome == WAITS:
        db.rollback()
        return False
    if outcome == ENDED:  # nothing to apply anywhere: done, in this transaction
        db.commit()
        finalize(job.id, "successful", 0, "nothing to apply on any node", {})
        return False
    db.commit()
    return True


def cancel_waiting(job: Job) -> bool:
    """End a pending job that holds nothing, canceled while it waited; True when it ended here.

    A queued node job or pool change never ran: it ends `canceled` and moves nothing. A pool change
    already recorded on the pool (waiting for its nodes) is finalised as canceled on every node, so
    that the pool shows ERROR_WHILE_DEPLOYING (or stays DELETING) and a retry completes it.
    """
    from .finalize import end_unstarted, finalize

    db = session()
    if db.scalar(select(Node.id).where(Node.busy_job_id == job.id).limit(1)) is not None:
        return False  # it holds its nodes: the worker that runs it stops it (runner.py)
    if job.node_id is None and job.pool_id is not None and "change" not in job.extravars:
        won = db.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.PENDING)
                         .values(status=JobStatus.RUNNING, claimed_by=claimant(),
                                 lease_expires_at=lease_until())).rowcount
        db.commit()
        if won == 1:
            finalize(job.id, "canceled", None, "canceled before it ran", {},
                     host_outcomes={node_id: False for node_id in job.extravars.get("targets", [])})
        return won == 1
    return end_unstarted(job.id, JobStatus.CANCELED, "canceled before it ran")


def _start_applied_pool_change(job: Job) -> str:
    db = session()
    targets = job.extravars.get("targets", [])
    present = set(db.scalars(select(Node.id).where(Node.id.in_(targets)))) if targets else set()
    if present != set(targets):  # a target was deleted (its GPUs with it): apply on the others
        job.extravars = {**job.extravars, "targets": [node_id for node_id in targets if node_id in present],
                         "hosts": [node_id for node_id in job.extravars.get("hosts", []) if node_id in present]}
    return STARTED if take_nodes(job, job.extravars["targets"]) else WAITS


def _start_node_job(job: Job) -> str:
    from .preconditions import refusal_beyond_status

    node = session().get(Node, job.node_id)
    operation = Operation(job.operation)
    reason = refusal(operation, node.status)
    if reason:
        raise conflict(f"node {node.id}: {reason}")
    reason = refusal_beyond_status(operation, node, job.cluster_id)
    if reason:
        raise conflict(reason)
    if not take_nodes(job, [node.id]):
        return WAITS
    running = NODE_TRANSITIONS[operation].running
    if running is not None:
        node.status = running
    return STARTED


def batch_of(first: Job) -> list[int]:
    """The pending jobs that can share ``first``'s playbook run, ``first`` included.

    Single-node jobs of one operation with the same variables run as one ansible-playbook over all
    their nodes: one process with many forks instead of one process per node.
    - Read-only ones (test_conn, scans, storage metrics) take any pending job of theirs.
    - Node operations (BATCHED_MUTATIONS) take those that already hold their own node (none queued
      behind another job), for the same cluster and with the same helper hosts (a join's or a
      leave's controller), and not asked to cancel.
    A node appears once in a run.
    """
    if not batches_with_others(first):
        return [first.id]
    helpers = first.extravars.get("hosts", [])[1:]
    batch, nodes = [first.id], {first.node_id, *helpers}
    query = select(Job).where(Job.status == JobStatus.PENDING, Job.id != first.id, Job.operation == first.operation,
                              Job.mutating.is_(first.mutating))
    if first.mutating:
        query = query.where(Job.cluster_id.is_(None) if first.cluster_id is None else Job.cluster_id == first.cluster_id,
                            Job.cancel_requested.is_(False),
                            Job.node_id.in_(select(Node.id).where(Node.busy_job_id == Job.id)))
    for job in session().scalars(query.order_by(Job.id).limit(BATCH_MAX)).all():
        if job.node_id in nodes or job.extravars != {"hosts": [job.node_id, *helpers],
                                                     "vars": first.extravars.get("vars", {})}:
            continue
        batch.append(job.id)
        nodes.add(job.node_id)
    return batch
