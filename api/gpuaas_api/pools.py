"""The pool domain: a pool's GPUs and slots, its lifecycle, and the changes that pool_apply jobs carry
out on the nodes holding the affected GPUs (playbooks/pool_apply.yml, the gpu_sharing role).

The pool and GPU statuses follow that job (states.py: the pool lifecycle); see docs/api.md. The
routes (resources/pools.py) only parse requests and call these; the pool_apply operation's hooks
(operations/pool_apply.py) call start_pool_deployment, finish_pool and apply_queued_change.
"""
from __future__ import annotations

from flask import current_app
from sqlalchemy import func, select, update
from sqlalchemy.orm import selectinload

from . import actor
from .clusters import live_cluster
from .db import session
from .domain_errors import Conflict, Invalid, NotFound, Refused, not_found
from .jobs.claims import wake_a_worker
from .jobs.hooks import Turn
from .jobs.submit import new_job, submit
from .models import Cluster, Gpu, Job, Node, Pool, PoolSlot, TenantSlot, inventory_name
from .rendering import render_pool
from .states import GPU_SETTLES_TO, POOL_SETTLED_STATUSES, GpuAssignment, JobStatus, Operation, PoolStatus


def get_pool(pool_id: int) -> Pool:
    pool = session().get(Pool, pool_id)
    if pool is None:
        raise not_found("pool", pool_id)
    return pool


def resource_prefix() -> str:
    return current_app.config["GPUAAS"].POOL_RESOURCE_PREFIX


def pool_reply(pool: Pool) -> dict:
    db = session()
    held = dict(db.execute(select(TenantSlot.gpu_id, func.count()).where(TenantSlot.pool_id == pool.id)
                           .group_by(TenantSlot.gpu_id)).all())
    region_id = db.scalar(select(Cluster.region_id).where(Cluster.id == pool.cluster_id))
    return render_pool(pool, gpus_of(pool), resource_prefix(), region_id, held)


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


def active_apply_job(pool_id: int, other_than: Job | None = None) -> Job | None:
    """The pool's newest unfinished change (running, or queued behind another), ``other_than`` aside."""
    unfinished = select(Job).where(Job.pool_id == pool_id, Job.status.in_((JobStatus.PENDING, JobStatus.RUNNING)))
    if other_than is not None:
        unfinished = unfinished.where(Job.id != other_than.id)
    return session().scalars(unfinished.order_by(Job.id.desc()).limit(1)).first()


def queue_change(pool: Pool, change: dict, ahead: Job) -> Job:
    """Record a change of a pool that another job is changing: it waits, pending, and is checked
    again and applied when its turn comes (jobs/queue.py, apply_queued_change). Committed."""
    db = session()
    nodes = sorted({gpu.node_id for gpu in gpus_of(pool)})  # what it will most likely touch: its place in line
    job = new_job(Operation.POOL_APPLY.value, mutating=True, cluster_id=pool.cluster_id, pool_id=pool.id,
                  extravars={"pool_id": pool.id, "change": change, "targets": nodes, "hosts": nodes})
    db.add(job)
    db.commit()
    actor.job_recorded(job.id)
    job.queued_behind = ahead.id
    wake_a_worker()
    return job


def queued_reply(pool: Pool, job: Job) -> dict:
    return {**pool_reply(pool), "job_id": job.id, "queued_behind": job.queued_behind}


def apply_queued_change(job: Job) -> Turn:
    """A queued change's turn: apply it to the pool as it is now, through the same function as a
    request, in the worker's transaction (flushed, not committed). A DomainError when the pool's
    state now refuses it. STARTED when the job holds its nodes, ENDED when no node has anything to
    apply, WAITS when a node it now needs is held (the caller rolls it all back)."""
    change = job.extravars["change"]
    apply = {"update": lambda: update_pool(job.pool_id, change["fields"], job=job),
             "add_gpus": lambda: add_gpus(job.pool_id, change["gpu_uuids"], job=job),
             "remove_gpus": lambda: remove_gpus(job.pool_id, change["gpu_uuids"], job=job),
             "delete": lambda: delete_pool(job.pool_id, job=job),
             "retry": lambda: retry_pool(job.pool_id, job=job)}[change["kind"]]
    reply = apply()
    if reply.get("job_id") is None:
        return Turn.ENDED
    held = session().scalar(select(func.count(Node.id)).where(Node.busy_job_id == job.id))
    return Turn.STARTED if held == len(job.extravars.get("targets", [])) else Turn.WAITS


