"""pool_apply: a pool's change carried out on the nodes holding its GPUs (pools.py records it)."""
from __future__ import annotations

from sqlalchemy import select, update

from .. import pools
from ..agent_wheel import agent_source_vars
from ..db import session
from ..domain_errors import DomainError
from ..jobs.claims import lease_until
from ..jobs.identity import claimant
from ..jobs.finalize import finalize
from ..jobs.holds import take_nodes
from ..jobs.hooks import OperationHooks, Outcome, Turn, TurnRefused, register
from ..models import Job, Node
from ..states import JobStatus, Operation


class PoolApply(OperationHooks):
    def its_turn(self, job: Job) -> Turn | TurnRefused:
        if "change" not in job.extravars:  # a change already applied to the pool, waiting for its nodes
            return take_present_targets(job)
        try:  # a change queued behind the pool's previous one: applied to the pool as it is now
            return pools.apply_queued_change(job)
        except DomainError as refused:
            return TurnRefused(refused.message)

    def canceled_while_waiting(self, job: Job) -> bool | None:
        """A change already applied to the pool (waiting for its nodes) is finalised as canceled on every
        node, so that the pool shows ERROR_WHILE_DEPLOYING (or stays DELETING) and a retry completes it."""
        if "change" in job.extravars:
            return None  # still only queued: it ends unstarted and the pool never saw it
        db = session()
        won = db.execute(update(Job).where(Job.id == job.id, Job.status == JobStatus.PENDING)
                         .values(status=JobStatus.RUNNING, claimed_by=claimant(), lease_expires_at=lease_until())).rowcount
        db.commit()
        if won == 1:
            finalize(job.id, "canceled", None, "canceled before it ran", {},
                     host_outcomes={node_id: False for node_id in job.extravars.get("targets", [])})
        return won == 1

    def run_vars(self, job: Job, config) -> dict:
        pools.start_pool_deployment(job.extravars["pool_id"])
        return agent_source_vars(job.operation, config)

    def finished(self, outcome: Outcome, config) -> None:
        pools.finish_pool(outcome.job, outcome.node_succeeded)


def take_present_targets(job: Job) -> Turn:
    """Take the change's nodes; a target deleted meanwhile (its GPUs with it) is left out."""
    targets = job.extravars.get("targets", [])
    present = set(session().scalars(select(Node.id).where(Node.id.in_(targets)))) if targets else set()
    if present != set(targets):
        job.extravars = {**job.extravars, "targets": [node_id for node_id in targets if node_id in present],
                         "hosts": [node_id for node_id in job.extravars.get("hosts", []) if node_id in present]}
    return Turn.STARTED if take_nodes(job, job.extravars["targets"]) else Turn.WAITS


def register_hooks() -> None:
    register(Operation.POOL_APPLY.value, PoolApply())
