"""Job workers: the loop that claims a run (queue.py), runs its playbook (runner.py) with its events
stored as they come (events.py), and finalises each of its jobs (finalize.py)."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time

from flask import Flask
from sqlalchemy import select, update

from ..db import release, session
from ..models import Job, Node
from ..ssh_keys import private_key_file
from ..states import JobStatus
from .claims import claimant, job_submitted
from .events import EventWriter
from .finalize import finalize
from .hooks import OperationHooks, hooks_for
from .housekeeper import Housekeeper
from .inventory import batch_hosts, host_spec
from .lease import Lease
from .queue import BATCH_QUIET_SECONDS, claim_run
from .results import host_artifact, host_outcome, stopped_before
from .runner import AnsibleNotFound, RunResult, run_playbook

log = logging.getLogger(__name__)
CANCEL_POLL_SECONDS = 0.5


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


def load_run(job_ids: list[int]) -> Run:
    db = session()
    jobs = [db.get(Job, job_id) for job_id in job_ids]
    hosts = jobs[0].extravars.get("hosts", [])
    if len(jobs) == 1:
        return Run(jobs, [db.get(Node, node_id) for node_id in hosts])
    return Run(jobs, [db.get(Node, job.node_id) for job in jobs] + [db.get(Node, node_id) for node_id in hosts[1:]])


class CancelPoll:
    """Asked by the runner while the playbook runs whether to stop it: a cancel request of one of its
    jobs, or the lease lost. The database is read at most every CANCEL_POLL_SECONDS."""

    def __init__(self, app: Flask, job_ids: list[int], lease: Lease):
        self.app, self.job_ids, self.lease = app, job_ids, lease
        self.polled_at, self.answer = 0.0, False

    def __call__(self) -> bool:
        if time.monotonic() - self.polled_at >= CANCEL_POLL_SECONDS:
            self.polled_at = time.monotonic()
            with self.app.app_context():
                asked = bool(session().scalar(select(Job.id).where(Job.id.in_(self.job_ids), Job.cancel_requested).limit(1)))
                self.answer = not self.lease.still_held() or asked
                release()
        return self.answer


def event_router(writer: EventWriter, run: Run):
    """The runner's event callback: each event to its host's job in a batch, else to every job of the run."""
    job_of_host = run.job_of_host()

    def on_event(event: dict) -> None:
        host = event.get("event_data", {}).get("host")
        for job_id in ([job_of_host[host]] if host in job_of_host else [job.id for job in run.jobs]):
            writer.put(job_id, event)
    return on_event


class JobWorker(threading.Thread):
    def __init__(self, app: Flask, poll_seconds: float = 0.5):
        super().__init__(name="gpuaas-job-worker", daemon=True)
        self.app, self.poll_seconds = app, poll_seconds
        self.stopping = threading.Event()

    def run(self) -> None:
        with self.app.app_context():
            while not self.stopping.is_set():
                try:
                    batch, held = claim_run()
                except Exception:  # the database may be briefly unavailable; try again
                    log.exception("claiming a job failed")
                    batch, held = [], False
                if not batch:
                    release()
                    # A job held in its batch window becomes claimable soon: look again then.
                    job_submitted.acquire(timeout=BATCH_QUIET_SECONDS if held else self.poll_seconds)
                    continue
                try:
                    self.execute(batch)
                except Exception:  # finalize failed (database gone?): keep the worker alive
                    log.exception("jobs %s could not be finalised", batch)
                finally:
                    release()

    def execute(self, job_ids: list[int]) -> None:
        """Run the claimed jobs' playbook and finalise each of them, whatever happened: a job never stays running."""
        config = self.app.config["GPUAAS"]
        run = load_run(job_ids)
        hooks = hooks_for(run.lead.operation)
        writer = EventWriter(self.app, {job.id: job.node_id for job in run.jobs},
                             run.node_of_host() if hooks.events_on_node_logs else {})
        owner = claimant()
        should_cancel = CancelPoll(self.app, job_ids, Lease(job_ids, owner, config.JOB_LEASE_RENEW_SECONDS))
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
            emitted = writer.close()
            session().rollback()
            finish_run(run, result, failure, emitted, owner)

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


def finish_run(run: Run, result: RunResult | None, failure: str, emitted: dict, owner: str) -> None:
    """Finalise each job of the run, as ``owner``: a job whose lease this process lost is left alone."""
    for job, node in zip(run.jobs, run.nodes):
        if result is None:
            finalize(job.id, "error", None, failure, {}, emitted_events=emitted[job.id], owner=owner)
        elif not run.is_batch:
            outcomes = {n.id: host_outcome(result, n.inventory_name)[0] == "successful" for n in run.nodes if n is not None}
            finalize(job.id, result.status, result.rc, result.explanation, result.artifact_data,
                     result.new_host_keys, emitted[job.id], host_outcomes=outcomes, owner=owner)
        elif must_run_again(job, node, result):
            put_back(job, owner)
        else:
            finish_batch_job(job, node, result, emitted[job.id], owner)


def must_run_again(job: Job, node: Node, result: RunResult) -> bool:
    """A batch's job that its run did not really try: canceled because another job of the batch was,
    or stopped before its node was reached."""
    if result.status == "canceled":
        return not session().scalar(select(Job.cancel_requested).where(Job.id == job.id))
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


def start_workers(app: Flask, count: int = 2) -> list[threading.Thread]:
    """The process's ``count`` job workers and its housekeeper, started."""
    workers: list[threading.Thread] = [JobWorker(app) for _worker in range(count)]
    workers.append(Housekeeper(app))
    for worker in workers:
        worker.start()
    return workers
