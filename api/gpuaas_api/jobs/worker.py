"""Job workers: the loop that claims a run (queue.py), runs its playbook (runner.py) with its events
stored as they come (events.py), and finalises each of its jobs (finalize.py); and each process's
housekeeper, which schedules the metrics collection and finalises what dead processes left."""
from __future__ import annotations

import logging
import socket
import threading
import time

from flask import Flask, current_app
from sqlalchemy import select, update

from .. import audit
from ..agent_wheel import agent_source_vars
from ..db import release, session
from ..metrics import collector
from ..models import Job, Node
from ..pools import start_pool_deployment
from ..ssh_keys import private_key_file
from ..states import ROLE_FLAGS, JobStatus, Operation
from .events import EventWriter
from .finalize import finalize, reconcile_orphans
from .lease import Lease, expire_lapsed
from .queue import BATCH_QUIET_SECONDS, claim_run, claimant
from .submit import job_submitted
from .runner import AnsibleNotFound, HostSpec, pid_alive, remove_stale_job_dirs, run_playbook

log = logging.getLogger(__name__)
CANCEL_POLL_SECONDS = 0.5
# Besides at start-up, the housekeeper looks for jobs orphaned by a dead process this often.
RECONCILE_SECONDS = 30
# How often the housekeeper asks whether the metrics collection is due (see metrics/collector.py).
COLLECTION_CHECK_SECONDS = 5.0
# How often the housekeeper deletes the audit records older than GPUAAS_AUDIT_RETENTION_DAYS: they
# are kept for days, so an hour late is nothing, and a delete is not worth taking the write lock more often.
AUDIT_PRUNE_SECONDS = 3600.0


def node_groups(node: Node) -> list[str]:
    return [group for group, flag in ROLE_FLAGS.items() if getattr(node, flag)]


# The roles' defaults that name "the controller" as the first host of the run's `controller` group.
CONTROLLER_VARIABLES = ("cluster_join_controller", "cluster_leave_controller", "cluster_departed_controller",
                        "node_reboot_controller")


def own_controller(node: Node, helpers: list[Node]) -> str:
    """The controller a node's roles use when its job runs alone: the first controller-flagged host of
    its own run (the node, then its helpers), or none."""
    return next((host.inventory_name for host in [node, *helpers] if host.is_controller_node), "")


def host_spec(node: Node, controller: str | None = None) -> HostSpec:
    """The node as an inventory host. ``controller`` (in a batch) pins the controller its roles use to
    the one its own run would have had: the batch's `controller` group also holds the other jobs'
    controller-flagged nodes, maybe of other regions, and its first one is nobody's in particular."""
    hostvars = {"node_init_roles": node_groups(node)}
    if controller is not None:
        hostvars.update(dict.fromkeys(CONTROLLER_VARIABLES, controller))
    if node.kubernetes_name:
        hostvars["gpuaas_node_name"] = node.kubernetes_name  # what every role names the node in Kubernetes
    if node.volume_group:
        hostvars["node_init_volume_group"] = node.volume_group
        hostvars["storage_metrics_volume_group"] = node.volume_group
    if node.external_service_ip:
        hostvars["node_init_external_service_ip"] = node.external_service_ip
    config = current_app.config["GPUAAS"]
    if config.agent_http:
        # Every play that installs the agent (gpu_sharing, gpuaas_enable, node_join) gives it HTTP on
        # the node's registered address and the token; the task installing the token is no_log, and the
        # inventory is gone with the job's private directory.
        hostvars["gpu_sharing_agent_http_listen"] = config.agent_address(node.node_ip)
        hostvars["gpu_sharing_agent_token"] = config.AGENT_TOKEN
    return HostSpec(node_id=node.id, name=node.inventory_name, address=node.node_ip, port=node.port, user=node.username,
                    groups=node_groups(node), host_key=node.ssh_host_key, hostvars=hostvars)


def _host_outcome(result, host: str) -> tuple[str, int | None]:
    if result.status not in ("successful", "failed"):
        return result.status, result.rc  # canceled, timeout, error: the whole run
    if host in result.stats.get("dark", {}):
        return "failed", 4
    if host in result.stats.get("failures", {}):
        return "failed", 2
    if host not in result.stats.get("processed", {}):
        return "failed", result.rc
    return "successful", 0


def _reached(result, host: str) -> bool:
    return any(host in result.stats.get(kind, {}) for kind in ("processed", "dark", "failures"))


def _someone_failed(result) -> bool:
    return bool(result.stats.get("dark") or result.stats.get("failures"))


