"""Job workers: the loop that claims a run (queue.py), runs its playbook (runner.py) with its events
stored as they come (events.py), and finalises each of its jobs (finalize.py)."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time

from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from ..db import first_line, release, session
from ..models import Job, JobEvent, Node
from ..ssh_keys import private_key_file
from ..states import JobStatus
from .claims import job_submitted
from .events import EventWriter
from .finalize import finalize
from .hooks import OperationHooks, hooks_for
from .housekeeper import housekeepers
from .identity import claimant
from .inventory import batch_hosts, host_spec
from .lease import Lease
from .queue import BATCH_QUIET_SECONDS, claim_run
from .results import host_artifact, host_outcome, stopped_before
from .runner import AnsibleNotFound, RunResult, run_playbook

log = logging.getLogger(__name__)
CANCEL_POLL_SECONDS = 0.5
LEASE_LOST = ("the run was stopped: its lease could not be renewed (the database could not be reached for "
              "longer than GPUAAS_JOB_LEASE_SECONDS, or another API process took the job over)")
# How long a run's log is still tried once the run ended, past its lease if need be.
LOG_AFTER_RUN_SECONDS = 30
# A run handed over (drain) is stopped as a cancel is: its processes are gone within seconds.
HAND_OVER_SECONDS = 15


@dataclasses.dataclass
class Run:
    """One claimed playbook run: its jobs (the first leads; more than one is a batch) and their nodes:
    each job's own node, then the helpers they share (a controller). A deleted node is None."""

    jobs: list[Job]
    nodes: list[Node | None]

    @property
    def lead(self) -> Job:
        return self.jobs[0]

    @property
    def is_batch(self) -> bool:
        return len(self.jobs) > 1

    def targets(self) -> list[Node]:
        """The nodes the run acts on; a multi-node job's (pool_apply) hosts beyond its targets are helpers."""
        if "targets" in self.lead.extravars:
            return [node for node in self.nodes if node.id in self.lead.extravars["targets"]]
        return self.nodes[:len(self.jobs)]

    def hosts(self):
        if self.is_batch:
            return batch_hosts(self.nodes[:len(self.jobs)], self.nodes[len(self.jobs):])
        return [host_spec(node) for node in self.nodes]

    def job_of_host(self) -> dict[str, int]:
        """In a batch, a host's events belong to that host's job; the play's own go to every job."""
        if not self.is_batch:
            return {}
        return {node.inventory_name: job.id for job, node in zip(self.jobs, self.nodes) if node is not None}

    def node_of_host(self) -> dict[str, int]:
        return {node.inventory_name: node.id for node in self.nodes if node is not None}


def counter_bases(job_ids: list[int]) -> dict[int, int]:
    """Each job's highest event counter so far: a job put back and run again numbers its new events after them."""
    return dict(session().execute(select(JobEvent.job_id, func.max(JobEvent.counter)).where(JobEvent.job_id.in_(job_ids))
                                  .group_by(JobEvent.job_id)).all())


def load_run(job_ids: list[int]) -> Run:
    db = session()
    jobs = [db.get(Job, job_id) for job_id in job_ids]
    hosts = jobs[0].extravars.get("hosts", [])
    if len(jobs) == 1:
        return Run(jobs, [db.get(Node, node_id) for node_id in hosts])
    return Run(jobs, [db.get(Node, job.node_id) for job in jobs] + [db.get(Node, node_id) for node_id in hosts[1:]])


class CancelPoll:
    """Asked by the runner while the playbook runs whether to stop it: a cancel request of one of its
    jobs, the lease lost, or the process handing its runs over (drain). The database is read at most
    every CANCEL_POLL_SECONDS; while it can't be reached, no cancel is known and the lease decides."""

    def __init__(self, app: Flask, job_ids: list[int], lease: Lease, handing_over: threading.Event):
        self.app, self.job_ids, self.lease, self.handing_over = app, job_ids, lease, handing_over
        self.polled_at, self.answer = 0.0, False

    def __call__(self) -> bool:
        if self.handing_over.is_set():
            return True
        if time.monotonic() - self.polled_at >= CANCEL_POLL_SECONDS:
            self.polled_at = time.monotonic()
            with self.app.app_context():
                self.answer = self.cancel_asked() or not self.lease.still_held()
                release()
        return self.answer

    def cancel_asked(self) -> bool:
        try:
            return bool(session().scalar(select(Job.id).where(Job.id.in_(self.job_ids), Job.cancel_requested).limit(1)))
        except SQLAlchemyError:  # unknown: the run goes on while its lease holds (Lease.still_held)
            release()
            return False


def event_router(writer: EventWriter, run: Run):
    """The runner's event callback: each event to its host's job in a batch, else to every job of the run."""
    job_of_host = run.job_of_host()

    def on_event(event: dict) -> None:
        host = event.get("event_data", {}).get("host")
        for job_id in ([job_of_host[host]] if host in job_of_host else [job.id for job in run.jobs]):
            writer.put(job_id, event)
    return on_event


