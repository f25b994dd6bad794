"""Which pending job runs next: claiming exactly once, batching read-only jobs, and queued jobs' turns.

Any number of workers, in any number of API processes, poll the same database: a run is claimed
with one conditional UPDATE (status pending -> running), which only one of them can win.

A mutating job holds its nodes while it runs (holds.py); one submitted while its node or pool was
held waits, pending (a queued job). What a queued job's turn means is its operation's (hooks.py).
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

import dataclasses
import datetime as dt
import enum

from flask import current_app
from sqlalchemy import select, update

from ..db import session
from ..models import Job, Node
from ..states import JobStatus
from .claims import lease_until, now
from .finalize import end_unstarted, finalize
from .holds import lock_set, shares_work, unfinished_mutating_jobs
from .hooks import Turn, TurnRefused, hooks_for
from .identity import claimant

# A burst of requests for the same operation on different nodes (one per node, as clients send
# them) is gathered into one playbook run: a job waits while requests for its operation keep
# arriving less than the quiet interval apart, and never longer than the window. A lone request
# waits only the quiet interval. Read-only jobs (test_conn, scans, storage metrics) wait little;
# the node operations that share runs (hooks.OperationHooks.shares_runs) run for minutes, so their
# bursts may be slower (a client submitting 100 inits one after another) and a quarter of a second
# more costs nothing: theirs are GPUAAS_NODE_BATCH_QUIET_SECONDS (0.25) and GPUAAS_NODE_BATCH_WINDOW_SECONDS (2).
BATCH_MAX = 50
BATCH_QUIET_SECONDS = 0.03
BATCH_WINDOW_SECONDS = 0.2
# How many pending jobs one claim looks through for one that may run (the oldest first).
CLAIM_SCAN_LIMIT = 1000


@dataclasses.dataclass(frozen=True)
class BurstTiming:
    """How long jobs of a burst wait for more of their kind: (quiet, window) in seconds."""

    read_only: tuple[float, float] = (BATCH_QUIET_SECONDS, BATCH_WINDOW_SECONDS)
    node_operations: tuple[float, float] = (0.25, 2.0)


def claim_next() -> list[int]:
    """Claim the next run: its job ids, oldest first (see claim_run)."""
    return claim_run()[0]


def claim_run() -> tuple[list[int], bool]:
    """Claim the next run: a mutating job alone, or a batch of jobs sharing a playbook run (batch_of).

    The oldest pending job that may run now is chosen (standing_of). Returns the claimed job ids,
    oldest first, and whether a pending job is being held in its burst. An idle poll costs one
    query; a poll over waiting jobs, three.
    """
    db = session()
    pending = db.scalars(select(Job).where(Job.status == JobStatus.PENDING).order_by(Job.id)
                         .limit(CLAIM_SCAN_LIMIT)).all()
    if not pending:
        db.rollback()
        return [], False
    in_burst = bursts(pending, now(), current_timing())
    holders = node_holders(pending)
    held_in_burst = False
    unfinished = None
    for job in pending:
        standing = standing_of(job, holders, in_burst)
        if standing is Standing.IN_BURST:
            held_in_burst = True
        elif standing is Standing.READY:
            return _claim(batch_of(job)), False
        elif standing is Standing.QUEUED:
            if unfinished is None:
                unfinished = unfinished_mutating_jobs()
            if not any(other.id < job.id and shares_work(job, other, nodes_present(job, holders)) for other in unfinished):
                if start_queued(job):
                    return [job.id], False
                unfinished = None  # it ended (refused, canceled, nothing to do) or waits on: look again
    db.rollback()
    return [], held_in_burst


def node_holders(pending: list[Job]) -> dict[int, int | None]:
    """Each node the pending jobs want: the job holding it, or None (a deleted node is absent)."""
    wanted = {node_id for job in pending for node_id in lock_set(job)}
    if not wanted:
        return {}
    return dict(session().execute(select(Node.id, Node.busy_job_id).where(Node.id.in_(wanted))).all())


def nodes_present(job: Job, holders: dict[int, int | None]) -> set[int]:
    return {node_id for node_id in lock_set(job) if node_id in holders}  # a deleted node holds nothing


class Standing(enum.Enum):
    """Where a pending job stands at a claim."""

    READY = "holds its nodes"  # may run now: read-only, or submitted onto free nodes
    IN_BURST = "in burst"  # it could run, but waits for more of its kind to share its run
    BEHIND = "not its turn"  # a node it needs is held by another job
    QUEUED = "queued"  # its nodes are free: its turn, unless an earlier job shares a node or its pool


def standing_of(job: Job, holders: dict[int, int | None], in_burst: set[int]) -> Standing:
    nodes = nodes_present(job, holders)
    holds = not job.mutating or (nodes and all(holders[node_id] == job.id for node_id in nodes))
    if holds:
        return Standing.IN_BURST if job.id in in_burst else Standing.READY
    if any(holders[node_id] not in (None, job.id) for node_id in nodes):
        return Standing.BEHIND
    return Standing.QUEUED


def batches_with_others(job: Job) -> bool:
    """Whether ``job`` may share a playbook run with others of its operation (see batch_of)."""
    if not job.mutating:
        return len(job.extravars.get("hosts", [])) == 1
    return hooks_for(job.operation).shares_runs and job.node_id is not None and "targets" not in job.extravars


def aware(moment: dt.datetime) -> dt.datetime:
    """SQLite gives back naive datetimes (stored in UTC); PostgreSQL, aware ones."""
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment


def current_timing() -> BurstTiming:
    config = current_app.config["GPUAAS"]
    return BurstTiming(node_operations=(config.NODE_BATCH_QUIET_SECONDS, config.NODE_BATCH_WINDOW_SECONDS))


def bursts(pending: list[Job], at: dt.datetime, timing: BurstTiming, shares=batches_with_others) -> set[int]:
    """The pending jobs held in their burst at ``at``: requests for the same operation are still
    arriving (the newest less than the quiet interval ago) and the job is younger than the window."""
    sharing = [job for job in pending if shares(job)]
    newest: dict[str, dt.datetime] = {}
    for job in sharing:
        newest[job.operation] = max(newest.get(job.operation, aware(job.created_at)), aware(job.created_at))
    held = set()
    for job in sharing:
        quiet, window = timing.node_operations if job.mutating else timing.read_only
        if (at - newest[job.operation]).total_seconds() < quiet and (at - aware(job.created_at)).total_seconds() < window:
            held.add(job.id)
    return held


def _claim(wanted: list[int]) -> list[int]:
    db = session()
    won = db.scalars(update(Job).where(Job.id.in_(wanted), Job.status == JobStatus.PENDING)
                     .values(status=JobStatus.RUNNING, claimed_by=claimant(), lease_expires_at=lease_until(),
                             started_at=now())
                     .returning(Job.id)).all()
    db.commit()
    return sorted(won)


def start_queued(job: Job) -> bool:
    """A queued job's turn: claim it, let its operation check it against the state as it is now and
    take its nodes (hooks.its_turn), all in one transaction. True when it is claimed (running) and
    holds its nodes.

    The claim comes first, with the conditional UPDATE every claim uses, so that of two workers
    looking at the same job only one checks and starts it. Otherwise the job has ended (canceled
    while it waited, refused by the state now, or left with nothing to do), or it goes on waiting
    (a node it now needs is held): everything is rolled back and it is pending again.
    """
    db = session()
    won = db.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.PENDING)
                     .values(status=JobStatus.RUNNING, claimed_by=claimant(), lease_expires_at=lease_until(),
                             started_at=now())).rowcount
    if won != 1:
        db.rollback()
        return False
    db.refresh(job)
    if job.cancel_requested:
        db.rollback()
        cancel_waiting(job)
        return False
    turn = hooks_for(job.operation).its_turn(job)
    if isinstance(turn, TurnRefused):
        db.rollback()
        end_unstarted(job.id, JobStatus.FAILED, f"refused when its turn came: {turn.reason}")
        return False
    if turn is Turn.WAITS:
        db.rollback()
        return False
    db.commit()
    if turn is Turn.ENDED:  # nothing to apply anywhere: done, without a run
        finalize(job.id, "successful", 0, "nothing to apply on any node", {})
    return turn is Turn.STARTED


def cancel_waiting(job: Job) -> bool:
    """End a pending job that holds nothing, canceled while it waited; True when it ended here.

    It never ran: it ends `canceled` and moves nothing, unless its operation ends it its own way
    (hooks.canceled_while_waiting). One that holds its nodes is stopped by the worker that runs it.
    """
    if session().scalar(select(Node.id).where(Node.busy_job_id == job.id).limit(1)) is not None:
        return False
    ended = hooks_for(job.operation).canceled_while_waiting(job)
    return end_unstarted(job.id, JobStatus.CANCELED, "canceled before it ran") if ended is None else ended


def batch_of(first: Job) -> list[int]:
    """The pending jobs that can share ``first``'s playbook run, ``first`` included.

    Single-node jobs of one operation with the same variables run as one ansible-playbook over all
    their nodes: one process with many forks instead of one process per node.
    - Read-only ones (test_conn, scans, storage metrics) take any pending job of theirs.
    - Mutating ones whose operation shares runs take those that already hold their own node (none
      queued behind another job), for the same cluster and with the same helper hosts (a join's or
      a leave's controller), and not asked to cancel.
    A node appears once in a run.
    """
    if not batches_with_others(first):
        return [first.id]
    query = select(Job).where(Job.status == JobStatus.PENDING, Job.id != first.id, Job.operation == first.operation,
                              Job.mutating.is_(first.mutating))
    if first.mutating:
        query = query.where(Job.cluster_id.is_(None) if first.cluster_id is None else Job.cluster_id == first.cluster_id,
                            Job.cancel_requested.is_(False),
                            Job.node_id.in_(select(Node.id).where(Node.busy_job_id == Job.id)))
    return joinable(first, session().scalars(query.order_by(Job.id).limit(BATCH_MAX)).all())


def joinable(first: Job, candidates: list[Job]) -> list[int]:
    """``first`` and those of ``candidates`` (oldest first) on another node, with its variables and helpers."""
    helpers = first.extravars.get("hosts", [])[1:]
    batch, nodes = [first.id], {first.node_id, *helpers}
    for job in candidates:
        if job.node_id in nodes or job.extravars != {"hosts": [job.node_id, *helpers], "vars": first.extravars.get("vars", {})}:
            continue
        batch.append(job.id)
        nodes.add(job.node_id)
    return batch
