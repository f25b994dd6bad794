"""GPU pools: validated and persisted here; every change is applied on the nodes that hold the
affected GPUs by a pool_apply job (playbooks/pool_apply.yml, the gpu_sharing role). The pool
and GPU statuses follow that job (states.py: the pool lifecycle); see docs/api.md."""
from __future__ import annotations

import datetime as dt
import json

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import func, select, update
from sqlalchemy.orm import selectinload

from ..db import session
from ..errors import ApiError, conflict, field_error, not_found
from ..metrics.store import latest_gpu_samples, pool_series_json
from ..models import Cluster, Gpu, Node, Pool
from ..schemas import (GpuUuidsQuerySchema, GpuUuidsSchema, MetricsQuerySchema, PoolCreateSchema, PoolGpuSchema,
                       PoolUpdateSchema)
from ..jobs.pools import active_apply_job, gpus_of, rebuild_slots, schedule_apply
from ..jobs.submit import job_submitted
from ..states import (GPU_METRICS, POOL_SETTLED_STATUSES, TIME_GROUPING_ALIASES, TIME_GROUPINGS, ClusterStatus,
                      GpuAssignment, PoolStatus)
from ..views import cached_reply

blp = Blueprint("pools", __name__, description="GPU pools and GPU assignment")


def get_cluster(gpuaas_id: int, active: bool = False) -> Cluster:
    cluster = session().get(Cluster, gpuaas_id)
    if cluster is None or cluster.status is ClusterStatus.INACTIVE:
        raise not_found("GPUaaS cluster", gpuaas_id)
    if active and cluster.status is not ClusterStatus.ACTIVE:
        raise conflict(f"GPUaaS cluster {gpuaas_id} is {cluster.status.value}; wait for GPUAAS_ACTIVE")
    return cluster


def get_pool(pool_id: int) -> Pool:
    pool = session().get(Pool, pool_id)
    if pool is None:
        raise not_found("pool", pool_id)
    return pool


def resolve_gpus(cluster: Cluster, uuids: list[str], field: str, pool: Pool | None = None) -> list[Gpu]:
    """The GPUs to attach: known, in this cluster, available, and in no other pool."""
    if len(set(uuids)) != len(uuids):
        raise field_error(field, "a GPU is listed twice")
    found = {gpu.uuid: gpu for gpu in session().scalars(select(Gpu).options(selectinload(Gpu.node))
                                                        .where(Gpu.uuid.in_(uuids))).all()}
    unknown = [uuid for uuid in uuids if uuid not in found]
    if unknown:
        raise field_error(field, f"unknown GPU {unknown[0]}")
    for uuid in uuids:
        gpu = found[uuid]
        if gpu.node.cluster_id != cluster.id:
            raise field_error(field, f"GPU {uuid} is not in GPUaaS cluster {cluster.id}", 409)
        if gpu.pool_id is not None and (pool is None or gpu.pool_id != pool.id):
            raise field_error(field, f"GPU {uuid} already belongs to pool {gpu.pool_id}", 409)
        if gpu.assignment_status is GpuAssignment.UNAVAILABLE:
            raise field_error(field, f"GPU {uuid} is unavailable (its node or the GPU does not answer)", 409)
    return [found[uuid] for uuid in uuids]


def attach(pool: Pool, gpus: list[Gpu]) -> set[int]:
    """Put GPUs in the pool (ASSIGNING until their node applied it); returns their nodes."""
    for gpu in gpus:
        gpu.pool_id, gpu.assignment_status = pool.id, GpuAssignment.ASSIGNING
    rebuild_slots(pool)
    return {gpu.node_id for gpu in gpus}


def detach(pool: Pool, gpus: list[Gpu]) -> set[int]:
    """Take GPUs out of the pool (UNASSIGNING until their node restored their defaults); returns their nodes."""
    for gpu in gpus:
        gpu.assignment_status = GpuAssignment.UNASSIGNING
    rebuild_slots(pool)
    return {gpu.node_id for gpu in gpus}