class JobWorker(threading.Thread):
    """Claims runs and plays them until ``stopping``; ``handing_over`` (drain) stops its run at once,
    and the run's jobs go back to pending for any process to run again."""

    def __init__(self, app: Flask, poll_seconds: float = 0.5, handing_over: threading.Event | None = None):
        super().__init__(name="gpuaas-job-worker", daemon=True)
        self.app, self.poll_seconds = app, poll_seconds
        self.stopping = threading.Event()
        self.handing_over = handing_over or threading.Event()
        self.current: list[int] = []  # the jobs of the run it plays

    def run(self) -> None:
        failures = 0  # claims in a row that failed
        with self.app.app_context():
            while not self.stopping.is_set():
                try:
                    batch, held = claim_run()
                    failures = 0
                except Exception as error:  # the database may be briefly unavailable; try again
                    release()
                    failures += 1
                    if failures == 1:
                        log.exception("claiming a job failed")
                    elif failures % 60 == 0:  # every 30 s or so: an outage is not a flood of tracebacks
                        log.warning("claiming a job still fails (%d tries): %s", failures, first_line(error))
                    batch, held = [], False
                if not batch:
                    release()
                    # A job held in its batch window becomes claimable soon: look again then.
                    job_submitted.acquire(timeout=BATCH_QUIET_SECONDS if held else self.poll_seconds)
                    continue
                self.current = batch
                try:
                    self.execute(batch)
                except Exception:  # finalize failed past the lease (database gone?): keep the worker alive
                    log.exception("jobs %s could not be finalised", batch)
                finally:
                    self.current = []
                    release()

    def execute(self, job_ids: list[int]) -> None:
        """Run the claimed jobs' playbook and finalise each of them, whatever happened: a job never stays running."""
        config = self.app.config["GPUAAS"]
        run = load_run(job_ids)
        hooks = hooks_for(run.lead.operation)
        writer = EventWriter(self.app, {job.id: job.node_id for job in run.jobs},
                             run.node_of_host() if hooks.events_on_node_logs else {}, counter_bases(job_ids))
        owner = claimant()
        lease = Lease(job_ids, owner, config.JOB_LEASE_RENEW_SECONDS, config.JOB_LEASE_SECONDS)
        should_cancel = CancelPoll(self.app, job_ids, lease, self.handing_over)
        log.info("running job(s) %s: %s on %s", job_ids, run.lead.operation,
                 ", ".join(node.inventory_name for node in run.nodes if node))
        result, failure = None, ""
        try:
            result = self.play(run, hooks, event_router(writer, run), should_cancel)
        except AnsibleNotFound as error:  # the install's fault, not the job's: no traceback
            log.error("jobs %s could not run: %s", job_ids, error)
            failure = f"the job could not run: {error}"
        except Exception as error:  # finalise whatever happened
            log.exception("jobs %s failed to run", job_ids)
            failure = f"the job could not run: {error}"
        finally:
            if lease.lost and result is not None and result.status == "canceled":
                result = dataclasses.replace(result, status="error", explanation=LEASE_LOST)
            # The log is the job's whoever finalises it: kept trying for a while even past the lease.
            emitted = writer.close(give_up_at=max(lease.valid_until(), time.monotonic() + LOG_AFTER_RUN_SECONDS))
            release()
            ending = Ending(result, failure, emitted, owner, self.handing_over.is_set())
            finish_run(run, ending, lease)

    def play(self, run: Run, hooks: OperationHooks, on_event, should_cancel) -> RunResult:
        config = self.app.config["GPUAAS"]
        if any(node is None for node in run.nodes):
            raise RuntimeError("a node of this job was deleted before it ran")
        with self.app.app_context():  # the deployment's identity: made by the first job that needs it
            identity = private_key_file(config)
        lead = run.lead
        extravars = {**lead.extravars.get("vars", {}), "gpuaas_targets": ",".join(node.inventory_name for node in run.targets())}
        extravars.update(hooks.run_vars(lead, config))
        started = time.monotonic()
        result = run_playbook(lead.id, lead.operation, run.hosts(), extravars, config.DATA_DIR, identity,
                              on_event, should_cancel, timeout=config.JOB_TIMEOUT_SECONDS,
                              operator_extravars=config.ANSIBLE_EXTRA_VARS)
        log.info("job(s) %s: playbook %s in %.2f s", [job.id for job in run.jobs], result.status, time.monotonic() - started)
        return result


@dataclasses.dataclass
class Ending:
    """How a run ended, for finish_run: its result (None: it could not run, ``failure`` says why), the
    events stored per job, the claimant, and whether the process was handing its runs over (drain)."""

    result: RunResult | None
    failure: str
    emitted: dict
    owner: str
    handed_over: bool = False


