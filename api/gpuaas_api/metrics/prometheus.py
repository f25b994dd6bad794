"""/metrics: the fleet in the Prometheus text exposition, read from the database at each scrape.

Every family is built from the database when scraped (a custom collector), so any API process
answers the same thing and nothing is kept between scrapes.
"""
from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from ..access import reads
from ..db import session
from ..models import Gpu, Job, Node, Pool, StorageSample, TenantTotal, inventory_name
from ..states import GpuAssignment, NodeStatus, PoolStatus
from .store import latest_gpu_samples
from .tenants import teams_now

blp = Blueprint("prometheus", __name__)
MIB = 1024 * 1024


def _counts(family: GaugeMetricFamily, rows, every: list[str]) -> GaugeMetricFamily:
    """One sample per value of an enumeration, zero included (a scraper sees a status empty out)."""
    seen = {}
    for value, count in rows:
        seen[getattr(value, "value", value)] = count
    for value in every:
        family.add_metric([value], seen.get(value, 0))
    return family


class FleetCollector:
    def collect(self):
        db = session()
        yield _counts(GaugeMetricFamily("gpuaas_nodes", "Nodes by status.", labels=["status"]),
                      db.execute(select(Node.status, func.count()).group_by(Node.status)).all(),
                      [status.value for status in NodeStatus])
        yield _counts(GaugeMetricFamily("gpuaas_gpus", "GPUs by assignment status.", labels=["assignment_status"]),
                      db.execute(select(Gpu.assignment_status, func.count()).group_by(Gpu.assignment_status)).all(),
                      [status.value for status in GpuAssignment])
        yield _counts(GaugeMetricFamily("gpuaas_pools", "Pools by status.", labels=["status"]),
                      db.execute(select(Pool.status, func.count()).group_by(Pool.status)).all(),
                      [status.value for status in PoolStatus])
        jobs = GaugeMetricFamily("gpuaas_jobs", "Jobs by operation and status.", labels=["operation", "status"])
        for operation, status, count in db.execute(select(Job.operation, Job.status, func.count())
                                                   .group_by(Job.operation, Job.status)).all():
            jobs.add_metric([operation, getattr(status, "value", status)], count)
        yield jobs
        yield from self._pools(db)
        yield from self._gpus(db)
        yield from self._storage(db)

    @staticmethod
    def _pools(db):
        labels = ["pool_id", "pool_name", "gpuaas_id"]
        slots_total = GaugeMetricFamily("gpuaas_pool_slots", "Virtual GPU slots of a pool.", labels=labels)
        slots_assigned = GaugeMetricFamily("gpuaas_pool_slots_assigned",
                                           "Slots on GPUs configured on their node (ASSIGNED).", labels=labels)
        ratio = GaugeMetricFamily("gpuaas_pool_sharing_ratio", "Slots per physical GPU.", labels=labels)
        assigned = dict(db.execute(select(Gpu.pool_id, func.count()).where(
            Gpu.assignment_status == GpuAssignment.ASSIGNED).group_by(Gpu.pool_id)).all())
        physical = dict(db.execute(select(Gpu.pool_id, func.count()).where(Gpu.pool_id.is_not(None))
                                   .group_by(Gpu.pool_id)).all())
        for pool in db.scalars(select(Pool).order_by(Pool.id)).all():
            values = [str(pool.id), pool.pool_name, str(pool.cluster_id)]
            slots_total.add_metric(values, physical.get(pool.id, 0) * pool.sharing_ratio)
            slots_assigned.add_metric(values, assigned.get(pool.id, 0) * pool.sharing_ratio)
            ratio.add_metric(values, pool.sharing_ratio)
        yield from (slots_total, slots_assigned, ratio)
        yield from FleetCollector._teams(db)

    @staticmethod
    def _teams(db):
        """Per pool and team (the Pods' namespace): what it holds now, and its GPU time since first seen."""
        labels = ["pool_id", "pool_name", "team"]
        slots = GaugeMetricFamily("gpuaas_pool_team_slots", "Slots a team's Pods hold now.", labels=labels)
        vram = GaugeMetricFamily("gpuaas_pool_team_vram_used_bytes", "vRAM a team's processes use on its slots now.",
                                 labels=labels)
        gpu_time = CounterMetricFamily("gpuaas_pool_team_gpu_seconds", "GPU time a team received in the pool.",
                                       labels=labels)
        names = dict(db.execute(select(Pool.id, Pool.pool_name)).all())
        now = teams_now()
        for (pool_id, team), held in sorted(now.items()):
            values = [str(pool_id), names.get(pool_id, ""), team]
            slots.add_metric(values, held.slots)
            vram.add_metric(values, held.vram_used_mb * MIB)
        for total in db.scalars(select(TenantTotal).order_by(TenantTotal.pool_id, TenantTotal.team)):
            gpu_time.add_metric([str(total.pool_id), names.get(total.pool_id, ""), total.team], total.gpu_seconds)
        yield from (slots, vram, gpu_time)

    @staticmethod
    def _gpus(db):
        # `node` is the inventory name (node-<id>: unique, stable); `node_name` the display name, which two
        # nodes of different regions may share.
        labels = ["uuid", "node", "node_name", "pool_id"]
        families = {
            "utilization_gpu_percent": GaugeMetricFamily("gpuaas_gpu_utilization_percent",
                                                         "GPU utilisation at the last collection.", labels=labels),
            "memory_used_mb": GaugeMetricFamily("gpuaas_gpu_memory_used_bytes", "GPU memory used.", labels=labels),
            "temperature_c": GaugeMetricFamily("gpuaas_gpu_temperature_celsius", "GPU temperature.", labels=labels),
            "power_w": GaugeMetricFamily("gpuaas_gpu_power_watts", "GPU power draw.", labels=labels),
        }
        sampled_at = GaugeMetricFamily("gpuaas_gpu_last_sample_timestamp_seconds",
                                       "When the GPU was last sampled.", labels=labels)
        gpus = db.execute(select(Gpu.id, Gpu.uuid, Node.id, Node.name, Gpu.pool_id).join(Node, Gpu.node_id == Node.id)
                          .where(Gpu.pool_id.is_not(None)).order_by(Gpu.id)).all()
        latest = latest_gpu_samples([row[0] for row in gpus])
        for gpu_id, uuid, node_id, node_name, pool_id in gpus:
            sample = latest.get(gpu_id)
            if sample is None:
                continue
            values = [uuid, inventory_name(node_id), node_name, str(pool_id)]
            for name, family in families.items():
                value = getattr(sample, name)
                family.add_metric(values, value * MIB if name == "memory_used_mb" else value)
            sampled_at.add_metric(values, sample.sampled_at.timestamp())
        yield from families.values()
        yield sampled_at

    @staticmethod
    def _storage(db):
        size = GaugeMetricFamily("gpuaas_storage_volume_group_size_bytes", "Volume group size.",
                                 labels=["node", "node_name", "volume_group"])
        free = GaugeMetricFamily("gpuaas_storage_volume_group_free_bytes", "Volume group free space.",
                                 labels=["node", "node_name", "volume_group"])
        newest = select(func.max(StorageSample.id)).group_by(StorageSample.node_id)
        for sample, node_name in db.execute(select(StorageSample, Node.name).join(Node, StorageSample.node_id == Node.id)
                                            .where(StorageSample.id.in_(newest)).order_by(Node.id)).all():
            for group in sample.data.get("volume_groups", []):
                values = [inventory_name(sample.node_id), node_name, group["name"]]
                size.add_metric(values, group["size_bytes"])
                free.add_metric(values, group["free_bytes"])
        yield from (size, free)


@blp.route("/metrics")
@reads
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


# For auth.init_app: a scraper without a token is let in only when GPUAAS_METRICS_PUBLIC is true.
ENDPOINTS = frozenset({"prometheus.metrics", "prometheus.api_metrics"})


def init_app(app) -> None:
    """Serve /metrics, and /api/metrics for clients whose base URL ends in /api."""
    app.register_blueprint(blp)
    app.add_url_rule("/api/metrics", endpoint="prometheus.api_metrics", view_func=metrics)
