"""The one place where a job ends: its record, the nodes it held given back, and its operation's
``finished`` hook (hooks.py), which moves what the job changed."""
from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import select, update

from ..db import session
from ..models import Job, JobEvent, Node
from ..states import JobStatus
from .claims import now, wake_a_worker
from .holds import release_nodes
from .hooks import Outcome, hooks_for
from .identity import claimant, claimant_is_gone
from .runner import end_processes_of
from .waiting import notify_finished

log = logging.getLogger(__name__)
MAX_MESSAGE = 300  # the explanation is a summary; the node's logs hold the whole output

RUNNER_TO_JOB_STATUS = {
    "successful": JobStatus.SUCCESSFUL,
    "failed": JobStatus.FAILED,
    "timeout": JobStatus.FAILED,
    "canceled": JobStatus.CANCELED,
}


def finalize(job_id: int, runner_status: str, rc: int | None, explanation: str, artifact_data: dict,
             new_host_keys: dict[int, str] | None = None, emitted_events: int = 0,
             host_outcomes: dict[int, bool] | None = None, owner: str | None = None) -> Job:
    """Record a finished job and let its operation move what it touched. ``host_outcomes`` (node id ->
    succeeded) tells a multi-node job's per-node results; without it every node shares the job's outcome.

    With ``owner`` (the claimant that ran it), nothing is recorded unless the job is still running
    and claimed by it: a process that lost its lease (jobs/lease.py) never overwrites the result
    another process recorded.
    """
    db = session()
    status = RUNNER_TO_JOB_STATUS.get(runner_status, JobStatus.ERROR)
    if owner is not None and not _leave_running(job_id, status, owner):
        return _left_alone(job_id, owner)
    job = db.get(Job, job_id, populate_existing=True)
    node = db.get(Node, job.node_id) if job.node_id else None
    hooks = hooks_for(job.operation)
    status, explanation, artifact_data = _judged(job, node, hooks, status, explanation, artifact_data)
    if status is JobStatus.FAILED and not explanation:
        explanation = hooks.failure_explanation(job, artifact_data) or _first_failure(job_id, rc)
    job.status, job.rc, job.explanation, job.result = status, rc, explanation, artifact_data
    job.finished_at, job.emitted_events = now(), emitted_events
    _pin_host_keys(new_host_keys or {})
    # Each target node of a multi-node job: its own outcome, else the job's.
    node_succeeded = {node_id: (host_outcomes or {}).get(node_id, status is JobStatus.SUCCESSFUL)
                      for node_id in job.extravars.get("targets", [])}
    hooks.finished(Outcome(job, node, status is JobStatus.SUCCESSFUL, artifact_data, node_succeeded),
                   current_app.config["GPUAAS"])
    if job.mutating:
        release_nodes(job)
    db.commit()
    notify_finished()
    wake_a_worker()  # a job queued behind this one may start now
    return job


def _judged(job: Job, node: Node | None, hooks, status: JobStatus, explanation: str,
            artifact_data: dict) -> tuple[JobStatus, str, dict]:
    """The run's status, explanation and result once the operation has judged what the nodes
    reported: a refused report is kept nowhere, however the run went, and fails a successful run."""
    refusal = hooks.refused_report(job, node, artifact_data)
    if refusal is None:
        return status, explanation, artifact_data
    kept = {key: value for key, value in artifact_data.items() if key not in hooks.reported_keys}
    return (JobStatus.FAILED, refusal, kept) if status is JobStatus.SUCCESSFUL else (status, explanation, kept)


def _leave_running(job_id: int, status: JobStatus, owner: str) -> bool:
    """Move the job out of `running` if ``owner`` still holds it.

    One conditional UPDATE: a check followed by a write would let another process's takeover
    (lease.expire_lapsed) land in between, and both would record a result. The row stays locked
    until this transaction commits, and once it is no longer running no takeover matches it.
    """
    db = session()
    held = db.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.claimed_by == owner)
                      .values(status=status)).rowcount
    if held != 1:
        db.rollback()
    return held == 1


