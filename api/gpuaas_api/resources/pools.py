"""GPU pool routes: each parses its request and calls the pool domain (pools.py)."""
from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ..access import changes, reads
from .. import pools
from ..clusters import live_cluster
from ..db import session
from ..errors import ApiError
from ..metrics.store import latest_gpu_samples, pool_series_json
from ..metrics.tenants import subscribed_teams, team_series
from ..models import Gpu, Node, Pool
from ..rendering import render_gpu
from ..schemas import (GpuDetailsListSchema, GpuListSchema, GpuUuidsQuerySchema, GpuUuidsSchema, MetricsQuerySchema,
                       OperationReplySchema, PoolChangeSchema, PoolCreateSchema, PoolGpuSchema, PoolListSchema,
                       PoolMetricsSchema, PoolSchema, PoolUpdateSchema, SubscribedTeamsQuerySchema,
                       SubscribedTeamsSchema)
from ..metrics.series import GPU_METRICS, TIME_GROUPING_ALIASES, TIME_GROUPINGS
from ..states import GpuAssignment
from ..reply_cache import cached_reply, json_reply

blp = Blueprint("pools", __name__, description="GPU pools and GPU assignment")


@blp.route("/gpuaas/pool/create")
class PoolCreate(MethodView):
    @blp.arguments(PoolCreateSchema)
    @blp.response(201, PoolChangeSchema)
    @changes
    def post(self, body):
        """Create a pool: sharing_ratio 1–10, time_quantum_in_sec 10–120, security_level low|medium|high."""
        return json_reply(pools.create_pool(body, must_have_pools=False), 201)


@blp.route("/gpuaas/pool/add")
class PoolAdd(MethodView):
    @blp.arguments(PoolCreateSchema)
    @blp.response(201, PoolChangeSchema)
    @changes
    def post(self, body):
        """Add another pool to a GPUaaS cluster that already has at least one (409 otherwise)."""
        return json_reply(pools.create_pool(body, must_have_pools=True), 201)


@blp.route("/gpuaas/<id:gpuaas_id>/pool/list")
class PoolList(MethodView):
    @blp.response(200, PoolListSchema)
    @reads
    def get(self, gpuaas_id):
        """The cluster's pools as {items}; each pool's `gpus` has one entry per virtual-GPU slot."""
        return json_reply({"items": pools.cluster_pools(gpuaas_id)})


@blp.route("/gpuaas/pool/<id:pool_id>")
class PoolById(MethodView):
    @blp.response(200, PoolSchema)
    @reads
    def get(self, pool_id):
        return json_reply(pools.pool_reply(pools.get_pool(pool_id)))

    @blp.arguments(PoolUpdateSchema)
    @blp.response(200, PoolChangeSchema)
    @changes
    def put(self, fields, pool_id):
        """Change a pool (aliases: name, overcommit_ratio, security_mode)."""
        return json_reply(pools.update_pool(pool_id, fields))

    @blp.response(200, OperationReplySchema)
    @changes
    def delete(self, pool_id):
        """Delete a pool (the clients' path): as DELETE /gpuaas/pool/{id}/delete."""
        return pools.delete_pool(pool_id)


@blp.route("/gpuaas/pool/<id:pool_id>/delete")
class PoolDelete(MethodView):
    @blp.response(200, OperationReplySchema)
    @changes
    def delete(self, pool_id):
        """Delete a pool: DELETING until its nodes restored their GPUs' defaults, then gone."""
        return pools.delete_pool(pool_id)


@blp.route("/gpuaas/pool/<id:pool_id>/add_gpus")
class PoolAddGpus(MethodView):
    @blp.arguments(GpuUuidsSchema)
    @blp.response(200, PoolChangeSchema)
    @changes
    def post(self, body, pool_id):
        return json_reply(pools.add_gpus(pool_id, body["gpu_uuids"]))