def claim_pool(pool: Pool, to: PoolStatus = PoolStatus.DEPLOYMENT_SCHEDULED) -> None:
    """Start a change of the pool: one at a time, and only from a settled status (409 otherwise).
    A failed delete (still DELETING, no job running) may be deleted again, or retried."""
    settled = pool.status in POOL_SETTLED_STATUSES
    deleting_again = (pool.status is PoolStatus.DELETING and to is PoolStatus.DELETING
                      and active_apply_job(pool.id) is None)
    if settled or deleting_again:
        won = session().execute(update(Pool).where(Pool.id == pool.id, Pool.status == pool.status)
                                .values(status=to)).rowcount
        if won == 1:
            session().refresh(pool)
            return
    raise conflict(f"pool {pool.id} is {pool.status.value}; wait until it is ACTIVE or ERROR_WHILE_DEPLOYING")


def apply_change(pool: Pool, node_ids: set[int]) -> dict:
    """Record the nodes' job with the change and commit both; a pool with nothing to apply settles at once."""
    db = session()
    job = schedule_apply(pool, node_ids)
    if job is None:
        if pool.status is PoolStatus.DELETING:
            db.delete(pool)
            db.commit()
            return {"success": True, "message": f"pool {pool.id} deleted", "job_id": None}
        pool.status = PoolStatus.ACTIVE
    db.commit()
    job_submitted.release()
    return {**pool_view(pool), "job_id": job.id if job else None}


def pool_view(pool: Pool) -> dict:
    gpus = gpus_of(pool)
    models = sorted({gpu.model for gpu in gpus})
    slots = [{"id": f"{gpu.uuid}-{index}", "slot_index": index, "gpu_id": gpu.id, "uuid": gpu.uuid,
              "gpu_model": gpu.model, "memory_in_mb": gpu.memory_in_mb // pool.sharing_ratio,
              "gpuaas_node_id": gpu.node_id, "assignment_status": gpu.assignment_status.value}
             for gpu in gpus for index in range(pool.sharing_ratio)]
    return {"id": pool.id, "gpuaas_id": pool.cluster_id, "pool_name": pool.pool_name,
            "pool_label": f"gpuaas-pool-{pool.id}", "sharing_ratio": pool.sharing_ratio,
            "time_quantum_in_sec": pool.time_quantum_in_sec, "security_level": pool.security_level,
            "status": pool.status.value, "gpu_model_type": models[0] if len(models) == 1 else ",".join(models),
            "gpu_vendor_type": "NVIDIA" if gpus else None, "physical_gpu_count": len(gpus), "gpus": slots}


def gpu_item(gpu: Gpu) -> dict:
    return {"id": gpu.id, "uuid": gpu.uuid, "vendor": gpu.vendor, "gpu_model": gpu.model,
            "memory_in_mb": gpu.memory_in_mb, "gpuaas_node_id": gpu.node_id,
            "assignment_status": gpu.assignment_status.value, "pool_id": gpu.pool_id}


def _create(body: dict, must_have_pools: bool) -> dict:
    cluster = get_cluster(body["gpuaas_id"], active=True)
    fields = body["pool"]
    db = session()
    existing = db.scalar(select(func.count(Pool.id)).where(Pool.cluster_id == cluster.id))
    if must_have_pools and not existing:
        raise conflict(f"GPUaaS cluster {cluster.id} has no pool yet; create its first pool with /gpuaas/pool/create")
    if db.scalar(select(Pool.id).where(Pool.cluster_id == cluster.id, Pool.pool_name == fields["pool_name"])):
        raise field_error("pool.pool_name", f"cluster {cluster.id} already has a pool named {fields['pool_name']}", 409)
    gpus = resolve_gpus(cluster, fields["attach_gpu_ids"], "pool.attach_gpu_ids")
    pool = Pool(cluster_id=cluster.id, pool_name=fields["pool_name"], sharing_ratio=fields["sharing_ratio"],
                time_quantum_in_sec=fields["time_quantum_in_sec"], security_level=fields["security_level"],
                status=PoolStatus.DEPLOYMENT_SCHEDULED)
    db.add(pool)
    db.flush()
    return apply_change(pool, attach(pool, gpus))