def _left_alone(job_id: int, owner: str) -> Job:
    db = session()
    job = db.get(Job, job_id, populate_existing=True)
    log.warning("job %s: not finalised by %s, which no longer holds it (%s, claimed by %s)", job_id, owner,
                job.status.value, job.claimed_by)
    db.rollback()
    return job


def _pin_host_keys(new_host_keys: dict[int, str]) -> None:
    db = session()
    for node_id, key in new_host_keys.items():
        contacted = db.get(Node, node_id)
        if contacted is not None and contacted.ssh_host_key is None:
            contacted.ssh_host_key = key  # pinned at the first successful contact


def end_unstarted(job_id: int, status: JobStatus, explanation: str) -> bool:
    """End a queued job that never started (refused when its turn came, or canceled while it waited);
    False when it was not pending any more (another worker started or ended it first).

    It held nothing, and its node never moved. What its request prepared is its operation's to undo
    (hooks.ended_unstarted).
    """
    db = session()
    ended = db.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.PENDING)
                       .values(status=status, explanation=explanation, finished_at=now())).rowcount
    if ended != 1:
        db.rollback()
        return False
    job = db.get(Job, job_id, populate_existing=True)
    hooks_for(job.operation).ended_unstarted(job)
    db.commit()
    notify_finished()
    wake_a_worker()
    return True


def _first_failure(job_id: int, rc: int | None) -> str:
    """One line an operator can act on: the first failed task and its message."""
    first_failure = session().scalars(
        select(JobEvent).where(JobEvent.job_id == job_id,
                               JobEvent.event.in_(("runner_on_failed", "runner_on_unreachable")))
        .order_by(JobEvent.counter).limit(1)).first()
    if first_failure is not None:
        res = first_failure.data.get("res", {}) if isinstance(first_failure.data, dict) else {}
        return failed_task_line(first_failure.host, first_failure.task, first_failure.event, res)
    if rc == 4:
        return "the node could not be reached over SSH"
    return f"the playbook failed (rc {rc}); see the node's logs"


def failed_task_line(host: str, task: str, event: str, res: dict) -> str:
    """``host: task 'X' failed: <first line of its message>`` for a runner_on_failed/unreachable event."""
    message = str(res.get("msg") or res.get("stderr") or "").strip().splitlines()
    what = "unreachable" if event == "runner_on_unreachable" else "failed"
    detail = f": {message[0][:MAX_MESSAGE]}" if message else ""
    return f"{host}: task '{task}' {what}{detail}"


def reconcile_orphans(is_gone=claimant_is_gone, owner: str | None = None) -> list[int]:
    """Finalise jobs whose claiming process is gone (after a crash or restart), at once rather than
    when their lease expires (jobs/lease.py): only this PID namespace's processes can be judged gone
    (claims.claimant_is_gone). What is left of a job's run (Ansible's workers, their ssh, re-parented
    when their API process died) is ended first: a job is never finalised while its playbook still
    runs. Each is taken over first (a conditional UPDATE of its claimant), so that two processes
    reconciling at once finalise it once."""
    owner = owner or claimant()
    db = session()
    orphans = [(job_id, claimed_by) for job_id, claimed_by in
               db.execute(select(Job.id, Job.claimed_by).where(Job.status == JobStatus.RUNNING)).all() if is_gone(claimed_by)]
    db.rollback()
    finalised = []
    for job_id, claimed_by in orphans:
        taken = db.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING,
                                             Job.claimed_by == claimed_by).values(claimed_by=owner)).rowcount
        db.commit()
        if taken == 1:
            end_processes_of(claimed_by)
            finalize(job_id, "error", None, "the API process running this job stopped before it finished; "
                     "the node was set to a consistent state", {}, owner=owner)
            finalised.append(job_id)
    return finalised