class Housekeeper(threading.Thread):
    """One per process, beside its job workers: it starts the metrics collection when due,
    finalises what dead or stalled processes left running (orphans, lapsed leases), and deletes the
    audit records past their retention. It never runs a playbook, so it keeps its period while every
    job worker is busy with a long one."""

    def __init__(self, app: Flask):
        super().__init__(name="gpuaas-housekeeper", daemon=True)
        self.app = app
        self.stopping = threading.Event()

    def run(self) -> None:
        config = self.app.config["GPUAAS"]
        collecting = config.METRICS_INTERVAL_SECONDS > 0
        next_reconcile = time.monotonic() + min(RECONCILE_SECONDS, config.JOB_LEASE_RENEW_SECONDS)
        next_collection_check = time.monotonic() if collecting else float("inf")
        next_audit_prune = time.monotonic() if config.AUDIT_RETENTION_DAYS > 0 else float("inf")
        with self.app.app_context():
            while not self.stopping.is_set():
                if time.monotonic() >= next_collection_check:
                    # Cheap (one conditional UPDATE); the shared schedule lets one caller per period win.
                    # The winner of an agents' period reads them here, within half the interval.
                    next_collection_check = time.monotonic() + min(COLLECTION_CHECK_SECONDS,
                                                                   config.METRICS_INTERVAL_SECONDS / 2)
                    try:
                        collector.tick(config)
                    except Exception:
                        log.exception("scheduling the metrics collection failed")
                    release()
                if time.monotonic() >= next_reconcile:
                    # A lapsed lease is finalised within a renewal interval of its expiry, by any process.
                    next_reconcile = time.monotonic() + min(RECONCILE_SECONDS, config.JOB_LEASE_RENEW_SECONDS)
                    try:
                        reconcile_orphans(socket.gethostname(), pid_alive)
                        expire_lapsed(claimant())
                        sweep_job_dirs(config)
                    except Exception:
                        log.exception("reconciling orphaned jobs failed")
                    release()
                if time.monotonic() >= next_audit_prune:
                    next_audit_prune = time.monotonic() + AUDIT_PRUNE_SECONDS
                    try:
                        audit.prune(config.AUDIT_RETENTION_DAYS)
                    except Exception:
                        log.exception("pruning the audit trail failed")
                    release()
                self.stopping.wait(max(0.05, min(next_reconcile, next_collection_check, next_audit_prune)
                                       - time.monotonic()))


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
        config = self.app.config["GPUAAS"]
        db = session()
        jobs = [db.get(Job, job_id) for job_id in job_ids]
        lead = jobs[0]
        nodes = [db.get(Node, node_id) for node_id in lead.extravars.get("hosts", [])]
        if len(jobs) > 1:  # a batch: each job's node (its target), then the helpers they share (a controller)
            nodes = [db.get(Node, job.node_id) for job in jobs]
            nodes += [db.get(Node, node_id) for node_id in lead.extravars.get("hosts", [])[1:]]
        # A pool change shows in the logs of each node it touched; the periodic metrics collection
        # would bury them, so its events stay with its job only.
        node_of_host = ({} if lead.operation == Operation.COLLECT_METRICS.value
                        else {node.inventory_name: node.id for node in nodes if node is not None})
        writer = EventWriter(self.app, {job.id: job.node_id for job in jobs}, node_of_host)
        # In a batch, a host's events belong to that host's job; the play's own go to every job.
        job_of_host = ({node.inventory_name: job.id for job, node in zip(jobs, nodes) if node is not None}
                       if len(jobs) > 1 else {})
        last_poll = [0.0, False]
        owner = claimant()
        lease = Lease(job_ids, owner, config.JOB_LEASE_RENEW_SECONDS)

        def on_event(event: dict) -> None:
            host = event.get("event_data", {}).get("host")
            if host in job_of_host:
                writer.put(job_of_host[host], event)
            else:
                for job in jobs:
                    writer.put(job.id, event)

        def should_cancel() -> bool:
            """Asked by the runner while the playbook runs: a cancel request, or the lease lost."""
            if time.monotonic() - last_poll[0] >= CANCEL_POLL_SECONDS:
                last_poll[0] = time.monotonic()
                with self.app.app_context():
                    last_poll[1] = bool(session().scalar(select(Job.id).where(Job.id.in_(job_ids),
                                                                              Job.cancel_requested).limit(1)))
                    last_poll[1] = not lease.still_held() or last_poll[1]
                    release()
            return last_poll[1]

        log.info("running job(s) %s: %s on %s", job_ids, lead.operation, ", ".join(n.inventory_name for n in nodes if n))
        result, failure = None, ""
        try:
            if any(node is None for node in nodes):
                raise RuntimeError("a node of this job was deleted before it ran")
            with self.app.app_context():  # the deployment's identity: made by the first job that needs it
                identity = private_key_file(config)
            if "targets" in lead.extravars:  # a multi-node job (pool_apply): its hosts beyond these are helpers
                target_nodes = [node for node in nodes if node.id in lead.extravars["targets"]]
            else:
                target_nodes = nodes[:len(jobs)]
            targets = ",".join(node.inventory_name for node in target_nodes)
            if lead.operation == Operation.POOL_APPLY.value:
                start_pool_deployment(lead.extravars["pool_id"])
            extravars = {**lead.extravars.get("vars", {}), "gpuaas_targets": targets}
            extravars.update(agent_source_vars(lead.operation, config))  # the checkout's agent wheel, for its playbooks
            if lead.operation == Operation.REBOOT.value and "node_reboot_serial" not in config.ANSIBLE_EXTRA_VARS:
                extravars["node_reboot_serial"] = config.REBOOT_SERIAL  # how many of a batch's nodes go down at once
            playbook_started = time.monotonic()
            if len(jobs) > 1:  # a batch: each target keeps its own controller (its job's helpers are the lead's)
                helpers = nodes[len(jobs):]
                hosts = ([host_spec(n, own_controller(n, helpers)) for n in nodes[:len(jobs)]]
                         + [host_spec(n) for n in helpers])
            else:
                hosts = [host_spec(n) for n in nodes]
            result = run_playbook(lead.id, Operation(lead.operation).value, hosts,
                                  extravars, config.DATA_DIR, identity,
                                  on_event, should_cancel, timeout=config.JOB_TIMEOUT_SECONDS,
                                  operator_extravars=config.ANSIBLE_EXTRA_VARS)
            log.info("job(s) %s: playbook %s in %.2f s", job_ids, result.status, time.monotonic() - playbook_started)
        except AnsibleNotFound as error:  # the install's fault, not the job's: no traceback
            log.error("jobs %s could not run: %s", job_ids, error)
            failure = f"the job could not run: {error}"
        except Exception as error:  # finalise whatever happened: a job never stays running
            log.exception("jobs %s failed to run", job_ids)
            failure = f"the job could not run: {error}"
        finally:
            emitted = writer.close()
            session().rollback()
            self._finish(jobs, nodes, result, failure, emitted, owner)

    def _finish(self, jobs, nodes, result, failure: str, emitted: dict, owner: str) -> None:
        """Finalise each job of the run, as ``owner``: a job whose lease this process lost is left alone."""
        db = session()
        for job, node in zip(jobs, nodes):
            if result is None:
                finalize(job.id, "error", None, failure, {}, emitted_events=emitted[job.id], owner=owner)
                continue
            if len(jobs) == 1:
                outcomes = {n.id: _host_outcome(result, n.inventory_name)[0] == "successful" for n in nodes if n is not None}
                finalize(job.id, result.status, result.rc, result.explanation, result.artifact_data,
                         result.new_host_keys, emitted[job.id], host_outcomes=outcomes, owner=owner)
                continue
            if result.status == "canceled" and not db.scalar(select(Job.cancel_requested).where(Job.id == job.id)):
                # Canceled because another job of its batch was: run it again later.
                db.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING, Job.claimed_by == owner)
                           .values(status=JobStatus.PENDING, claimed_by=None, started_at=None, lease_expires_at=None))
                db.commit()
                continue
            if result.status == "failed" and not _reached(result, node.inventory_name) and _someone_failed(result):
                # The run stopped before it reached this node (a rolling reboot stops when a whole serial
                # batch failed): it is not this node's failure, and nothing was done to it. Run it again.
                db.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING, Job.claimed_by == owner)
                           .values(status=JobStatus.PENDING, claimed_by=None, started_at=None, lease_expires_at=None))
                db.commit()
                continue
            status, rc = _host_outcome(result, node.inventory_name)
            artifact = {key: {node.inventory_name: value[node.inventory_name]} for key, value in result.artifact_data.items()
                        if isinstance(value, dict) and node.inventory_name in value}
            keys = {node.id: result.new_host_keys[node.id]} if node.id in result.new_host_keys else {}
            explanation = result.explanation if status == result.status else ""
            finalize(job.id, status, rc, explanation, artifact, keys, emitted[job.id], owner=owner)


def sweep_job_dirs(config) -> list[str]:
    """Remove this host's private run dirs that no running job owns (runner.remove_stale_job_dirs)."""
    removed = remove_stale_job_dirs(
        config.DATA_DIR, lambda: set(session().scalars(select(Job.id).where(Job.status == JobStatus.RUNNING))))
    if removed:
        log.warning("removed the run directories of jobs no longer running: %s", ", ".join(removed))
    return removed


def start_workers(app: Flask, count: int = 2) -> list[threading.Thread]:
    """The process's ``count`` job workers and its housekeeper, started."""
    workers: list[threading.Thread] = [JobWorker(app) for _worker in range(count)]
    workers.append(Housekeeper(app))
    for worker in workers:
        worker.start()
    return workers


def reconcile(app: Flask) -> list[int]:
    with app.app_context():
        finalised = reconcile_orphans(socket.gethostname(), pid_alive)
        sweep_job_dirs(app.config["GPUAAS"])
        return finalised
