"""Leases: a running job belongs to the API process that claimed it only while that process renews it.

Every claim (queue.py) sets `jobs.lease_expires_at` to the database's clock (claims.database_now: every
host reads the same one, so a host whose clock runs fast expires nothing early) + GPUAAS_JOB_LEASE_SECONDS (60). The
worker running the job renews it every GPUAAS_JOB_LEASE_RENEW_SECONDS (10) while the playbook runs
(Lease.still_held, called from the runner's cancel poll). Any API process, on any host, finalises
a running job whose lease has expired (expire_lapsed, from every process's housekeeper thread in
jobs/worker.py): `error`, with an explanation naming the process that stopped renewing, and its
node moves to the operation's failure state. A process that comes back after losing a lease (it
was stopped, or cut off from the database) finds its renewal refused: it stops the run, and its
finalisation changes nothing (finalize's `owner`).
"""
from __future__ import annotations

import datetime as dt
import logging
import time

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from ..db import first_line, release, session
from ..models import Job
from ..states import JobStatus
from .claims import database_now, lease_until
from .finalize import finalize

log = logging.getLogger(__name__)


class Lease:
    """The leases of one run's jobs, held by ``owner`` (claims.claimant()), renewed by the database's clock.

    A database that can't be reached is no reason to stop a run: the playbook goes on while the lease
    last confirmed still holds (by this host's monotonic clock, from before that renewal was asked),
    and renewal is tried every second meanwhile. Past it, another process may have taken the jobs
    over: the run stops as if the lease were lost.
    """

    RETRY_SECONDS = 1.0

    def __init__(self, job_ids: list[int], owner: str, renew_seconds: float, lease_seconds: float = float("inf")):
        self.job_ids, self.owner = list(job_ids), owner
        self.renew_seconds, self.lease_seconds = renew_seconds, lease_seconds
        self.confirmed_at = self.tried_at = time.monotonic()  # the claim took the lease just now
        self.lost, self.failures = False, 0

    def valid_until(self) -> float:
        """Until when (time.monotonic()) the lease surely holds, as far as this process knows."""
        return self.confirmed_at + self.lease_seconds

    def still_held(self) -> bool:
        """Renew the leases when due; False once any was lost (the run must stop). Needs an app context."""
        due = self.renew_seconds if self.tried_at == self.confirmed_at else self.RETRY_SECONDS
        if self.lost or time.monotonic() - self.tried_at < due:
            return not self.lost
        asked_at = self.tried_at = time.monotonic()
        try:
            renewed = self._renew()
        except SQLAlchemyError as error:
            return self._unconfirmed(error)
        self.confirmed_at, self.failures = asked_at, 0
        if renewed != len(self.job_ids):
            self.lost = True
            log.error("jobs %s: lease lost (another API process finalised them); stopping the run", self.job_ids)
        return not self.lost

    def _renew(self) -> int:
        db = session()
        try:
            renewed = db.execute(update(Job).where(Job.id.in_(self.job_ids), Job.status == JobStatus.RUNNING,
                                                   Job.claimed_by == self.owner)
                                 .values(lease_expires_at=lease_until())).rowcount
            db.commit()
        except SQLAlchemyError:
            release()
            raise
        return renewed

    def _unconfirmed(self, error: Exception) -> bool:
        left = self.valid_until() - time.monotonic()
        self.failures += 1
        if left > 0:
            if self.failures % 10 != 1:  # once, then every ten tries: an outage is not a flood of lines
                return True
            log.warning("jobs %s: the lease could not be renewed (%s); the run goes on, the lease holds %.0f s more",
                        self.job_ids, first_line(error), left)
            return True
        self.lost = True
        log.error("jobs %s: the lease could not be renewed for %g s and may have been taken over; stopping the run",
                  self.job_ids, self.lease_seconds)
        return False


def expire_lapsed(owner: str) -> list[int]:
    """Finalise every running job whose lease has expired, whoever claimed it; the ids finalised here.

    Each is taken over first with a conditional UPDATE (its lease still expired, its claimant
    unchanged), so of several processes doing this at once one finalises it.
    """
    db = session()
    clock = database_now()
    lapsed = db.execute(select(Job.id, Job.claimed_by, Job.lease_expires_at).where(
        Job.status == JobStatus.RUNNING, Job.lease_expires_at.is_not(None), Job.lease_expires_at < clock)).all()
    db.rollback()
    finalised = []
    for job_id, claimed_by, expired_at in lapsed:
        taken = db.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING,
                                             Job.claimed_by == claimed_by, Job.lease_expires_at < database_now())
                           .values(claimed_by=owner, lease_expires_at=lease_until())).rowcount
        db.commit()
        if taken != 1:
            continue
        expired = expired_at.replace(tzinfo=dt.timezone.utc) if expired_at.tzinfo is None else expired_at
        finalize(job_id, "error", None, f"the API process {claimed_by} stopped renewing its lease (it expired at "
                 f"{expired.isoformat(timespec='seconds')}); the node was set to the operation's failure state", {},
                 owner=owner)
        finalised.append(job_id)
    return finalised