def node_sharing(node_ids: list[int]) -> tuple[dict, dict]:
    """What each node must hold: every GPU of it that is in a pool (whatever the pool: the node's
    configuration is whole), and the GPUs leaving their pool. Keyed by inventory host name."""
    db = session()
    present: dict[str, list] = {}
    absent: dict[str, list] = {}
    rows = db.execute(select(Gpu, Gpu.node_id, Pool)
                      .join(Pool, Gpu.pool_id == Pool.id).where(Gpu.node_id.in_(node_ids))
                      .order_by(Gpu.node_id, Gpu.index)).all()
    for gpu, node_id, pool in rows:
        node_name = inventory_name(node_id)
        if gpu.assignment_status is GpuAssignment.UNASSIGNING:
            absent.setdefault(node_name, []).append({"uuid": gpu.uuid})
        else:
            present.setdefault(node_name, []).append({
                "uuid": gpu.uuid, "pool_id": pool.id, "sharing_ratio": pool.sharing_ratio,
                "time_quantum_in_sec": pool.time_quantum_in_sec, "security_level": pool.security_level})
    return present, absent


def schedule_apply(pool: Pool, node_ids: set[int], job: Job | None = None) -> Job | None:
    """Record the job that applies ``pool``'s change on ``node_ids`` (flushed, not committed).

    With no node to touch (a pool without GPUs), the change is complete at once.
    """
    db = session()
    db.flush()
    if not node_ids:
        return None
    present, absent = node_sharing(sorted(node_ids))
    # The nodes' agents advertise the pool under the name the pool replies give (resource_name).
    extravars = {"gpu_sharing_by_host": present, "gpu_sharing_absent_by_host": absent,
                 "gpu_sharing_resource_prefix": resource_prefix()}
    return record_apply_job(pool, sorted(node_ids), extravars, job)


def record_apply_job(pool: Pool, node_ids: list[int], extravars: dict, job: Job | None = None) -> Job:
    """Record (or, for a queued change whose turn came, fill in) the pool_apply job over ``node_ids``.

    It takes every node at once; when one is held by another job, it takes none and waits, pending,
    until they are all free (jobs/queue.py). Flushed, not committed. A queued change's job keeps the
    actor of the request that queued it.
    """
    fields = {"hosts": list(node_ids), "targets": list(node_ids), "pool_id": pool.id, "vars": extravars}
    if job is None:
        job = new_job(Operation.POOL_APPLY.value, mutating=True, cluster_id=pool.cluster_id, pool_id=pool.id,
                      extravars=fields)
    else:
        job.extravars = fields
    return submit(job, node_ids)


def resolve_gpus(cluster: Cluster, uuids: list[str], field: str, pool: Pool | None = None) -> list[Gpu]:
    """The GPUs to attach: known, in this cluster, available, and in no other pool."""
    if len(set(uuids)) != len(uuids):
        raise Invalid("a GPU is listed twice", field)
    found = {gpu.uuid: gpu for gpu in session().scalars(select(Gpu).options(selectinload(Gpu.node))
                                                        .where(Gpu.uuid.in_(uuids))).all()}
    unknown = [uuid for uuid in uuids if uuid not in found]
    if unknown:
        raise Invalid(f"unknown GPU {unknown[0]}", field)
    for uuid in uuids:
        gpu = found[uuid]
        if gpu.node.cluster_id != cluster.id:
            raise Conflict(f"GPU {uuid} is not in GPUaaS cluster {cluster.id}", field)
        if gpu.pool_id is not None and (pool is None or gpu.pool_id != pool.id):
            raise Conflict(f"GPU {uuid} already belongs to pool {gpu.pool_id}", field)
        if gpu.assignment_status is GpuAssignment.UNAVAILABLE:
            raise Refused(f"GPU {uuid} is unavailable (its node or the GPU does not answer)", field)
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


def claim_pool(pool: Pool, to: PoolStatus = PoolStatus.DEPLOYMENT_SCHEDULED, job: Job | None = None) -> None:
    """Start a change of the pool: one at a time, and only from a settled status (409 otherwise).
    A failed delete (still DELETING, no job running) may be deleted again, or retried."""
    settled = pool.status in POOL_SETTLED_STATUSES
    deleting_again = (pool.status is PoolStatus.DELETING and to is PoolStatus.DELETING
                      and active_apply_job(pool.id, other_than=job) is None)
    if settled or deleting_again:
        won = session().execute(update(Pool).where(Pool.id == pool.id, Pool.status == pool.status)
                                .values(status=to)).rowcount
        if won == 1:
            session().refresh(pool)
            return
    raise Refused(f"pool {pool.id} is {pool.status.value}; wait until it is ACTIVE or ERROR_WHILE_DEPLOYING")


