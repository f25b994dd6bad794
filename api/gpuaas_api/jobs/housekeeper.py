"""Each API process's housekeepers: beside its job workers, one finalises what dead or stalled
processes left running (orphans, lapsed leases) and sweeps run directories; another does the periodic
tasks the operations registered (hooks.register_periodic: the metrics collection, the audit's
pruning). Neither runs a playbook, so each keeps its period while every job worker is busy."""
from __future__ import annotations

import logging
import threading
import time

from flask import Flask
from sqlalchemy import select

from ..db import release, session
from ..models import Job
from ..states import JobStatus
from .finalize import reconcile_orphans
from .hooks import PeriodicTask, periodic_tasks
from .identity import claimant
from .lease import expire_lapsed
from .runner import remove_stale_job_dirs

log = logging.getLogger(__name__)
# Besides at start-up, the housekeeper looks for jobs orphaned by a dead process this often.
RECONCILE_SECONDS = 30


def recover(config) -> None:
    """A lapsed lease is finalised within a renewal interval of its expiry, by any process."""
    reconcile_orphans()
    expire_lapsed(claimant())
    sweep_job_dirs(config)


RECOVERY = PeriodicTask("reconciling orphaned jobs", lambda config: min(RECONCILE_SECONDS, config.JOB_LEASE_RENEW_SECONDS),
                        recover)


class Housekeeper(threading.Thread):
    """Runs ``tasks``, each every its period, until ``stopping``; ``wait_first``: the first runs wait one period."""

    def __init__(self, app: Flask, tasks: list[PeriodicTask] | None = None, name: str = "gpuaas-housekeeper",
                 wait_first: bool = False):
        super().__init__(name=name, daemon=True)
        self.app, self.wait_first = app, wait_first
        self.tasks = [RECOVERY, *periodic_tasks] if tasks is None else tasks
        self.stopping = threading.Event()

    def run(self) -> None:
        config = self.app.config["GPUAAS"]
        tasks = [task for task in self.tasks if task.every(config) > 0]
        if not tasks:
            return
        due = {task.name: time.monotonic() + (task.every(config) if self.wait_first else 0) for task in tasks}
        with self.app.app_context():
            while not self.stopping.is_set():
                for task in tasks:
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


def housekeepers(app: Flask) -> list[Housekeeper]:
    """Recovery (orphans, lapsed leases) in a thread of its own, the registered periodic tasks (the
    metrics collection, prunings) in another: an agent that hangs a collection never delays the
    finalisation of a lapsed lease. Recovery waits one period: reconcile() ran at start-up."""
    return [Housekeeper(app, [RECOVERY], "gpuaas-recovery", wait_first=True),
            Housekeeper(app, list(periodic_tasks), "gpuaas-periodic")]


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
        finalised = reconcile_orphans()
        sweep_job_dirs(app.config["GPUAAS"])
        return finalised