@blp.route("/gpuaas/pool/create")
class PoolCreate(MethodView):
    @blp.arguments(PoolCreateSchema)
    @blp.response(201)
    def post(self, body):
        """Create a pool: sharing_ratio 1–10, time_quantum_in_sec 10–120, security_level low|medium|high."""
        return _create(body, must_have_pools=False)


@blp.route("/gpuaas/pool/add")
class PoolAdd(MethodView):
    @blp.arguments(PoolCreateSchema)
    @blp.response(201)
    def post(self, body):
        """Add another pool to a GPUaaS cluster that already has at least one (409 otherwise)."""
        return _create(body, must_have_pools=True)


@blp.route("/gpuaas/<int:gpuaas_id>/pool/list")
class PoolList(MethodView):
    @blp.response(200)
    def get(self, gpuaas_id):
        """The cluster's pools, a bare array; `gpus` has one entry per virtual-GPU slot."""
        get_cluster(gpuaas_id)
        pools = session().scalars(select(Pool).where(Pool.cluster_id == gpuaas_id).order_by(Pool.id)).all()
        return [pool_view(pool) for pool in pools]


@blp.route("/gpuaas/pool/<int:pool_id>")
class PoolById(MethodView):
    @blp.response(200)
    def get(self, pool_id):
        return pool_view(get_pool(pool_id))

    @blp.arguments(PoolUpdateSchema)
    @blp.response(200)
    def put(self, fields, pool_id):
        """Change a pool (aliases: name, overcommit_ratio, security_mode)."""
        pool = get_pool(pool_id)
        sharing_changes = {key for key, value in fields.items() if getattr(pool, key) != value} - {"pool_name"}
        if not sharing_changes:
            for key, value in fields.items():
                setattr(pool, key, value)
            session().commit()
            return pool_view(pool)
        claim_pool(pool)
        for key, value in fields.items():
            setattr(pool, key, value)
        members = [gpu for gpu in gpus_of(pool) if gpu.assignment_status is not GpuAssignment.UNASSIGNING]
        return apply_change(pool, attach(pool, members))  # every node of the pool applies the new settings

    @blp.response(200)
    def delete(self, pool_id):
        return _delete(pool_id)


def _delete(pool_id: int) -> dict:
    """The pool goes DELETING; it is removed once every node has restored its GPUs' defaults."""
    pool = get_pool(pool_id)
    claim_pool(pool, PoolStatus.DELETING)
    reply = apply_change(pool, detach(pool, gpus_of(pool)))
    if reply.get("job_id") is None:
        return reply
    return {"success": True, "message": f"pool {pool_id} is being deleted; its GPUs become UNASSIGNED as their "
            "nodes restore their defaults", "job_id": reply["job_id"], "status": PoolStatus.DELETING.value}


@blp.route("/gpuaas/pool/<int:pool_id>/delete")
class PoolDelete(MethodView):
    @blp.response(200)
    def delete(self, pool_id):
        """Delete a pool: DELETING until its nodes restored their GPUs' defaults, then gone."""
        return _delete(pool_id)


@blp.route("/gpuaas/pool/<int:pool_id>/add_gpus")
class PoolAddGpus(MethodView):
    @blp.arguments(GpuUuidsSchema)
    @blp.response(200)
    def post(self, body, pool_id):
        pool = get_pool(pool_id)
        gpus = resolve_gpus(get_cluster(pool.cluster_id), body["gpu_uuids"], "gpu_uuids", pool)
        already = [gpu.uuid for gpu in gpus if gpu.pool_id == pool.id]
        if already:
            raise field_error("gpu_uuids", f"GPU {already[0]} is already in pool {pool.id}", 409)
        claim_pool(pool)
        return apply_change(pool, attach(pool, gpus))