def _commit_unless_queued(queued: Job | None) -> None:
    """A request commits its change; a queued change's turn only flushes it: the worker's one
    transaction (jobs/queue.py start_queued) commits it with the claim, or rolls it all back."""
    if queued is None:
        session().commit()
        wake_a_worker()
    else:
        session().flush()


def apply_change(pool: Pool, node_ids: set[int], queued: Job | None = None) -> dict:
    """Record the nodes' job with the change (or fill in the queued one whose turn came) and commit
    both; a pool with nothing to apply settles at once."""
    db = session()
    job = schedule_apply(pool, node_ids, queued)
    if job is None:
        if pool.status is PoolStatus.DELETING:
            db.delete(pool)
            _commit_unless_queued(queued)
            return {"success": True, "message": f"pool {pool.id} deleted", "job_id": None, "deleted": True}
        pool.status = PoolStatus.ACTIVE
    _commit_unless_queued(queued)
    return {**pool_reply(pool), "job_id": job.id if job else None,
            "queued_behind": getattr(job, "queued_behind", None)}


def create_pool(body: dict, must_have_pools: bool) -> dict:
    cluster = live_cluster(body["gpuaas_id"], must_be_active=True)
    fields = body["pool"]
    db = session()
    existing = db.scalar(select(func.count(Pool.id)).where(Pool.cluster_id == cluster.id))
    if must_have_pools and not existing:
        raise Refused(f"GPUaaS cluster {cluster.id} has no pool yet; create its first pool with /gpuaas/pool/create")
    if db.scalar(select(Pool.id).where(Pool.cluster_id == cluster.id, Pool.pool_name == fields["pool_name"])):
        raise Conflict(f"cluster {cluster.id} already has a pool named {fields['pool_name']}", "pool.pool_name")
    gpus = resolve_gpus(cluster, fields["attach_gpu_ids"], "pool.attach_gpu_ids")
    pool = Pool(cluster_id=cluster.id, pool_name=fields["pool_name"], sharing_ratio=fields["sharing_ratio"],
                time_quantum_in_sec=fields["time_quantum_in_sec"], security_level=fields["security_level"],
                pool_label=fields.get("pool_label"), status=PoolStatus.DEPLOYMENT_SCHEDULED)
    db.add(pool)
    db.flush()
    return apply_change(pool, attach(pool, gpus))


def _queued_behind(pool: Pool, job: Job | None) -> Job | None:
    """The job a new change of ``pool`` must wait for: its newest unfinished change (None for a queued
    change whose turn has come, ``job``)."""
    return None if job is not None else active_apply_job(pool.id)


def _known_gpus(uuids: list[str], field: str) -> None:
    """What a queued change can be refused for at once: GPUs that do not exist (nothing ahead creates them)."""
    known = set(session().scalars(select(Gpu.uuid).where(Gpu.uuid.in_(uuids))))
    unknown = [uuid for uuid in uuids if uuid not in known]
    if unknown:
        raise Invalid(f"unknown GPU {unknown[0]}", field)


def delete_pool(pool_id: int, job: Job | None = None) -> dict:
    """The pool goes DELETING; it is removed once every node has restored its GPUs' defaults."""
    pool = get_pool(pool_id)
    ahead = _queued_behind(pool, job)
    if ahead is not None:
        queued = queue_change(pool, {"kind": "delete"}, ahead)
        return {"success": True, "job_id": queued.id,
                "message": f"the deletion of pool {pool_id} is queued behind job {ahead.id} (job {queued.id})"}
    claim_pool(pool, PoolStatus.DELETING, job)
    reply = apply_change(pool, detach(pool, gpus_of(pool)), job)
    if reply.get("deleted"):
        return {"success": True, "message": reply["message"], "job_id": None}
    return {"success": True, "message": f"pool {pool_id} is being deleted (DELETING); its GPUs become UNASSIGNED as "
            "their nodes restore their defaults", "job_id": reply["job_id"]}


def remove_gpus(pool_id: int, uuids: list[str], job: Job | None = None) -> dict:
    pool = get_pool(pool_id)
    ahead = _queued_behind(pool, job)
    if ahead is not None:
        _known_gpus(uuids, "gpu_uuids")
        return queued_reply(pool, queue_change(pool, {"kind": "remove_gpus", "gpu_uuids": uuids}, ahead))
    members = {gpu.uuid: gpu for gpu in gpus_of(pool) if gpu.assignment_status is not GpuAssignment.UNASSIGNING}
    missing = [uuid for uuid in uuids if uuid not in members]
    if missing:
        raise Conflict(f"GPU {missing[0]} is not in pool {pool_id}", "gpu_uuids")
    claim_pool(pool, job=job)
    return apply_change(pool, detach(pool, [members[uuid] for uuid in uuids]), job)


