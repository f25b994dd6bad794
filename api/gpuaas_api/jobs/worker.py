"""Job workers: claim each pending job exactly once, run it, finalise it.

Any number of workers, in any number of API processes, may poll the same
database: a job is claimed with a conditional UPDATE (status pending -> running),
which only one of them can win.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import socket
import threading
import time

from flask import Flask
from sqlalchemy import select, update

from ..db import release, session
from ..models import Job, JobEvent, Node
from ..ssh_keys import controller_key_path, controller_public_key
from ..states import JobStatus, Operation
from .finalize import finalize, reconcile_orphans
from .runner import HostSpec, run_playbook

log = logging.getLogger(__name__)
EVENT_FLUSH_SECONDS = 0.2
CANCEL_POLL_SECONDS = 0.5
# Besides at start-up, workers look for jobs orphaned by a dead process this often.
RECONCILE_SECONDS = 30


def claimant() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (dead, not yet reaped) counts as gone."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def claim_next() -> int | None:
    db = session()
    candidate = db.scalar(select(Job.id).where(Job.status == JobStatus.PENDING).order_by(Job.id).limit(1))
    if candidate is None:
        return None
    won = db.execute(update(Job).where(Job.id == candidate, Job.status == JobStatus.PENDING).values(
        status=JobStatus.RUNNING, claimed_by=claimant(), started_at=dt.datetime.now(dt.timezone.utc))).rowcount
    db.commit()
    return candidate if won == 1 else None


def node_groups(node: Node) -> list[str]:
    roles = {"controller": node.is_controller_node, "worker": node.is_worker_node,
             "gateway": node.is_gateway_service, "storage": node.is_storage_service}
    return [group for group, on in roles.items() if on]


def host_spec(node: Node) -> HostSpec:
    hostvars = {"node_init_roles": node_groups(node)}
    if node.volume_group:
        hostvars["node_init_volume_group"] = node.volume_group
        hostvars["storage_metrics_volume_group"] = node.volume_group
    if node.external_service_ip:
        hostvars["node_init_external_service_ip"] = node.external_service_ip
    return HostSpec(node_id=node.id, name=node.name, address=node.node_ip, port=node.port, user=node.username,
                    groups=node_groups(node), host_key=node.ssh_host_key, hostvars=hostvars)


class EventWriter:
    """Stores events as they arrive, off the runner's thread (a slow handler stalls the runner)."""

    def __init__(self, app: Flask, job_id: int, node_id: int | None):
        self.app, self.job_id, self.node_id = app, job_id, node_id
        self.events: queue.Queue = queue.Queue()
        self.count = 0
        self.thread = threading.Thread(target=self._drain, name=f"events-{job_id}", daemon=True)
        self.stopping = threading.Event()
        self.thread.start()

    def put(self, event: dict) -> None:
        self.events.put(event)

    def _drain(self) -> None:
        with self.app.app_context():
            while not (self.stopping.is_set() and self.events.empty()):
                batch = []
                try:
                    batch.append(self.events.get(timeout=EVENT_FLUSH_SECONDS))
                    while True:
                        batch.append(self.events.get_nowait())
                except queue.Empty:
                    pass
                if batch:
                    self._store(batch)
            release()

    def _store(self, batch: list[dict]) -> None:
        db = session()
        for event in batch:
            self.count += 1
            data = event.get("event_data", {})
            db.add(JobEvent(job_id=self.job_id, node_id=self.node_id, counter=event.get("counter", self.count),
                            event=event.get("event", "unknown"), host=data.get("host"),
                            task=data.get("task"), stdout=event.get("stdout", ""),
                            data={k: data[k] for k in ("res",) if k in data and isinstance(data[k], dict)
                                  and not data[k].get("_ansible_no_log")}))
        db.commit()

    def close(self) -> int:
        self.stopping.set()
        self.thread.join(timeout=30)
        return self.count


class JobWorker(threading.Thread):
    def __init__(self, app: Flask, poll_seconds: float = 0.5):
        super().__init__(name="gpuaas-job-worker", daemon=True)
        self.app, self.poll_seconds = app, poll_seconds
        self.stopping = threading.Event()

    def run(self) -> None:
        next_reconcile = time.monotonic() + RECONCILE_SECONDS
        with self.app.app_context():
            while not self.stopping.is_set():
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + RECONCILE_SECONDS
                    try:
                        reconcile_orphans(socket.gethostname(), pid_alive)
                    except Exception:
                        log.exception("reconciling orphaned jobs failed")
                    release()
                try:
                    job_id = claim_next()
                except Exception:  # the database may be briefly unavailable; try again
                    log.exception("claiming a job failed")
                    release()
                    job_id = None
                if job_id is None:
                    self.stopping.wait(self.poll_seconds)
                    continue
                try:
                    self.execute(job_id)
                except Exception:  # finalize failed (database gone?): keep the worker alive
                    log.exception("job %s could not be finalised", job_id)
                finally:
                    release()

    def execute(self, job_id: int) -> None:
        config = self.app.config["GPUAAS"]
        db = session()
        job = db.get(Job, job_id)
        node_ids = job.extravars.get("hosts", [])
        nodes = [db.get(Node, node_id) for node_id in node_ids]
        writer = EventWriter(self.app, job.id, job.node_id)
        last_poll = [0.0, False]

        def should_cancel() -> bool:
            if time.monotonic() - last_poll[0] >= CANCEL_POLL_SECONDS:
                last_poll[0] = time.monotonic()
                with self.app.app_context():
                    last_poll[1] = bool(session().scalar(select(Job.cancel_requested).where(Job.id == job_id)))
                    release()
            return last_poll[1]

        outcome = ("error", None, "", {}, {})
        try:
            if any(node is None for node in nodes):
                raise RuntimeError("a node of this job was deleted before it ran")
            controller_public_key(config.DATA_DIR)  # make the key pair if this is the first job
            extravars = {**config.ANSIBLE_EXTRA_VARS, **job.extravars.get("vars", {}),
                         "gpuaas_targets": nodes[0].name}
            result = run_playbook(job.id, Operation(job.operation).value, [host_spec(n) for n in nodes],
                                  extravars, config.DATA_DIR, controller_key_path(config.DATA_DIR),
                                  writer.put, should_cancel, timeout=config.JOB_TIMEOUT_SECONDS)
            outcome = (result.status, result.rc, result.explanation, result.artifact_data, result.new_host_keys)
        except Exception as error:  # finalise whatever happened: a job never stays running
            log.exception("job %s failed to run", job_id)
            outcome = ("error", None, f"the job could not run: {error}", {}, {})
        finally:
            emitted = writer.close()
            session().rollback()
            finalize(job_id, *outcome, emitted_events=emitted)


def start_workers(app: Flask, count: int = 2) -> list[JobWorker]:
    workers = [JobWorker(app) for _worker in range(count)]
    for worker in workers:
        worker.start()
    return workers


def reconcile(app: Flask) -> list[int]:
    with app.app_context():
        return reconcile_orphans(socket.gethostname(), pid_alive)