@blp.route("/gpuaas/pool/<id:pool_id>/remove_gpus")
class PoolRemoveGpus(MethodView):
    @blp.arguments(GpuUuidsSchema)
    @blp.response(200, PoolChangeSchema)
    @changes
    def post(self, body, pool_id):
        return json_reply(pools.remove_gpus(pool_id, body["gpu_uuids"]))

    @blp.arguments(GpuUuidsQuerySchema, location="query")
    @blp.response(200, PoolChangeSchema)
    @changes
    def get(self, query, pool_id):
        """The clients' form: ?gpu_uuids=a,b."""
        uuids = [uuid.strip() for uuid in query["gpu_uuids"].split(",") if uuid.strip()]
        return json_reply(pools.remove_gpus(pool_id, uuids))


@blp.route("/gpuaas/pool/<id:pool_id>/retry")
class PoolRetry(MethodView):
    @blp.response(202, PoolChangeSchema)
    @changes
    def post(self, pool_id):
        """Apply again, on the nodes where it did not complete, what a failed change left in transit."""
        return json_reply(pools.retry_pool(pool_id), 202)


@blp.route("/gpuaas/pool/<id:pool_id>/gpus")
class PoolGpus(MethodView):
    @blp.response(200, GpuListSchema)
    @reads
    def get(self, pool_id):
        return json_reply({"items": [render_gpu(gpu) for gpu in pools.gpus_of(pools.get_pool(pool_id))]})


@blp.route("/gpuaas/pool/gpu")
class PoolGpuAdd(MethodView):
    @blp.arguments(PoolGpuSchema)
    @blp.response(200, PoolChangeSchema)
    @changes
    def post(self, body):
        """Add one GPU of a node: by gpu_index, by gpu_uuid (or uuid), or else the node's only free GPU.

        A GPU the pool already holds is refused (409) with a message saying "already"."""
        return json_reply(pools.add_node_gpu(body["pool_id"], body["gpuaas_node_id"], body.get("gpu_index"),
                                             body.get("gpu_uuid")))


@blp.route("/gpuaas/pool/<id:pool_id>/gpu/<id:gpu_id>")
class PoolGpuDelete(MethodView):
    @blp.response(200, PoolChangeSchema)
    @changes
    def delete(self, pool_id, gpu_id):
        return json_reply(pools.remove_gpu_by_id(pool_id, gpu_id))


@blp.route("/gpuaas/<id:gpuaas_id>/pool/available_gpus")
class AvailableGpus(MethodView):
    @blp.response(200, GpuListSchema)
    @reads
    def get(self, gpuaas_id):
        """GPUs of the cluster's nodes that no pool holds and that answer."""
        live_cluster(gpuaas_id)
        return cached_reply(("available_gpus", gpuaas_id), lambda: _available_gpus(gpuaas_id))


def _available_gpus(gpuaas_id: int) -> dict:
    # Core rows, not ORM objects: this list is thousands of GPUs long on a large cluster.
    rows = session().execute(select(Gpu.__table__).join(Node, Gpu.node_id == Node.id)
                             .where(Node.cluster_id == gpuaas_id, Gpu.assignment_status == GpuAssignment.UNASSIGNED)
                             .order_by(Gpu.node_id, Gpu.index)).mappings()
    # A Row's `index` is the tuple method, not the column: render_gpu gets plain attributes.
    return {"items": [render_gpu(SimpleNamespace(**row)) for row in rows]}


@blp.route("/gpuaas/<id:gpuaas_id>/pool/all_gpus")
class AllGpus(MethodView):
    @blp.response(200, GpuDetailsListSchema)
    @reads
    def get(self, gpuaas_id):
        """Every GPU of the cluster's nodes, with its node and pool."""
        live_cluster(gpuaas_id)
        db = session()
        rows = db.scalars(select(Gpu).options(selectinload(Gpu.node)).join(Node).where(Node.cluster_id == gpuaas_id)
                          .order_by(Gpu.node_id, Gpu.index)).all()
        names = {pool.id: pool.pool_name for pool in db.scalars(select(Pool).where(Pool.cluster_id == gpuaas_id))}
        return json_reply({"items": [{**render_gpu(gpu), "node_details": {"id": gpu.node.id, "name": gpu.node.name},
                                      "pool_details": ({"id": gpu.pool_id, "name": names[gpu.pool_id]}
                                                       if gpu.pool_id in names else None)} for gpu in rows]})


