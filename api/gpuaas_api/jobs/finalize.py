"""The one place where a finished job moves the job, the node, the cluster and the GPU inventory."""
from __future__ import annotations

import datetime as dt
import logging

from flask import current_app
from sqlalchemy import select, update

from .. import kubernetes_names, node_reports, validation
from ..db import session
from ..metrics.collector import store_collection
from ..metrics.store import record_storage_sample
from ..pools import finish_pool
from ..models import Cluster, Gpu, Job, JobEvent, Node, Npu, Scan
from ..states import NODE_TRANSITIONS, SCAN_KINDS, ClusterStatus, GpuAssignment, JobStatus, Operation, ScanStatus
from .submit import job_submitted
from .waiting import notify_finished

log = logging.getLogger(__name__)
MAX_MESSAGE = 300  # the explanation is a summary; the node's logs hold the whole output

RUNNER_TO_JOB_STATUS = {
    "successful": JobStatus.SUCCESSFUL,
    "failed": JobStatus.FAILED,
    "timeout": JobStatus.FAILED,
    "canceled": JobStatus.CANCELED,
}


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def finalize(job_id: int, runner_status: str, rc: int | None, explanation: str, artifact_data: dict,
             new_host_keys: dict[int, str] | None = None, emitted_events: int = 0,
             host_outcomes: dict[int, bool] | None = None, owner: str | None = None) -> Job:
    """Record a finished job and move what it touched. ``host_outcomes`` (node id -> succeeded) tells a
    multi-node job's per-node results; without it every node shares the job's outcome.

    With ``owner`` (the claimant that ran it), nothing is recorded unless the job is still running
    and claimed by it: a process that lost its lease (jobs/lease.py) never overwrites the result
    another process recorded.
    """
    db = session()
    status = RUNNER_TO_JOB_STATUS.get(runner_status, JobStatus.ERROR)
    if owner is not None:
        # The job leaves `running` first, in one conditional UPDATE: a check followed by a write would
        # let another process's takeover (lease.expire_lapsed) land in between, and both would record a
        # result. The row stays locked until this transaction commits, and once it is no longer
        # running no takeover matches it.
        held = db.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.claimed_by == owner)
                          .values(status=status)).rowcount
        if held != 1:
            db.rollback()
            job = db.get(Job, job_id, populate_existing=True)
            log.warning("job %s: not finalised by %s, which no longer holds it (%s, claimed by %s)", job_id, owner,
                        job.status.value, job.claimed_by)
            db.rollback()
            return job
    job = db.get(Job, job_id, populate_existing=True)
    node = db.get(Node, job.node_id) if job.node_id else None
    refusal = _refused_report(job, node, artifact_data)
    if refusal is not None:  # what the node reported is not data to keep, however the run went
        artifact_data = _without_reports(artifact_data)
        if status is JobStatus.SUCCESSFUL:
            status, explanation = JobStatus.FAILED, str(refusal)
    if status is JobStatus.FAILED and not explanation:
        explanation = _failure_explanation(job_id, artifact_data, rc)
    job.status, job.rc, job.explanation = status, rc, explanation
    job.result = artifact_data
    job.finished_at = now()
    job.emitted_events = emitted_events
    for node_id, key in (new_host_keys or {}).items():
        contacted = db.get(Node, node_id)
        if contacted is not None and contacted.ssh_host_key is None:
            contacted.ssh_host_key = key  # pinned at the first successful contact
    _name_nodes_in_kubernetes(job, node, artifact_data)
    _record_node_facts(job, node, artifact_data)
    if node is not None:
        _move_node(job, node, status is JobStatus.SUCCESSFUL, artifact_data)
        if node.busy_job_id == job.id:
            node.busy_job_id = None
    # Each target node of a multi-node job: its own outcome, else the job's.
    node_succeeded = {node_id: (host_outcomes or {}).get(node_id, status is JobStatus.SUCCESSFUL)
                      for node_id in job.extravars.get("targets", [])}
    if job.operation == Operation.POOL_APPLY.value:
        finish_pool(job, node_succeeded)
        db.execute(update(Node).where(Node.busy_job_id == job.id).values(busy_job_id=None))
    elif job.operation == Operation.COLLECT_METRICS.value:
        store_collection(job, artifact_data, node_succeeded, current_app.config["GPUAAS"])
    elif job.operation == Operation.STORAGE_METRICS.value and status is JobStatus.SUCCESSFUL and node is not None:
        report = artifact_data.get("gpuaas_storage_metrics", {}).get(node.inventory_name)
        if report is not None:
            record_storage_sample(node.id, job.finished_at, report)
    db.commit()
    notify_finished()
    job_submitted.release()  # a job queued behind this one may start now
    return job


