"""Pool bookkeeping shared by the pool endpoints and the job worker: slots, and what each node must apply."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ..db import session
from ..models import Cluster, Gpu, Job, Node, Pool, PoolSlot
from ..states import GpuAssignment, JobStatus, NodeStatus, Operation
from .submit import submit_pool_apply


def gpus_of(pool: Pool) -> list[Gpu]:
    return session().scalars(select(Gpu).options(selectinload(Gpu.node)).where(Gpu.pool_id == pool.id)
                             .order_by(Gpu.node_id, Gpu.index)).all()


def rebuild_slots(pool: Pool) -> None:
    """One slot per GPU per unit of sharing ratio; GPUs leaving the pool have none."""
    db = session()
    db.flush()
    db.query(PoolSlot).filter(PoolSlot.pool_id == pool.id).delete()
    for gpu in gpus_of(pool):
        if gpu.assignment_status is GpuAssignment.UNASSIGNING:
            continue
        for index in range(pool.sharing_ratio):
            db.add(PoolSlot(pool_id=pool.id, gpu_id=gpu.id, slot_index=index))


def active_apply_job(pool_id: int) -> Job | None:
    jobs = session().scalars(select(Job).where(Job.operation == Operation.POOL_APPLY.value,
                                               Job.status.in_((JobStatus.PENDING, JobStatus.RUNNING)))).all()
    return next((job for job in jobs if job.extravars.get("pool_id") == pool_id), None)


def node_sharing(node_ids: list[int]) -> tuple[dict, dict]:
    """What each node must hold: every GPU of it that is in a pool (whatever the pool: the node's
    configuration is whole), and the GPUs leaving their pool. Keyed by inventory host name."""
    db = session()
    present: dict[str, list] = {}
    absent: dict[str, list] = {}
    rows = db.execute(select(Gpu, Node.name, Pool).join(Node, Gpu.node_id == Node.id)
                      .join(Pool, Gpu.pool_id == Pool.id).where(Gpu.node_id.in_(node_ids))
                      .order_by(Gpu.node_id, Gpu.index)).all()
    for gpu, node_name, pool in rows:
        if gpu.assignment_status is GpuAssignment.UNASSIGNING:
            absent.setdefault(node_name, []).append({"uuid": gpu.uuid})
        else:
            present.setdefault(node_name, []).append({
                "uuid": gpu.uuid, "pool_id": pool.id, "sharing_ratio": pool.sharing_ratio,
                "time_quantum_in_sec": pool.time_quantum_in_sec, "security_level": pool.security_level})
    return present, absent


def schedule_apply(pool: Pool, node_ids: set[int]) -> Job | None:
    """Record the job that applies ``pool``'s change on ``node_ids`` (flushed, not committed).

    With no node to touch (a pool without GPUs), the change is complete at once.
    """
    db = session()
    db.flush()
    if not node_ids:
        return None
    cluster = db.get(Cluster, pool.cluster_id)
    controller = db.scalar(select(Node).where(Node.cluster_id == cluster.id, Node.is_controller_node,
                                              Node.status == NodeStatus.HEALTHY).limit(1))
    present, absent = node_sharing(sorted(node_ids))
    extravars = {"gpu_sharing_by_host": present, "gpu_sharing_absent_by_host": absent}
    extra_hosts = []
    if controller is not None:  # it relabels the nodes so that their device plugin loads the new config
        extravars["gpu_sharing_kubectl_host"] = controller.name
        extra_hosts.append(controller.id)
    return submit_pool_apply(pool.id, cluster.id, sorted(node_ids), extra_hosts, extravars)