def update_pool(pool_id: int, fields: dict, job: Job | None = None) -> dict:
    """Change a pool's settings: a new name or label only is stored at once (even while the pool is
    being changed: no node holds them); a sharing change is applied on every node of the pool."""
    pool = get_pool(pool_id)
    sharing_changes = {key for key, value in fields.items() if getattr(pool, key) != value} - {"pool_name", "pool_label"}
    if not sharing_changes:
        for key, value in fields.items():
            setattr(pool, key, value)
        _commit_unless_queued(job)
        return {**pool_reply(pool), "job_id": None, "queued_behind": None}
    ahead = _queued_behind(pool, job)
    if ahead is not None:
        return queued_reply(pool, queue_change(pool, {"kind": "update", "fields": fields}, ahead))
    claim_pool(pool, job=job)
    for key, value in fields.items():
        setattr(pool, key, value)
    members = [gpu for gpu in gpus_of(pool) if gpu.assignment_status is not GpuAssignment.UNASSIGNING]
    return apply_change(pool, attach(pool, members), job)  # every node of the pool applies the new settings


def add_gpus(pool_id: int, uuids: list[str], field: str = "gpu_uuids", job: Job | None = None) -> dict:
    pool = get_pool(pool_id)
    ahead = _queued_behind(pool, job)
    if ahead is not None:
        _known_gpus(uuids, field)
        return queued_reply(pool, queue_change(pool, {"kind": "add_gpus", "gpu_uuids": uuids}, ahead))
    gpus = resolve_gpus(live_cluster(pool.cluster_id), uuids, field, pool)
    if job is not None:  # queued: a GPU that came into the pool meanwhile is where this change wanted it
        gpus = [gpu for gpu in gpus if not is_member(gpu, pool)]
        if not gpus:  # nothing left to do: the job ends successful, without a run, and settles no node
            job.extravars = {**job.extravars, "targets": [], "hosts": []}
            return {"job_id": None}
    already = [gpu.uuid for gpu in gpus if gpu.pool_id == pool.id]
    if already:
        raise Conflict(already_in_pool(already[0], pool.id), field)
    claim_pool(pool, job=job)
    return apply_change(pool, attach(pool, gpus), job)


def is_member(gpu: Gpu, pool: Pool) -> bool:
    """In the pool, or on its way in (ASSIGNING); not on its way out."""
    return gpu.pool_id == pool.id and gpu.assignment_status is not GpuAssignment.UNASSIGNING


def already_in_pool(uuid: str, pool_id: int) -> str:
    # Worded with "already": the clients count such a refusal as success (compatibility.md).
    return f"GPU {uuid} is already in pool {pool_id}"


def add_node_gpu(pool_id: int, node_id: int, index: int | None = None, uuid: str | None = None) -> dict:
    """Add one GPU of a node (POST /gpuaas/pool/gpu), named by index or UUID, or the node's only free one.

    A GPU the pool already holds (attached by the create a moment ago, say) is refused at once,
    "already in pool", whatever the pool is doing: queued, it would only fail when its turn came.
    """
    pool = get_pool(pool_id)
    gpu = node_gpu(node_id, index, uuid, pool)
    field = "gpu_index" if index is not None or uuid is None else "gpu_uuid"
    if is_member(gpu, pool):
        raise Conflict(already_in_pool(gpu.uuid, pool.id), field)
    return add_gpus(pool_id, [gpu.uuid], field)


def node_gpu(node_id: int, index: int | None, uuid: str | None, pool: Pool) -> Gpu:
    """The GPU of ``node_id`` at ``index``, or with ``uuid``, or else its only free one."""
    if session().get(Node, node_id) is None:
        raise not_found("node", node_id)
    if index is not None or uuid is not None:
        return _named_gpu(node_id, index, uuid)
    return _only_free_gpu(node_id, pool)


def _named_gpu(node_id: int, index: int | None, uuid: str | None) -> Gpu:
    where = Gpu.index == index if index is not None else Gpu.uuid == uuid
    gpu = session().scalar(select(Gpu).where(Gpu.node_id == node_id, where))
    if gpu is None:
        named, field = (f"GPU {index}", "gpu_index") if index is not None else (f"GPU {uuid}", "gpu_uuid")
        raise NotFound(f"{named} of node {node_id} not found", field)
    return gpu