@blp.route("/gpuaas/pool/<id:pool_id>/metrics")
class PoolMetrics(MethodView):
    @blp.arguments(MetricsQuerySchema, location="query")
    @blp.response(200, PoolMetricsSchema)
    @reads
    def get(self, query, pool_id):
        """Per-bucket avg and max of the pool GPUs' samples, with slot totals.

        time_grouping: minute, hour, day or week (aliases 1m, 1h, 1d, 1w); from/to bound the series.
        """
        pool = pools.get_pool(pool_id)
        grouping = TIME_GROUPING_ALIASES.get(query["time_grouping"], query["time_grouping"])
        width = TIME_GROUPINGS[grouping]
        end = query.get("end") or dt.datetime.now(dt.timezone.utc)
        start = query.get("start") or end - dt.timedelta(seconds=width * 60)
        if start >= end:
            raise ApiError(422, "from must be before to", [{"field": "from", "message": "must be before to"}])
        gpus = pools.gpus_of(pool)
        latest = latest_gpu_samples([gpu.id for gpu in gpus])
        assigned = sum(1 for gpu in gpus if gpu.assignment_status is GpuAssignment.ASSIGNED)
        head = {"pool_id": pool.id, "time_grouping": grouping, "from": start.isoformat(), "to": end.isoformat(),
                "physical_gpus": len(gpus), "slots_total": len(gpus) * pool.sharing_ratio,
                "slots_assigned": assigned * pool.sharing_ratio,
                "slots_unavailable": sum(1 for gpu in gpus if gpu.assignment_status is GpuAssignment.UNAVAILABLE)
                * pool.sharing_ratio,
                "usage": pool_usage(gpus, latest)}
        head["teams"] = team_series(pool.id, width, start, end)
        # The series arrives as JSON text from the database (see pool_series_json): spliced in, not re-encoded.
        body = json.dumps(head)[:-1] + ', "series": ' + pool_series_json(pool.id, width, start, end) + "}"
        return current_app.response_class(body, mimetype="application/json")


@blp.route("/gpuaas/pool/<id:pool_id>/subscribed_teams")
class PoolSubscribedTeams(MethodView):
    @blp.arguments(SubscribedTeamsQuerySchema, location="query")
    @blp.response(200, SubscribedTeamsSchema)
    @reads
    def get(self, query, pool_id):
        """The teams (Pod namespaces) holding the pool's slots, as hosted·ai's admin client reads them.

        page counts from 0; total is the slots the selected teams hold now, over every page.
        """
        return json_reply(subscribed_teams(pools.get_pool(pool_id), query["from_time_seconds"],
                                           bool(query["sort_least_consumed"]), query["page"], query["limit"],
                                           query.get("team_id")))


def pool_usage(gpus: list[Gpu], latest: dict) -> dict:
    """The pool now: each GPU's newest sample, and their totals."""
    readings = [latest[gpu.id] for gpu in gpus if gpu.id in latest]
    return {
        "sampled_gpus": len(readings),
        "utilization_gpu_percent": round(sum(r.utilization_gpu_percent for r in readings) / len(readings), 2)
        if readings else None,
        "memory_used_mb": sum(r.memory_used_mb for r in readings),
        "memory_total_mb": sum(gpu.memory_in_mb or 0 for gpu in gpus),
        "gpus": [{"uuid": gpu.uuid, "assignment_status": gpu.assignment_status.value,
                  "sampled_at": latest[gpu.id].sampled_at.isoformat() if gpu.id in latest else None,
                  **({name: getattr(latest[gpu.id], name) for name in GPU_METRICS} if gpu.id in latest else {})}
                 for gpu in gpus],
    }
