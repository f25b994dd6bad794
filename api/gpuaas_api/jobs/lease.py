"""Leases: a running job belongs to the API process that claimed it only while that process renews it.

Every claim (queue.py) sets `jobs.lease_expires_at` to now + GPUAAS_JOB_LEASE_SECONDS (60). The
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

from ..db import session
from ..models import Job
from ..states import JobStatus
from .claims import lease_until, now
from .finalize import finalize

log = logging.getLogger(__name__)


class Lease:
    """The leases of one run's jobs, held by ``owner`` (claims.claimant())."""

    def __init__(self, job_ids: list[int], owner: str, renew_seconds: float):
        self.job_ids, self.owner, self.renew_seconds = list(job_ids), owner, renew_seconds
        self.renewed_at = time.monotonic()
        self.lost = False

    def still_held(self) -> bool:
        """Renew the leases when due; False once any was lost (the run must stop). Needs an app context."""
        if self.lost or time.monotonic() - self.renewed_at < self.renew_seconds:
            return not self.lost
        db = session()
        renewed = db.execute(update(Job).where(Job.id.in_(self.job_ids), Job.status == JobStatus.RUNNING,
                                               Job.claimed_by == self.owner)
                             .values(lease_expires_at=lease_until())).rowcount
        db.commit()
        self.renewed_at = time.monotonic()
        if renewed != len(self.job_ids):
            self.lost = True
            log.error("jobs %s: lease lost (another API process finalised them); stopping the run", self.job_ids)
        return not self.lost


def expire_lapsed(owner: str) -> list[int]:
    """Finalise every running job whose lease has expired, whoever claimed it; the ids finalised here.

    Each is taken over first with a conditional UPDATE (its lease still expired, its claimant
    unchanged), so of several processes doing this at once one finalises it.
    """
    db = session()
    lapsed = db.execute(select(Job.id, Job.claimed_by, Job.lease_expires_at).where(
        Job.status == JobStatus.RUNNING, Job.lease_expires_at.is_not(None), Job.lease_expires_at < now())).all()
    db.rollback()
    finalised = []
    for job_id, claimed_by, expired_at in lapsed:
        taken = db.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING,
                                             Job.claimed_by == claimed_by, Job.lease_expires_at < now())
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