def end_unstarted(job_id: int, status: JobStatus, explanation: str) -> bool:
    """End a queued job that never started (refused when its turn came, or canceled while it waited);
    False when it was not pending any more (another worker started or ended it first).

    It held nothing, and its node never moved. What its request prepared is undone: an enable's
    cluster, set up when the request came, shows that the enable failed (and may be enabled again).
    """
    db = session()
    ended = db.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.PENDING)
                       .values(status=status, explanation=explanation, finished_at=now())).rowcount
    if ended != 1:
        db.rollback()
        return False
    job = db.get(Job, job_id, populate_existing=True)
    if job.operation == Operation.ENABLE.value and job.cluster_id is not None:
        db.execute(update(Cluster).where(Cluster.id == job.cluster_id, Cluster.status == ClusterStatus.ENABLE_SETTING_UP)
                   .values(status=ClusterStatus.ERROR_WHILE_ENABLING))
    db.commit()
    notify_finished()
    job_submitted.release()
    return True


# What a job's artifact holds that a node reported, by the key its role returns it under: per host, and
# the cluster's facts (an enable's, one for the run).
HOST_REPORTS = ("gpuaas_gpu_scan", "gpuaas_npu_scan", "gpuaas_storage_metrics", "gpuaas_node_facts")
NODE_REPORTS = (*HOST_REPORTS, "gpuaas_cluster")


def _refused_report(job: Job, node: Node | None, artifact_data: dict) -> node_reports.InvalidNodeReport | None:
    """Why what the job's node reported cannot be stored, or None: a report is stored whole or not at all."""
    operation = Operation(job.operation)
    try:
        if operation is Operation.ENABLE and "gpuaas_cluster" in artifact_data:
            node_reports.cluster_facts(artifact_data["gpuaas_cluster"])
        if node is None or (operation not in SCAN_KINDS and operation is not Operation.STORAGE_METRICS):
            return None
        reported = {key: (artifact_data.get(key) or {}).get(node.inventory_name) for key in HOST_REPORTS}
        if reported["gpuaas_gpu_scan"] is not None:
            node_reports.check_gpu_report(reported["gpuaas_gpu_scan"])
            node_reports.check_gpu_owners(node, reported["gpuaas_gpu_scan"])
        if reported["gpuaas_npu_scan"] is not None:
            node_reports.check_npu_report(reported["gpuaas_npu_scan"])
        if reported["gpuaas_storage_metrics"] is not None:
            node_reports.storage_report(reported["gpuaas_storage_metrics"])
        node_reports.cpu_model((reported["gpuaas_node_facts"] or {}).get("cpu_model"))
    except node_reports.InvalidNodeReport as refusal:
        return refusal
    return None


def _without_reports(artifact_data: dict) -> dict:
    """The job's result without what the node reported (refused: it is kept nowhere)."""
    return {key: value for key, value in artifact_data.items() if key not in NODE_REPORTS}


def _name_nodes_in_kubernetes(job: Job, node: Node | None, artifact_data: dict) -> None:
    """At a node's first contact that read its hostname (test_conn, node_init), derive and store
    its Kubernetes name; a stored name never changes."""
    hostnames = {host: result.get("hostname") for host, result in artifact_data.get("gpuaas_conn_check", {}).items()}
    hostnames.update(artifact_data.get("gpuaas_node_hostnames", {}))
    if not any(hostnames.values()):
        return  # most jobs (metrics every minute, pools) read no hostname: no node to load
    db = session()
    nodes = [node] if node is not None else [db.get(Node, node_id) for node_id in job.extravars.get("targets", [])]
    for named in nodes:
        reported = hostnames.get(named.inventory_name) if named is not None else None
        if not reported or named.kubernetes_name:
            continue
        hostname = node_reports.hostname(reported)
        if hostname is None:  # not a host name: the node is named after its id (node-<id>) instead
            log.warning("node %s reported a host name that is not one (RFC 1123); named node-%s", named.id, named.id)
        taken = set(db.scalars(select(Node.kubernetes_name).where(Node.region_id == named.region_id,
                                                                  Node.id != named.id,
                                                                  Node.kubernetes_name.is_not(None))))
        named.kubernetes_name = kubernetes_names.derive(hostname or "", named.id, taken)


# What roles/node_facts reports per host (node init and every scan), as the node's own fields.
NODE_FACTS = ("cpu_model", "cores", "total_memory_in_mb", "total_disk_in_mb")
MAX_FACT = validation.MAX_INT32  # the columns are 32-bit integers (2 PiB in MiB)