def finish_run(run: Run, ending: Ending, lease: Lease) -> None:
    """Finalise each job of the run, as its owner: a job whose lease this process lost is left alone.
    Each job's ending is retried on its own while the database can't be reached (until_landed)."""
    for job, node in zip(run.jobs, run.nodes):
        until_landed(lambda job=job, node=node: finish_job(run, job, node, ending), lease, f"job {job.id}: finalising")


def finish_job(run: Run, job: Job, node: Node | None, ending: Ending) -> None:
    result, owner = ending.result, ending.owner
    if ending.handed_over and (result is None or result.status == "canceled") and not cancel_requested(job):
        put_back(job, owner)
    elif result is None:
        finalize(job.id, "error", None, ending.failure, {}, emitted_events=ending.emitted[job.id], owner=owner)
    elif not run.is_batch:
        outcomes = {n.id: host_outcome(result, n.inventory_name)[0] == "successful" for n in run.nodes if n is not None}
        finalize(job.id, result.status, result.rc, result.explanation, result.artifact_data,
                 result.new_host_keys, ending.emitted[job.id], host_outcomes=outcomes, owner=owner)
    elif must_run_again(job, node, result):
        put_back(job, owner)
    else:
        finish_batch_job(job, node, result, ending.emitted[job.id], owner)


def until_landed(step, lease: Lease, what: str) -> bool:
    """Run ``step`` until it commits: a database error is retried every second while the lease holds.
    Past it, the jobs are left to whichever process finds their lease lapsed (lease.expire_lapsed):
    False."""
    while True:
        try:
            step()
            return True
        except SQLAlchemyError as error:
            release()
            if time.monotonic() >= lease.valid_until():
                log.error("%s: the database could not be reached within the lease (%s); the jobs are left to the "
                          "lapsed-lease recovery", what, first_line(error))
                return False
            log.warning("%s: the database could not be reached (%s); retrying", what, first_line(error))
            time.sleep(Lease.RETRY_SECONDS)


def cancel_requested(job: Job) -> bool:
    return bool(session().scalar(select(Job.cancel_requested).where(Job.id == job.id)))


def must_run_again(job: Job, node: Node, result: RunResult) -> bool:
    """A batch's job that its run did not really try: canceled because another job of the batch was,
    or stopped before its node was reached."""
    if result.status == "canceled":
        return not cancel_requested(job)
    return stopped_before(result, node.inventory_name)


def put_back(job: Job, owner: str) -> None:
    """Make a claimed job pending again, to run later."""
    db = session()
    db.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING, Job.claimed_by == owner)
               .values(status=JobStatus.PENDING, claimed_by=None, started_at=None, lease_expires_at=None))
    db.commit()


def finish_batch_job(job: Job, node: Node, result: RunResult, emitted: int, owner: str) -> None:
    """Finalise a batch's job from its own host's part of the run."""
    status, rc = host_outcome(result, node.inventory_name)
    keys = {node.id: result.new_host_keys[node.id]} if node.id in result.new_host_keys else {}
    explanation = result.explanation if status == result.status else ""
    finalize(job.id, status, rc, explanation, host_artifact(result.artifact_data, node.inventory_name), keys, emitted,
             owner=owner)


class JobWorkers:
    """One process's job workers and housekeepers: started together, drained together."""

    def __init__(self, app: Flask, count: int):
        self.handing_over = threading.Event()
        self.workers = [JobWorker(app, handing_over=self.handing_over) for _worker in range(count)]
        self.housekeepers = housekeepers(app)

    @property
    def threads(self) -> list[threading.Thread]:
        return [*self.workers, *self.housekeepers]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def drain(self, grace: float) -> list[int]:
        """Stop claiming, let the runs in progress end within ``grace`` seconds, then hand the rest
        over: their playbooks are stopped and their jobs made pending again, for any process to run
        (the roles are idempotent). Returns the ids of the jobs handed over."""
        for thread in self.threads:
            thread.stopping.set()
        job_submitted.release(len(self.workers))  # idle workers see `stopping` now
        deadline = time.monotonic() + grace
        for worker in self.workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        running = [worker for worker in self.workers if worker.is_alive()]
        if not running:
            return []
        log.warning("%d job run(s) still running after the %g s grace: handing them over", len(running), grace)
        self.handing_over.set()
        handed = [job_id for worker in running for job_id in worker.current]
        for worker in running:
            worker.join(timeout=HAND_OVER_SECONDS)
        return handed

    def stop(self, timeout: float = 30) -> None:
        """Stop every thread (tests): runs in progress end first."""
        for thread in self.threads:
            thread.stopping.set()
        job_submitted.release(len(self.workers))
        for thread in self.threads:
            thread.join(timeout=timeout)


def start_workers(app: Flask, count: int = 2) -> JobWorkers:
    """The process's ``count`` job workers and its housekeepers, started."""
    workers = JobWorkers(app, count)
    workers.start()
    app.extensions["gpuaas_job_workers"] = workers
    return workers
