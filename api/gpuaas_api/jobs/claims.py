"""Who claims a job, until when by the database's clock, and how the workers hear of new work."""
from __future__ import annotations

import datetime as dt
import threading

from flask import current_app
from sqlalchemy import func, select

from ..db import session


def now() -> dt.datetime:
    """This host's clock: for what only people read (created_at, finished_at), never for a lease."""
    return dt.datetime.now(dt.timezone.utc)


def database_now() -> dt.datetime:
    """The database's clock, the one every API host shares: a host whose clock runs fast must not
    expire the leases of the others. On PostgreSQL `statement_timestamp()`, since `now()` is the
    transaction's start and a long transaction would see time stand still; SQLite's clock is the
    one host's own (an SQLite file has only one host)."""
    db = session()
    if db.get_bind().dialect.name == "postgresql":
        return db.scalar(select(func.statement_timestamp()))
    text = db.scalar(select(func.strftime("%Y-%m-%d %H:%M:%f", "now")))
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


def lease_until() -> dt.datetime:
    """When a lease taken or renewed now expires (lease.py), by the database's clock."""
    return database_now() + dt.timedelta(seconds=current_app.config["GPUAAS"].JOB_LEASE_SECONDS)


# Released once per submission (and when a job ends, so that a job queued behind it starts at once):
# one job worker of this process wakes at once instead of at its next poll (an Event would wake them
# all to race for the same job). A permit left while every worker is busy costs a later worker one
# extra look; a wake-up is never lost.
job_submitted = threading.Semaphore(0)


def wake_a_worker() -> None:
    job_submitted.release()