def _remove(pool_id: int, uuids: list[str]) -> dict:
    pool = get_pool(pool_id)
    members = {gpu.uuid: gpu for gpu in gpus_of(pool) if gpu.assignment_status is not GpuAssignment.UNASSIGNING}
    missing = [uuid for uuid in uuids if uuid not in members]
    if missing:
        raise field_error("gpu_uuids", f"GPU {missing[0]} is not in pool {pool_id}", 409)
    claim_pool(pool)
    return apply_change(pool, detach(pool, [members[uuid] for uuid in uuids]))


@blp.route("/gpuaas/pool/<int:pool_id>/remove_gpus")
class PoolRemoveGpus(MethodView):
    @blp.arguments(GpuUuidsSchema)
    @blp.response(200)
    def post(self, body, pool_id):
        return _remove(pool_id, body["gpu_uuids"])

    @blp.arguments(GpuUuidsQuerySchema, location="query")
    @blp.response(200)
    def get(self, query, pool_id):
        """The clients' form: ?gpu_uuids=a,b."""
        return _remove(pool_id, [uuid.strip() for uuid in query["gpu_uuids"].split(",") if uuid.strip()])


@blp.route("/gpuaas/pool/<int:pool_id>/retry")
class PoolRetry(MethodView):
    @blp.response(202)
    def post(self, pool_id):
        """Apply again, on the nodes where it did not complete, what a failed change left in transit."""
        pool = get_pool(pool_id)
        if pool.status not in (PoolStatus.ERROR_WHILE_DEPLOYING, PoolStatus.DELETING):
            raise conflict(f"pool {pool_id} is {pool.status.value}; only a failed change can be retried")
        claim_pool(pool, PoolStatus.DELETING if pool.status is PoolStatus.DELETING else PoolStatus.DEPLOYMENT_SCHEDULED)
        in_transit = {gpu.node_id for gpu in gpus_of(pool) if gpu.assignment_status in
                      (GpuAssignment.ASSIGNING, GpuAssignment.UNASSIGNING)}
        return apply_change(pool, in_transit)


@blp.route("/gpuaas/pool/<int:pool_id>/gpus")
class PoolGpus(MethodView):
    @blp.response(200)
    def get(self, pool_id):
        return {"items": [gpu_item(gpu) for gpu in gpus_of(get_pool(pool_id))]}


@blp.route("/gpuaas/pool/gpu")
class PoolGpuAdd(MethodView):
    @blp.arguments(PoolGpuSchema)
    @blp.response(200)
    def post(self, body):
        """Add one GPU, named by node and index."""
        pool = get_pool(body["pool_id"])
        gpu = session().scalar(select(Gpu).where(Gpu.node_id == body["gpuaas_node_id"],
                                                 Gpu.index == body["gpu_index"]))
        if gpu is None:
            raise field_error("gpu_index", f"node {body['gpuaas_node_id']} has no GPU {body['gpu_index']}", 404)
        gpus = resolve_gpus(get_cluster(pool.cluster_id), [gpu.uuid], "gpu_index", pool)
        if gpu.pool_id == pool.id:
            raise field_error("gpu_index", f"GPU {gpu.uuid} is already in pool {pool.id}", 409)
        claim_pool(pool)
        return apply_change(pool, attach(pool, gpus))


@blp.route("/gpuaas/pool/<int:pool_id>/gpu/<int:gpu_id>")
class PoolGpuDelete(MethodView):
    @blp.response(200)
    def delete(self, pool_id, gpu_id):
        gpu = session().get(Gpu, gpu_id)
        if gpu is None:
            raise not_found("GPU", gpu_id)
        return _remove(pool_id, [gpu.uuid])


