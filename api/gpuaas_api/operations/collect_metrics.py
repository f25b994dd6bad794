"""collect_metrics: the periodic sampling of the pool GPUs and storage nodes (metrics/collector.py),
and the housekeeper's task that starts it when due."""
from __future__ import annotations

from ..jobs.hooks import OperationHooks, Outcome, PeriodicTask, register, register_periodic
from ..metrics import collector
from ..states import Operation

# How often the housekeeper asks whether the metrics collection is due: cheap (one conditional
# UPDATE); the shared schedule lets one caller per period win, and the winner of an agents' period
# reads them here, within half the interval.
COLLECTION_CHECK_SECONDS = 5.0


class CollectMetrics(OperationHooks):
    # Its events stay with its job: every minute's collection would bury the nodes' own logs.
    events_on_node_logs = False

    def finished(self, outcome: Outcome, config) -> None:
        collector.store_collection(outcome.job, outcome.artifact, outcome.node_succeeded, config)
        # The agents' status files are read once, not kept in the job's record: each is tens of KiB
        # per node, every period.
        outcome.job.result = {key: value for key, value in (outcome.job.result or {}).items()
                              if key != collector.AGENT_STATUS_KEY}


def collection_check_seconds(config) -> float:
    if config.METRICS_INTERVAL_SECONDS <= 0:
        return 0
    return min(COLLECTION_CHECK_SECONDS, config.METRICS_INTERVAL_SECONDS / 2)


def register_hooks() -> None:
    register(Operation.COLLECT_METRICS.value, CollectMetrics())
    register_periodic(PeriodicTask("scheduling the metrics collection", collection_check_seconds, collector.tick))
