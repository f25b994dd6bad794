"""Finding a GPUaaS cluster: the pool routes see only live ones, the cluster routes every one."""
from __future__ import annotations

from .db import session
from .domain_errors import Refused, not_found
from .models import Cluster
from .states import ClusterStatus


def cluster_by_id(gpuaas_id: int) -> Cluster:
    """The cluster, whatever its status (a torn-down one reads as GPUAAS_INACTIVE)."""
    cluster = session().get(Cluster, gpuaas_id)
    if cluster is None:
        raise not_found("GPUaaS cluster", gpuaas_id)
    return cluster


def live_cluster(gpuaas_id: int, must_be_active: bool = False) -> Cluster:
    """The cluster unless it was torn down (not found then); with ``must_be_active``, Refused until it is active."""
    cluster = cluster_by_id(gpuaas_id)
    if cluster.status is ClusterStatus.INACTIVE:
        raise not_found("GPUaaS cluster", gpuaas_id)
    if must_be_active and cluster.status is not ClusterStatus.ACTIVE:
        raise Refused(f"GPUaaS cluster {gpuaas_id} is {cluster.status.value}; wait for GPUAAS_ACTIVE")
    return cluster
