"""Each API process's housekeeper: beside its job workers, it finalises what dead or stalled
processes left running (orphans, lapsed leases), sweeps run directories, and does the periodic
tasks the operations registered (hooks.register_periodic: the metrics collection, the audit's
pruning). It never runs a playbook, so it keeps its period while every job worker is busy."""
from __future__ import annotations

import logging
import socket
import threading
import time

from flask import Flask
from sqlalchemy import select

from ..db import release, session
from ..models import Job
from ..states import JobStatus
from .claims import claimant
from .finalize import reconcile_orphans
from .hooks import PeriodicTask, periodic_tasks
from .lease import expire_lapsed
from .runner import pid_alive, remove_stale_job_dirs

log = logging.getLogger(__name__)
# Besides at start-up, the housekeeper looks for jobs orphaned by a dead process this often.
RECONCILE_SECONDS = 30


def recover(config) -> None:
    """A lapsed lease is finalised within a renewal interval of its expiry, by any process."""
    reconcile_orphans(socket.gethostname(), pid_alive)
    expire_lapsed(claimant())
    sweep_job_dirs(config)


RECOVERY = PeriodicTask("reconciling orphaned jobs", lambda config: min(RECONCILE_SECONDS, config.JOB_LEASE_RENEW_SECONDS),
                        recover)


class Housekeeper(threading.Thread):
    def __init__(self, app: Flask):
        super().__init__(name="gpuaas-housekeeper", daemon=True)
        self.app = app
        self.stopping = threading.Event()

    def run(self) -> None:
        config = self.app.config["GPUAAS"]
        tasks = [task for task in periodic_tasks if task.every(config) > 0]
        # Recovery waits one period (reconcile() ran at start-up); the others start at once.
        due = {RECOVERY.name: time.monotonic() + RECOVERY.every(config), **{task.name: time.monotonic() for task in tasks}}
        with self.app.app_context():
            while not self.stopping.is_set():
                for task in [RECOVERY, *tasks]:
                    if time.monotonic() >= due[task.name]:
                        due[task.name] = time.monotonic() + task.every(config)
                        self.run_task(task, config)
                self.stopping.wait(max(0.05, min(due.values()) - time.monotonic()))

    @staticmethod
    def run_task(task: PeriodicTask, config) -> None:
        try:
            task.run(config)
        except Exception:
            log.exception("%s failed", task.name)
        release()


def sweep_job_dirs(config) -> list[str]:
    """Remove this host's private run dirs that no running job owns (runner.remove_stale_job_dirs)."""
    removed = remove_stale_job_dirs(
        config.DATA_DIR, lambda: set(session().scalars(select(Job.id).where(Job.status == JobStatus.RUNNING))))
    if removed:
        log.warning("removed the run directories of jobs no longer running: %s", ", ".join(removed))
    return removed


def reconcile(app: Flask) -> list[int]:
    """At start-up: finalise what this host's dead processes left running."""
    with app.app_context():
        finalised = reconcile_orphans(socket.gethostname(), pid_alive)
        sweep_job_dirs(app.config["GPUAAS"])
        return finalised
