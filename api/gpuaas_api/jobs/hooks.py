"""How operations plug into the job engine.

The engine (this package) records jobs, queues them, claims and runs their playbooks and finalises
them; it knows no operation. Each operation (gpuaas_api.operations) registers, under its playbook's
name, an OperationHooks for the moments of a job:

- accepted: its request is being recorded (refuse it, or move what it now holds);
- its turn: a queued job's turn came (check it again against the state as it is now);
- run: its playbook is about to run (extra variables, and what starts with the run);
- finished: the run ended (what the job changed: nodes, pools, samples), or it ended unstarted.

The housekeeper's periodic tasks (the metrics collection, the pruning of the audit trail, old jobs and
old scans) plug in the same way.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Callable

from ..models import Job, Node


class Turn(enum.Enum):
    """What a queued job's turn came to."""

    STARTED = "started"  # it holds its nodes: run it
    WAITS = "waits"  # a node it now needs is held: it stays pending
    ENDED = "ended"  # nothing to do anywhere: it ends successful without a run


@dataclasses.dataclass(frozen=True)
class TurnRefused:
    """The state as it is now refuses a queued job: it ends failed with ``reason``."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A finished job, as its operation's ``finished`` hook sees it (the job's record is written)."""

    job: Job
    node: Node | None  # a single-node job's node
    succeeded: bool
    artifact: dict  # what the playbook returned (set_stats), reports refused by the operation removed
    node_succeeded: dict[int, bool]  # a multi-node job's targets: each one's own outcome


class OperationHooks:
    """An operation's part at each moment; the defaults add nothing."""

    # A mutating single-node operation whose jobs may share one playbook run (one play, many hosts).
    shares_runs = False
    # Whether its events also show in the logs of the nodes it touched (the periodic collection's would bury them).
    events_on_node_logs = True
    # The keys of its playbook's result that hold what the nodes reported: dropped when refused_report refuses.
    reported_keys: tuple[str, ...] = ()

    def accepted(self, job: Job, ahead: list[Job], holds: bool) -> str | None:
        """Its job is recorded (flushed): ``ahead`` are the jobs it queues behind, ``holds`` whether it
        took its nodes. A reason refuses the request (everything is rolled back)."""
        return None

    def its_turn(self, job: Job) -> Turn | TurnRefused:
        """A queued job's turn, in the claiming transaction: take its nodes (jobs.submit.take_nodes)."""
        raise NotImplementedError(f"{job.operation} jobs are never queued")

    def canceled_while_waiting(self, job: Job) -> bool | None:
        """End a pending job canceled while it waited (True if ended here); None: end it unstarted."""
        return None

    def ended_unstarted(self, job: Job) -> None:
        """Undo what its request prepared: it was refused at its turn, or canceled while it waited."""

    def run_vars(self, job: Job, config) -> dict:
        """Extra variables for its playbook; what starts with the run starts here."""
        return {}

    def refused_report(self, job: Job, node: Node | None, artifact: dict) -> str | None:
        """Why what the nodes reported can't be stored (the job fails, and none of it is kept), or None."""
        return None

    def failure_explanation(self, job: Job, artifact: dict) -> str | None:
        """Its own explanation of a failed run, or None for the engine's (the first failed task)."""
        return None

    def finished(self, outcome: Outcome, config) -> None:
        """What the finished job changed; in the finalising transaction."""


_operations: dict[str, OperationHooks] = {}


def register(operation: str, hooks: OperationHooks) -> None:
    _operations[operation] = hooks


def hooks_for(operation: str) -> OperationHooks:
    try:
        return _operations[operation]
    except KeyError:
        raise LookupError(f"no operation is registered as {operation!r} (gpuaas_api.operations)") from None


@dataclasses.dataclass(frozen=True)
class PeriodicTask:
    """Work the housekeeper does every ``every(config)`` seconds (0 or less: never)."""

    name: str
    every: Callable[[object], float]
    run: Callable[[object], object]


periodic_tasks: list[PeriodicTask] = []


def register_periodic(task: PeriodicTask) -> None:
    if all(existing.name != task.name for existing in periodic_tasks):
        periodic_tasks.append(task)