def _only_free_gpu(node_id: int, pool: Pool) -> Gpu:
    """The node's one free GPU (unassigned and answering): with several, the caller must choose
    (422); with none, there is nothing to add (409, "already in pool" when this pool holds them)."""
    gpus = session().scalars(select(Gpu).where(Gpu.node_id == node_id).order_by(Gpu.index)).all()
    free = [gpu for gpu in gpus if gpu.pool_id is None and gpu.assignment_status is GpuAssignment.UNASSIGNED]
    if len(free) == 1:
        return free[0]
    if free:
        indexes = ", ".join(str(gpu.index) for gpu in free)
        raise Invalid(f"node {node_id} has {len(free)} free GPUs (indexes {indexes}); name one with gpu_index or "
                      "gpu_uuid", "gpu_index")
    members = [gpu for gpu in gpus if is_member(gpu, pool)]
    if members:
        more = f" (and {len(members) - 1} more of its GPUs)" if len(members) > 1 else ""
        raise Conflict(f"node {node_id} has no free GPU: {already_in_pool(members[0].uuid, pool.id)}{more}", "gpu_index")
    raise Refused(f"node {node_id} has no free GPU (unassigned and answering) to add", "gpu_index")


def remove_gpu_by_id(pool_id: int, gpu_id: int) -> dict:
    gpu = session().get(Gpu, gpu_id)
    if gpu is None:
        raise not_found("GPU", gpu_id)
    return remove_gpus(pool_id, [gpu.uuid])


def retry_pool(pool_id: int, job: Job | None = None) -> dict:
    """Apply again, on the nodes where it did not complete, what a failed change left in transit."""
    pool = get_pool(pool_id)
    ahead = _queued_behind(pool, job)
    if ahead is not None:
        return queued_reply(pool, queue_change(pool, {"kind": "retry"}, ahead))
    if pool.status not in (PoolStatus.ERROR_WHILE_DEPLOYING, PoolStatus.DELETING):
        raise Refused(f"pool {pool_id} is {pool.status.value}; only a failed change can be retried")
    claim_pool(pool, PoolStatus.DELETING if pool.status is PoolStatus.DELETING else PoolStatus.DEPLOYMENT_SCHEDULED,
               job)
    in_transit = {gpu.node_id for gpu in gpus_of(pool) if gpu.assignment_status in
                  (GpuAssignment.ASSIGNING, GpuAssignment.UNASSIGNING)}
    return apply_change(pool, in_transit, job)


def cluster_pools(gpuaas_id: int) -> list[dict]:
    live_cluster(gpuaas_id)
    pools = session().scalars(select(Pool).where(Pool.cluster_id == gpuaas_id).order_by(Pool.id)).all()
    return [pool_reply(pool) for pool in pools]


def start_pool_deployment(pool_id: int) -> None:
    """The pool's slots are (re)built (VM_CREATION), then its nodes are configured (SETTING_UP)."""
    db = session()
    pool = db.get(Pool, pool_id)
    if pool is None or pool.status is PoolStatus.DELETING:
        return
    pool.status = PoolStatus.VM_CREATION
    db.commit()
    rebuild_slots(pool)
    pool.status = PoolStatus.SETTING_UP
    db.commit()


def finish_pool(job: Job, node_succeeded: dict[int, bool]) -> None:
    """GPUs settle on the nodes that applied the change; the pool says whether all of them did."""
    db = session()
    pool = db.get(Pool, job.extravars["pool_id"])
    for node_id, succeeded in node_succeeded.items():
        if not succeeded:
            continue  # its GPUs stay ASSIGNING / UNASSIGNING: exactly what is not configured there
        for gpu in db.scalars(select(Gpu).where(Gpu.node_id == node_id,
                                                Gpu.assignment_status.in_(tuple(GPU_SETTLES_TO)))).all():
            gpu.assignment_status = GPU_SETTLES_TO[gpu.assignment_status]
            if gpu.assignment_status is GpuAssignment.UNASSIGNED:
                gpu.pool_id = None
    if pool is None:
        return
    db.flush()
    in_transit = db.scalar(select(Gpu.id).where(Gpu.pool_id == pool.id, Gpu.assignment_status.in_(
        tuple(GPU_SETTLES_TO))).limit(1))
    if in_transit is not None or not all(node_succeeded.values()):
        if pool.status is not PoolStatus.DELETING:  # a failed delete stays DELETING until a retry ends it
            pool.status = PoolStatus.ERROR_WHILE_DEPLOYING
    elif pool.status is PoolStatus.DELETING:
        db.query(PoolSlot).filter(PoolSlot.pool_id == pool.id).delete()
        db.delete(pool)
    else:
        pool.status = PoolStatus.ACTIVE