def _record_node_facts(job: Job, node: Node | None, artifact_data: dict) -> None:
    """Store the hardware facts the job gathered. A fact the host could not tell (null) keeps its last
    known value: a partial gathering does not erase what an earlier one found."""
    reported = artifact_data.get("gpuaas_node_facts")
    if not reported:
        return
    db = session()
    nodes = [node] if node is not None else [db.get(Node, node_id) for node_id in job.extravars.get("targets", [])]
    for gathered in nodes:
        facts = reported.get(gathered.inventory_name) if gathered is not None else None
        if not isinstance(facts, dict):
            continue
        for name in NODE_FACTS:
            value = _node_fact(name, facts.get(name))
            if value is not None:
                setattr(gathered, name, value)


def _node_fact(name: str, value):
    """A reported fact as the column holds it, or None (kept as it was) for what is not one: a host's
    report is data from the node, and a bad value must not fail the finalisation of a job that only
    gathered it on the way (a scan refuses it: _refused_report)."""
    if name == "cpu_model":
        try:
            return node_reports.cpu_model(value)
        except node_reports.InvalidNodeReport:
            log.warning("a node reported a CPU model that is not one; the last known one is kept")
            return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_FACT:
        return value
    return None


def _failure_explanation(job_id: int, artifact_data: dict, rc: int | None) -> str:
    """One line an operator can act on: the failed step, or the first failed task and its message."""
    conn = artifact_data.get("gpuaas_conn_check", {})
    for host, result in conn.items():
        if result.get("failed_step"):
            return f"{host}: step {result['failed_step']} failed"
    first_failure = session().scalars(
        select(JobEvent).where(JobEvent.job_id == job_id,
                               JobEvent.event.in_(("runner_on_failed", "runner_on_unreachable")))
        .order_by(JobEvent.counter).limit(1)).first()
    if first_failure is not None:
        res = first_failure.data.get("res", {}) if isinstance(first_failure.data, dict) else {}
        message = str(res.get("msg") or res.get("stderr") or "").strip().splitlines()
        what = "unreachable" if first_failure.event == "runner_on_unreachable" else "failed"
        detail = f": {message[0][:MAX_MESSAGE]}" if message else ""
        return f"{first_failure.host}: task '{first_failure.task}' {what}{detail}"
    if rc == 4:
        return "the node could not be reached over SSH"
    return f"the playbook failed (rc {rc}); see the node's logs"


def _move_node(job: Job, node: Node, succeeded: bool, artifact_data: dict) -> None:
    operation = Operation(job.operation)
    transition = NODE_TRANSITIONS[operation]
    target = transition.on_success if succeeded else transition.on_failure
    if target is not None:
        node.status = target
    db = session()
    cluster = db.get(Cluster, job.cluster_id) if job.cluster_id else None
    if operation is Operation.ENABLE and cluster is not None:
        if succeeded:
            facts = node_reports.cluster_facts(artifact_data["gpuaas_cluster"]) if "gpuaas_cluster" in artifact_data else {}
            cluster.status = ClusterStatus.ACTIVE
            cluster.facts = facts  # checked at finalize's start (_refused_report): this cannot refuse now
            cluster.k8s_api_server_address = facts.get("api_server_address")
            cluster.k8s_api_server_port = facts.get("api_server_port")
            node.cluster_id, node.joined = cluster.id, True
        else:
            cluster.status = ClusterStatus.ERROR_WHILE_ENABLING
    elif operation is Operation.JOIN and succeeded:
        node.cluster_id, node.joined = job.cluster_id, True
    elif operation in (Operation.LEAVE, Operation.DEINIT) and succeeded:
        if operation is Operation.DEINIT:
            # A controller that is reset takes its cluster down with it.
            for controlled in db.scalars(select(Cluster).where(Cluster.controller_node_id == node.id,
                                                               Cluster.status != ClusterStatus.INACTIVE)):
                controlled.status = ClusterStatus.INACTIVE
        node.joined = False
        node.cluster_id = None
        node.disabled = False
    elif operation is Operation.DISABLE and succeeded:
        node.disabled = True
    elif operation in (Operation.SCAN_GPUS, Operation.SCAN_NPUS, Operation.SCAN_RESOURCES):
        _finish_scan(job, node, succeeded, artifact_data)