@blp.route("/gpuaas/<int:gpuaas_id>/pool/available_gpus")
class AvailableGpus(MethodView):
    @blp.response(200)
    def get(self, gpuaas_id):
        """GPUs of the cluster's nodes that no pool holds and that answer."""
        get_cluster(gpuaas_id)
        return cached_reply(("available_gpus", gpuaas_id), lambda: _available_gpus(gpuaas_id))


def _available_gpus(gpuaas_id: int) -> dict:
    # Core rows, not ORM objects: this list is thousands of GPUs long on a large cluster.
    rows = session().execute(
        select(Gpu.id, Gpu.uuid, Gpu.vendor, Gpu.model, Gpu.memory_in_mb, Gpu.node_id, Gpu.pool_id).join(Node)
        .where(Node.cluster_id == gpuaas_id, Gpu.assignment_status == GpuAssignment.UNASSIGNED)
        .order_by(Gpu.node_id, Gpu.index))
    unassigned = GpuAssignment.UNASSIGNED.value
    return {"items": [{"id": row.id, "uuid": row.uuid, "vendor": row.vendor, "gpu_model": row.model,
                       "memory_in_mb": row.memory_in_mb, "gpuaas_node_id": row.node_id,
                       "assignment_status": unassigned, "pool_id": row.pool_id} for row in rows]}


@blp.route("/gpuaas/<int:gpuaas_id>/pool/all_gpus")
class AllGpus(MethodView):
    @blp.response(200)
    def get(self, gpuaas_id):
        get_cluster(gpuaas_id)
        db = session()
        rows = db.scalars(select(Gpu).options(selectinload(Gpu.node)).join(Node).where(Node.cluster_id == gpuaas_id)
                          .order_by(Gpu.node_id, Gpu.index)).all()
        pools = {pool.id: pool for pool in db.scalars(select(Pool).where(Pool.cluster_id == gpuaas_id)).all()}
        return {"items": [{**gpu_item(gpu), "node_details": {"id": gpu.node.id, "name": gpu.node.name},
                           "pool_details": ({"id": gpu.pool_id, "name": pools[gpu.pool_id].pool_name}
                                            if gpu.pool_id in pools else None)} for gpu in rows]}


@blp.route("/gpuaas/pool/<int:pool_id>/metrics")
class PoolMetrics(MethodView):
    @blp.arguments(MetricsQuerySchema, location="query")
    @blp.response(200)
    def get(self, query, pool_id):
        """Per-bucket avg and max of the pool GPUs' samples, with slot totals.

        time_grouping: minute, hour, day or week (aliases 1m, 1h, 1d, 1w); from/to bound the series.
        """
        pool = get_pool(pool_id)
        grouping = TIME_GROUPING_ALIASES.get(query["time_grouping"], query["time_grouping"])
        width = TIME_GROUPINGS[grouping]
        end = query.get("end") or dt.datetime.now(dt.timezone.utc)
        start = query.get("start") or end - dt.timedelta(seconds=width * 60)
        if start >= end:
            raise ApiError(422, "from must be before to", [{"field": "from", "message": "must be before to"}])
        gpus = gpus_of(pool)
        latest = latest_gpu_samples([gpu.id for gpu in gpus])
        assigned = sum(1 for gpu in gpus if gpu.assignment_status is GpuAssignment.ASSIGNED)
        head = {"pool_id": pool.id, "time_grouping": grouping, "from": start.isoformat(), "to": end.isoformat(),
                "physical_gpus": len(gpus), "slots_total": len(gpus) * pool.sharing_ratio,
                "slots_assigned": assigned * pool.sharing_ratio,
                "slots_unavailable": sum(1 for gpu in gpus if gpu.assignment_status is GpuAssignment.UNAVAILABLE)
                * pool.sharing_ratio,
                "usage": pool_usage(gpus, latest)}
        # The series arrives as JSON text from the database (see pool_series_json): spliced in, not re-encoded.
        body = json.dumps(head)[:-1] + ', "series": ' + pool_series_json(pool.id, width, start, end) + "}"
        return current_app.response_class(body, mimetype="application/json")


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
