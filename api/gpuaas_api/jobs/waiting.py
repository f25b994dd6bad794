"""Long polls of a job: `GET /api/jobs/{id}?wait=SECONDS` answers once the job has finished.

A job finishes in whichever API process's worker ran it. A finish in this process wakes the
waiters at once (finalize calls notify_finished); another process's is seen by a status read
every WAIT_CHECK_SECONDS. A waiting request holds one of its process's request threads
(gunicorn's 8, cli.py), so at most MAX_WAITERS requests of a process wait at a time: past
that, `wait` answers at once with the job as it is, and the client asks again.
"""
from __future__ import annotations

import threading
import time

from flask import current_app
from sqlalchemy import select

from ..models import Job
from ..states import JobStatus

MAX_WAIT_SECONDS = 30
WAIT_CHECK_SECONDS = 0.025
MAX_WAITERS = 4

_job_finished = threading.Condition()
_waiter_slots = threading.BoundedSemaphore(MAX_WAITERS)


def notify_finished() -> None:
    """Wake this process's waiters: a job has just been finalised (committed)."""
    with _job_finished:
        _job_finished.notify_all()


def wait_until_finished(job_id: int, seconds: float) -> bool:
    """Block until job ``job_id`` has finished (True) or ``seconds`` have passed or no slot was free (False)."""
    if not _waiter_slots.acquire(blocking=False):
        return False
    try:
        deadline = time.monotonic() + seconds
        while not _finished(job_id):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with _job_finished:
                _job_finished.wait(min(left, WAIT_CHECK_SECONDS))
        return True
    finally:
        _waiter_slots.release()


def _finished(job_id: int) -> bool:
    """The job's status read on a pooled connection of its own (no ORM session, no open transaction)."""
    with current_app.extensions["gpuaas_engine"].connect() as connection:
        status = connection.execute(select(Job.status).where(Job.id == job_id)).scalar()
    return status is None or JobStatus(status).finished  # a job deleted meanwhile: nothing to wait for
