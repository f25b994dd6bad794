"""Who claims a job, until when, and how the workers hear of new work."""
from __future__ import annotations

import datetime as dt
import os
import socket
import threading

from flask import current_app


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def claimant() -> str:
    """This process, as a job's `claimed_by` names it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_until() -> dt.datetime:
    """When a lease taken or renewed now expires (lease.py)."""
    return now() + dt.timedelta(seconds=current_app.config["GPUAAS"].JOB_LEASE_SECONDS)


# Released once per submission (and when a job ends, so that a job queued behind it starts at once):
# one job worker of this process wakes at once instead of at its next poll (an Event would wake them
# all to race for the same job). A permit left while every worker is busy costs a later worker one
# extra look; a wake-up is never lost.
job_submitted = threading.Semaphore(0)


def wake_a_worker() -> None:
    job_submitted.release()
