"""The read-only node operations that store what the node reports: the scans (GPUs, NPUs, all
resources) and the storage metrics. What a node reports is stored whole or not at all."""
from __future__ import annotations

import datetime as dt
import logging
from uuid import uuid4

from sqlalchemy import delete, func, select

from .. import node_reports
from ..db import session
from ..jobs.hooks import Outcome, register
from ..metrics.store import record_storage_sample
from ..models import Gpu, Job, Node, Npu, Scan
from ..states import SCAN_KINDS, GpuAssignment, Operation, ScanStatus
from .nodes import NodeOperation, host_report

log = logging.getLogger(__name__)


class ReportingOperation(NodeOperation):
    def refused_report(self, job: Job, node: Node | None, artifact: dict) -> str | None:
        """Why what the node reported cannot be stored, or None."""
        if node is None:
            return None
        try:
            check_host_reports(node, {key: host_report(artifact, key, node) for key in self.reported_keys})
        except node_reports.InvalidNodeReport as refusal:
            return str(refusal)
        return None


def check_host_reports(node: Node, reported: dict) -> None:
    """InvalidNodeReport unless every report of ``node`` is one."""
    if reported["gpuaas_gpu_scan"] is not None:
        node_reports.check_gpu_report(reported["gpuaas_gpu_scan"])
        node_reports.check_gpu_owners(node, reported["gpuaas_gpu_scan"])
    if reported["gpuaas_npu_scan"] is not None:
        node_reports.check_npu_report(reported["gpuaas_npu_scan"])
    if reported["gpuaas_storage_metrics"] is not None:
        node_reports.storage_report(reported["gpuaas_storage_metrics"])
    node_reports.cpu_model((reported["gpuaas_node_facts"] or {}).get("cpu_model"))


class StorageMetrics(ReportingOperation):
    def finished(self, outcome: Outcome, config) -> None:
        super().finished(outcome, config)
        report = host_report(outcome.artifact, "gpuaas_storage_metrics", outcome.node)
        if outcome.succeeded and report is not None:
            record_storage_sample(outcome.node.id, outcome.job.finished_at, report)


class ScanOperation(ReportingOperation):
    def accepted(self, job: Job, ahead: list[Job], holds: bool) -> str | None:
        """Its scan is recorded with its job, in one transaction: a repeated request, answered with the
        pending job (jobs/submit.py), finds the scan too."""
        reason = super().accepted(job, ahead, holds)
        if reason is None:
            session().add(Scan(request_id=str(uuid4()), kind=SCAN_KINDS[self.operation], node_id=job.node_id,
                               job_id=job.id, status=ScanStatus.PROCESSING))
        return reason

    def move_node(self, outcome: Outcome) -> None:
        finish_scan(outcome.job, outcome.node, outcome.succeeded, outcome.artifact)


def finish_scan(job: Job, node: Node, succeeded: bool, artifact_data: dict) -> None:
    scan = session().scalar(select(Scan).where(Scan.job_id == job.id))
    gpu_report = host_report(artifact_data, "gpuaas_gpu_scan", node)
    npu_report = host_report(artifact_data, "gpuaas_npu_scan", node)
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
        storage_report = host_report(artifact_data, "gpuaas_storage_metrics", node)
        resources = {"gpus": [], "npus": [], **resources, "hca_devices": [], "hca_device_info": [],
                     "volume": node_reports.storage_report(storage_report)["volume_groups"] if storage_report else []}
    if scan is not None:
        scan.status, scan.resources = ScanStatus.COMPLETED, resources


def apply_gpu_scan(node: Node, report: dict) -> list[dict]:
    """New GPUs become UNASSIGNED; GPUs not seen (or lost) become UNAVAILABLE, never deleted."""
    node.nvidia_driver_version = report.get("driver_version")
    node.cuda_version = report.get("cuda_version")
    known = {gpu.uuid: gpu for gpu in node.gpus}
    scanned = [apply_gpu_entry(node, known.get(entry["uuid"]), entry) for entry in report.get("gpus", [])
               if entry.get("status") == "ok"]
    seen = {entry["uuid"] for entry in scanned}
    for uuid, gpu in known.items():
        if uuid not in seen:
            gpu.assignment_status = GpuAssignment.UNAVAILABLE
    return scanned


def apply_gpu_entry(node: Node, gpu: Gpu | None, entry: dict) -> dict:
    """One GPU the scan saw: recorded (new) or brought back (it was UNAVAILABLE), and its fields updated."""
    if gpu is None:
        gpu = Gpu(node_id=node.id, uuid=entry["uuid"], index=entry["index"], model=entry["model"], memory_in_mb=entry["memory_mb"])
        session().add(gpu)
    elif gpu.assignment_status is GpuAssignment.UNAVAILABLE:
        gpu.assignment_status = GpuAssignment.ASSIGNED if gpu.pool_id else GpuAssignment.UNASSIGNED
    gpu.index, gpu.model, gpu.memory_in_mb = entry["index"], entry["model"], entry["memory_mb"]
    gpu.vendor, gpu.pci_bus_id = entry.get("vendor", "NVIDIA"), entry.get("pci_bus_id")
    gpu.compute_mode, gpu.mig_mode = entry.get("compute_mode"), entry.get("mig_mode")
    return {"uuid": entry["uuid"], "vendor": gpu.vendor, "gpu_model": entry["model"], "memory_in_mb": entry["memory_mb"]}


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


def register_hooks() -> None:
    for operation in SCAN_KINDS:
        register(operation.value, ScanOperation(operation))
    register(Operation.STORAGE_METRICS.value, StorageMetrics(Operation.STORAGE_METRICS))


# Scans per transaction, when old ones are pruned.
SCAN_CHUNK = 1000


def prune_scans(retention_days: int, now: dt.datetime | None = None, chunk: int = SCAN_CHUNK) -> int:
    """Delete the scans made more than ``retention_days`` ago (0 keeps them all), a chunk at a time; how many
    went. Each node's latest scan of each kind stays (the one a client reads for the node's resources),
    and so does one still processing."""
    if retention_days <= 0:
        return 0
    db = session()
    cutoff = (now or dt.datetime.now(dt.timezone.utc)) - dt.timedelta(days=retention_days)
    latest = select(func.max(Scan.id)).group_by(Scan.node_id, Scan.kind)
    conditions = (Scan.created_at < cutoff, Scan.status != ScanStatus.PROCESSING, Scan.id.not_in(latest))
    removed = 0
    while gone := db.execute(delete(Scan).where(Scan.id.in_(select(Scan.id).where(*conditions).limit(chunk)))).rowcount:
        db.commit()
        removed += gone
    db.commit()
    if removed:
        log.info("scans: %d made more than %d days ago deleted", removed, retention_days)
    return removed