def _finish_scan(job: Job, node: Node, succeeded: bool, artifact_data: dict) -> None:
    db = session()
    scan = db.scalar(select(Scan).where(Scan.job_id == job.id))
    gpu_report = artifact_data.get("gpuaas_gpu_scan", {}).get(node.inventory_name)
    npu_report = artifact_data.get("gpuaas_npu_scan", {}).get(node.inventory_name)
    storage_report = artifact_data.get("gpuaas_storage_metrics", {}).get(node.inventory_name)
    if not succeeded or (gpu_report is None and npu_report is None):
        if scan is not None:
            scan.status, scan.error_msg = ScanStatus.FAILED, job.explanation or "the scan returned no result"
        if job.operation != Operation.SCAN_NPUS.value:
            for gpu in node.gpus:  # the node did not answer: its GPUs cannot be assigned now
                gpu.assignment_status = GpuAssignment.UNAVAILABLE
        return
    resources: dict = {}
    if gpu_report is not None:
        resources["gpus"] = apply_gpu_scan(node, gpu_report)
    if npu_report is not None:
        resources["npus"] = apply_npu_scan(node, npu_report)
    if job.operation == Operation.SCAN_RESOURCES.value:
        resources.setdefault("gpus", [])
        resources.setdefault("npus", [])
        resources["hca_devices"], resources["hca_device_info"] = [], []
        resources["volume"] = node_reports.storage_report(storage_report)["volume_groups"] if storage_report else []
    if scan is not None:
        scan.status, scan.resources = ScanStatus.COMPLETED, resources


def apply_gpu_scan(node: Node, report: dict) -> list[dict]:
    """New GPUs become UNASSIGNED; GPUs not seen (or lost) become UNAVAILABLE, never deleted."""
    db = session()
    node.nvidia_driver_version = report.get("driver_version")
    node.cuda_version = report.get("cuda_version")
    known = {gpu.uuid: gpu for gpu in node.gpus}
    seen = set()
    scanned = []
    for entry in report.get("gpus", []):
        if entry.get("status") != "ok":
            continue
        seen.add(entry["uuid"])
        gpu = known.get(entry["uuid"])
        if gpu is None:
            gpu = Gpu(node_id=node.id, uuid=entry["uuid"], index=entry["index"], model=entry["model"],
                      memory_in_mb=entry["memory_mb"])
            db.add(gpu)
        elif gpu.assignment_status is GpuAssignment.UNAVAILABLE:
            gpu.assignment_status = GpuAssignment.ASSIGNED if gpu.pool_id else GpuAssignment.UNASSIGNED
        gpu.index, gpu.model, gpu.memory_in_mb = entry["index"], entry["model"], entry["memory_mb"]
        gpu.vendor, gpu.pci_bus_id = entry.get("vendor", "NVIDIA"), entry.get("pci_bus_id")
        gpu.compute_mode, gpu.mig_mode = entry.get("compute_mode"), entry.get("mig_mode")
        scanned.append({"uuid": entry["uuid"], "vendor": gpu.vendor, "gpu_model": entry["model"],
                        "memory_in_mb": entry["memory_mb"]})
    for uuid, gpu in known.items():
        if uuid not in seen:
            gpu.assignment_status = GpuAssignment.UNAVAILABLE
    return scanned


def apply_npu_scan(node: Node, report: dict) -> list[dict]:
    db = session()
    known = {npu.index: npu for npu in node.npus}
    scanned = []
    for entry in report.get("npus", []):
        npu = known.get(entry["id"]) or Npu(node_id=node.id, index=entry["id"])
        npu.chip_name, npu.memory_in_mb, npu.health = entry.get("chip_name"), entry.get("memory_mb"), entry["health"]
        db.add(npu)
        scanned.append({"id": entry["id"], "chip_name": npu.chip_name, "memory_in_mb": npu.memory_in_mb,
                        "health": npu.health})
    return scanned


def reconcile_orphans(hostname: str, is_alive, owner: str | None = None) -> list[int]:
    """Finalise jobs whose claiming process on this host is gone (after a crash or restart), at once
    rather than when their lease expires (jobs/lease.py). Each is taken over first (a conditional
    UPDATE of its claimant), so that two processes reconciling at once finalise it once."""
    from .queue import claimant

    owner = owner or claimant()
    db = session()
    orphans = []
    for job in db.scalars(select(Job).where(Job.status == JobStatus.RUNNING)).all():
        host, _colon, pid = (job.claimed_by or "").rpartition(":")
        if host == hostname and pid.isdigit() and not is_alive(int(pid)):
            orphans.append((job.id, job.claimed_by))
    db.rollback()
    finalised = []
    for job_id, claimed_by in orphans:
        taken = db.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING,
                                             Job.claimed_by == claimed_by).values(claimed_by=owner)).rowcount
        db.commit()
        if taken == 1:
            finalize(job_id, "error", None, "the API process running this job stopped before it finished; "
                     "the node was set to a consistent state", {}, owner=owner)
            finalised.append(job_id)
    return finalised
