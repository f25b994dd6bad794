"""How each object is rendered in a reply: one function per object, defined once.

The functions read attributes only, so an ORM object and a Core row (the hot list paths read
rows: for 1,000 nodes x 8 GPUs that is several times faster than ORM objects) render the same.
schemas.py documents each shape (OpenAPI); tests/api/test_rendering.py checks, for each kind of
object, that the schema dumps exactly what these functions build.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from .models import Cluster, inventory_name
from .shared import sharing_policy
from .states import (INITIALIZE_STATE_CODES, KUBERNETES_OPERATIONS, ROLE_FLAGS, K8S_JOIN_STATE_CODES, ClusterStatus,
                     GpuAssignment, NodeStatus, RegionServiceStatus, enum_value)


def timestamp(value: dt.datetime | None) -> str | None:
    """ISO 8601 with its UTC offset (RFC 3339). SQLite hands back naive datetimes; they were stored as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.isoformat()


def region_gpuaas_statuses(db) -> dict[int, str]:
    """status.gpuaas of every region that has a cluster: enabled while one is GPUAAS_ACTIVE,
    disabled while its clusters are setting up, failed or torn down; a region without any is none."""
    statuses: dict[int, str] = {}
    for region_id, status in db.execute(select(Cluster.region_id, Cluster.status)):
        if enum_value(status) == ClusterStatus.ACTIVE.value:
            statuses[region_id] = RegionServiceStatus.ENABLED.value
        else:
            statuses.setdefault(region_id, RegionServiceStatus.DISABLED.value)
    return statuses


def render_region(region, gpuaas_status: str) -> dict:
    return {"id": region.id, "region_name": region.region_name, "address": region.address, "city": region.city,
            "country": region.country, "country_code": region.country_code, "zipcode": region.zipcode,
            "lat": region.lat, "lng": region.lng, "accelerator_type": region.accelerator_type,
            "support_rdma": region.support_rdma,
            "status": {"gpuaas": gpuaas_status, "compute": region.compute_status}}


def render_regions(db, regions) -> list[dict]:
    statuses = region_gpuaas_statuses(db)
    return [render_region(region, statuses.get(region.id, RegionServiceStatus.NONE.value)) for region in regions]


def render_gpu(gpu) -> dict:
    """A physical GPU, wherever it is listed (a node's gpus, a pool's, a cluster's, the available ones)."""
    return {"id": gpu.id, "gpu_id": str(gpu.index), "index": gpu.index, "uuid": gpu.uuid, "vendor": gpu.vendor,
            "gpu_model": gpu.model, "memory_in_mb": gpu.memory_in_mb, "pci_bus_id": gpu.pci_bus_id,
            "gpuaas_node_id": gpu.node_id, "pool_id": gpu.pool_id,
            "assignment_status": enum_value(gpu.assignment_status)}


def render_cluster_gpu(gpu) -> dict:
    """A GPU in the cluster's GPU list (GET /gpuaas/{id}/gpus): its assignment_status in lower case.
    That route is not the guide's, and its one reader compares with "unassigned" exactly
    (compatibility.md); every route of the guide keeps the guide's upper case (render_gpu)."""
    return {**render_gpu(gpu), "assignment_status": enum_value(gpu.assignment_status).lower()}


def status_codes(status: NodeStatus, joined: bool, failed_operation: str | None) -> tuple[int, int]:
    """(initialize_state_status_code, k8s_join_state_status_code). An ERROR node's codes say which step
    failed (``failed_operation``, the newest of states.FAILING_TO_ERROR it ran): after an enable, join
    or leave, init had succeeded (2) and the Kubernetes step failed (-1). Without that job (pruned),
    a node in a cluster was initialised; one in none reads as a failed init, as before."""
    if status is not NodeStatus.ERROR:
        return INITIALIZE_STATE_CODES[status], K8S_JOIN_STATE_CODES.get(status, 0)
    if failed_operation in {operation.value for operation in KUBERNETES_OPERATIONS} or (failed_operation is None and joined):
        return INITIALIZE_STATE_CODES[NodeStatus.INITIALIZED], -1
    return INITIALIZE_STATE_CODES[NodeStatus.ERROR], -1 if joined else 0


def render_node(node, gpus: list[dict], region: dict, failed_operation: str | None = None) -> dict:
    """``gpus`` rendered by render_gpu, ``region`` by render_region; ``failed_operation``: an ERROR
    node's newest failing operation (status_codes)."""
    status = NodeStatus(enum_value(node.status))
    init_code, join_code = status_codes(status, node.joined, failed_operation)
    return {
        "id": node.id, "Id": node.id, "name": node.name, "inventory_name": inventory_name(node.id),
        "kubernetes_name": node.kubernetes_name, "region_id": node.region_id, "gpuaas_id": node.cluster_id,
        "node_ip": node.node_ip, "port": node.port, "username": node.username, "volume_group": node.volume_group,
        "external_service_ip": node.external_service_ip, "status": status.value, "disabled": node.disabled,
        "initialize_state_status_code": init_code, "k8s_join_state_status_code": join_code,
        "role": {flag: getattr(node, flag) for flag in ROLE_FLAGS.values()},
        "gpus": gpus,
        "nvidia_driver_version": node.nvidia_driver_version, "total_memory_in_mb": node.total_memory_in_mb,
        "total_disk_in_mb": node.total_disk_in_mb, "cores": node.cores, "cpu_model": node.cpu_model,
        "region": region, "created_at": timestamp(node.created_at), "updated_at": timestamp(node.updated_at),
    }


