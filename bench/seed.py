"""What the database benchmarks share: the region, ACTIVE cluster and pool their nodes stand in.

The callers put ``api/`` on sys.path first, so the service's models are imported when called.
"""
from __future__ import annotations


def active_cluster(db):
    """A region "bench" and an ACTIVE cluster in it, flushed so that their ids are known."""
    from gpuaas_api.models import Cluster, Region
    from gpuaas_api.states import ClusterStatus

    region = Region(region_name="bench")
    db.add(region)
    db.flush()
    cluster = Cluster(region_id=region.id, status=ClusterStatus.ACTIVE)
    db.add(cluster)
    db.flush()
    return region, cluster


def active_pool(db, cluster, sharing_ratio: int, security_level: str):
    """An ACTIVE pool "bench" in ``cluster`` (time quantum 30 s), flushed."""
    from gpuaas_api.models import Pool
    from gpuaas_api.states import PoolStatus

    pool = Pool(cluster_id=cluster.id, pool_name="bench", sharing_ratio=sharing_ratio, time_quantum_in_sec=30,
                security_level=security_level, status=PoolStatus.ACTIVE)
    db.add(pool)
    db.flush()
    return pool
