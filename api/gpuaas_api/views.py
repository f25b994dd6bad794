"""Replies built directly as dicts on the hot read paths.

marshmallow dumps 1,000 nodes x 8 GPUs too slowly for a list endpoint, so node and GPU
replies are built here; the schemas in schemas.py still document them (OpenAPI), and
tests/api/test_views.py keeps the two in step.
"""
from __future__ import annotations

import json

from flask import current_app
from sqlalchemy import select

from .models import DataVersion, Gpu, Node, Region
from .states import INITIALIZE_STATE_CODES, K8S_JOIN_STATE_CODES, NodeStatus


def _iso(value):
    return value.isoformat() if value is not None else None


def region_dict(region: Region) -> dict:
    return {"id": region.id, "region_name": region.region_name, "address": region.address, "city": region.city,
            "country": region.country, "country_code": region.country_code, "zipcode": region.zipcode,
            "lat": region.lat, "lng": region.lng, "accelerator_type": region.accelerator_type,
            "support_rdma": region.support_rdma,
            "status": {"gpuaas": region.gpuaas_status, "compute": region.compute_status}}


def gpu_dict(gpu: Gpu) -> dict:
    return {"id": gpu.id, "gpu_id": str(gpu.index), "uuid": gpu.uuid, "vendor": gpu.vendor, "gpu_model": gpu.model,
            "memory_in_mb": gpu.memory_in_mb, "pci_bus_id": gpu.pci_bus_id,
            "assignment_status": gpu.assignment_status.value}


def node_dict(node: Node, region: dict | None = None) -> dict:
    status = node.status
    if status is NodeStatus.ERROR and node.joined:
        join_code = -1
    else:
        join_code = K8S_JOIN_STATE_CODES.get(status, 0)
    return {
        "id": node.id, "Id": node.id, "name": node.name, "kubernetes_name": node.kubernetes_name,
        "region_id": node.region_id, "gpuaas_id": node.cluster_id,
        "node_ip": node.node_ip, "port": node.port, "username": node.username, "volume_group": node.volume_group,
        "external_service_ip": node.external_service_ip, "status": status.value, "disabled": node.disabled,
        "initialize_state_status_code": INITIALIZE_STATE_CODES[status], "k8s_join_state_status_code": join_code,
        "role": {"is_controller_node": node.is_controller_node, "is_worker_node": node.is_worker_node,
                 "is_gateway_service": node.is_gateway_service, "is_storage_service": node.is_storage_service},
        "gpus": [gpu_dict(gpu) for gpu in node.gpus],
        "nvidia_driver_version": node.nvidia_driver_version, "total_memory_in_mb": node.total_memory_in_mb,
        "total_disk_in_mb": node.total_disk_in_mb, "cores": node.cores, "cpu_model": node.cpu_model,
        "region": region if region is not None else region_dict(node.region),
        "created_at": _iso(node.created_at), "updated_at": _iso(node.updated_at),
    }


def node_list(db, region_id: int | None = None) -> list[dict]:
    """Every node (of a region) as node_dict builds it, read with three Core queries.

    No ORM objects are made: for 1,000 nodes x 8 GPUs that is several times faster.
    """
    nodes = select(Node.__table__).order_by(Node.id)
    gpus = select(Gpu.__table__).order_by(Gpu.node_id, Gpu.index)
    if region_id is not None:
        nodes = nodes.where(Node.region_id == region_id)
        gpus = gpus.join(Node, Gpu.node_id == Node.id).where(Node.region_id == region_id)
    gpus_by_node: dict[int, list[dict]] = {}
    for gpu in db.execute(gpus).mappings():
        gpus_by_node.setdefault(gpu["node_id"], []).append({
            "id": gpu["id"], "gpu_id": str(gpu["index"]), "uuid": gpu["uuid"], "vendor": gpu["vendor"],
            "gpu_model": gpu["model"], "memory_in_mb": gpu["memory_in_mb"], "pci_bus_id": gpu["pci_bus_id"],
            "assignment_status": _value(gpu["assignment_status"])})
    regions = {region.id: region_dict(region) for region in db.scalars(select(Region))}
    out = []
    for row in db.execute(nodes).mappings():
        status = NodeStatus(_value(row["status"]))
        join_code = -1 if status is NodeStatus.ERROR and row["joined"] else K8S_JOIN_STATE_CODES.get(status, 0)
        out.append({
            "id": row["id"], "Id": row["id"], "name": row["name"], "kubernetes_name": row["kubernetes_name"],
            "region_id": row["region_id"],
            "gpuaas_id": row["cluster_id"], "node_ip": row["node_ip"], "port": row["port"],
            "username": row["username"], "volume_group": row["volume_group"],
            "external_service_ip": row["external_service_ip"], "status": status.value, "disabled": row["disabled"],
            "initialize_state_status_code": INITIALIZE_STATE_CODES[status], "k8s_join_state_status_code": join_code,
            "role": {"is_controller_node": row["is_controller_node"], "is_worker_node": row["is_worker_node"],
                     "is_gateway_service": row["is_gateway_service"], "is_storage_service": row["is_storage_service"]},
            "gpus": gpus_by_node.get(row["id"], []),
            "nvidia_driver_version": row["nvidia_driver_version"], "total_memory_in_mb": row["total_memory_in_mb"],
            "total_disk_in_mb": row["total_disk_in_mb"], "cores": row["cores"], "cpu_model": row["cpu_model"],
            "region": regions[row["region_id"]],
            "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"]),
        })
    return out


def _value(status) -> str:
    return status.value if hasattr(status, "value") else status


# (endpoint, argument) -> (data version, serialised reply); per process.
_replies: dict[tuple, tuple[tuple, bytes]] = {}
MAX_CACHED_REPLIES = 1024


# Read on every cached GET: plain DB-API, no SQLAlchemy statement machinery (about 100 -> 30 us).
_VERSION_SQL = f"SELECT version FROM {DataVersion.__tablename__} WHERE id = 1"


def current_data_version() -> tuple:
    """The data version: this process's notified view on PostgreSQL under `serve` (no round trip,
    version_listener.py), else data_version read on a pooled connection of its own (a cache hit
    makes no ORM session at all)."""
    listener = current_app.extensions.get("gpuaas_version_listener")
    notified = listener.version() if listener is not None else None
    if notified is not None:
        return notified
    return ("table", current_app.extensions["gpuaas_engine"].url.database, _table_version())


def _table_version() -> int:
    connection = current_app.extensions["gpuaas_engine"].raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(_VERSION_SQL)
        return cursor.fetchone()[0]
    finally:
        connection.close()  # back to the pool, which ends its transaction


def cached_reply(key: tuple, build):
    """The reply for ``key``, rebuilt only when the data version has moved since it was cached.

    The version is read before the data, so a cached reply is never older than its version.
    """
    version = current_data_version()
    hit = _replies.get(key)
    if hit is not None and hit[0] == version:
        body = hit[1]
    else:
        body = json.dumps(build(), separators=(",", ":")).encode()
        if len(_replies) >= MAX_CACHED_REPLIES:
            _replies.clear()
        _replies[key] = (version, body)
    return current_app.response_class(body, mimetype="application/json")