def render_cluster(cluster) -> dict:
    return {"id": cluster.id, "region_id": cluster.region_id, "controller_node_id": cluster.controller_node_id,
            "status": enum_value(cluster.status), "k8s_api_server_port": cluster.k8s_api_server_port,
            "prometheus_reverse_tunnel_port": cluster.prometheus_reverse_tunnel_port,
            "created_at": timestamp(cluster.created_at), "updated_at": timestamp(cluster.updated_at)}


def render_pool(pool, gpus: list, resource_prefix: str, region_id: int, held: dict[int, int]) -> dict:
    """``gpus``: the pool's GPUs (ORM objects or rows), in node and index order; ``held``: GPU id ->
    the slots Pods hold on it now (metrics/tenants.py)."""
    models = sorted({gpu.model for gpu in gpus})
    slots = [{"id": f"{gpu.uuid}-{index}", "slot_index": index, "gpu_id": gpu.id, "uuid": gpu.uuid,
              "gpu_model": gpu.model, "memory_in_mb": gpu.memory_in_mb // pool.sharing_ratio,
              "gpuaas_node_id": gpu.node_id, "assignment_status": enum_value(gpu.assignment_status)}
             for gpu in gpus for index in range(pool.sharing_ratio)]
    # Capacity in slots (docs/api.md, "Pool capacity"): a slot is available when its GPU is
    # configured and healthy (ASSIGNED) and no Pod holds it.
    healthy = [gpu for gpu in gpus if enum_value(gpu.assignment_status) == GpuAssignment.ASSIGNED.value]
    return {"id": pool.id, "gpuaas_id": pool.cluster_id, "region_id": region_id, "pool_name": pool.pool_name,
            "pool_label": pool.pool_label or pool.pool_name, "sharing_ratio": pool.sharing_ratio,
            "time_quantum_in_sec": pool.time_quantum_in_sec, "security_level": pool.security_level,
            "status": enum_value(pool.status), "gpu_model_type": ",".join(models) if models else None,
            "gpu_vendor_type": "NVIDIA" if gpus else None, "physical_gpu_count": len(gpus),
            "total_gpus": len(gpus) * pool.sharing_ratio,
            "allocated_gpus": sum(min(held.get(gpu.id, 0), pool.sharing_ratio) for gpu in gpus),
            "available_gpus": sum(pool.sharing_ratio - min(held.get(gpu.id, 0), pool.sharing_ratio) for gpu in healthy),
            "resource_name": sharing_policy.pool_resource_name(pool.id, resource_prefix),
            "created_at": timestamp(pool.created_at), "gpus": slots}


def render_scan(scan, node_gpus: list) -> dict:
    """A scan, with the node's known GPUs as the clients read them from a scan_gpus reply."""
    return {"id": scan.id, "scan_id": scan.request_id, "request_id": scan.request_id, "kind": scan.kind,
            "status": enum_value(scan.status), "node_id": scan.node_id, "job_id": scan.job_id,
            "error_msg": scan.error_msg, "resources": scan.resources or {},
            "gpus": [{"index": gpu.index, "name": gpu.model, "memory": gpu.memory_in_mb, "uuid": gpu.uuid}
                     for gpu in node_gpus if enum_value(gpu.assignment_status) != GpuAssignment.UNAVAILABLE.value]}


def render_user(user) -> dict:
    return {"id": user.id, "username": user.username, "email": user.email, "role": user.role,
            "is_super_admin": user.is_super_admin, "created_at": timestamp(user.created_at)}


def render_token(token) -> dict:
    """A token's record: never the token or its hash."""
    return {"id": token.id, "user_id": token.user_id, "username": token.user.username, "description": token.description,
            "role": token.role, "created_at": timestamp(token.created_at), "expires_at": timestamp(token.expires_at)}


def render_job(job) -> dict:
    return {"id": job.id, "operation": job.operation, "node_id": job.node_id, "gpuaas_id": job.cluster_id,
            "pool_id": job.pool_id, "status": enum_value(job.status), "rc": job.rc,
            "explanation": job.explanation or "", "result": job.result or {},
            "emitted_events": job.emitted_events or 0, "cancel_requested": bool(job.cancel_requested),
            "created_at": timestamp(job.created_at), "started_at": timestamp(job.started_at),
            "finished_at": timestamp(job.finished_at), "actor": job.actor}


def render_audit_event(event) -> dict:
    return {"id": event.id, "at": timestamp(event.at), "actor": event.actor, "actor_id": event.actor_id,
            "token_id": event.token_id, "address": event.address, "method": event.method, "path": event.path,
            "action": event.action, "object_type": event.object_type, "object_id": event.object_id,
            "status": event.status, "job_id": event.job_id}
