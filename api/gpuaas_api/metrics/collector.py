"""The metrics collector: samples every pool GPU and storage node periodically.

Two ways to read the GPUs, one way to store them (store_gpu_readings):

- **The agents** (GPUAAS_AGENT_PORT and its token set): every GPUAAS_METRICS_INTERVAL_SECONDS the
  winning caller reads each GPU node's gpuaas agent over HTTP (agent_http.py), concurrently, and
  stores the readings at once (collect_from_agents). No job is recorded: one log line per
  collection says what was read and which nodes did not answer, and why. Storage nodes run no
  agent: a collect_metrics job reads them every GPUAAS_STORAGE_METRICS_INTERVAL_SECONDS.
- **Ansible** (otherwise): every GPUAAS_METRICS_INTERVAL_SECONDS one collect_metrics job runs the
  collection's playbook of the same name over the nodes holding pool GPUs (gpu_info with metrics,
  through NVML) and the storage nodes (storage_info). Its result is stored when the job is
  finalised (store_collection). It is a job like any other: its events, its explanation and its
  processes are those of a job.

Both also carry each agent's tenant report (its ``tenants``: who holds each pool slot), from its
HTTP status or from its status file read by the playbook, stored by tenants.store_tenant_reports.

The housekeeper thread of every API process (jobs/worker.py) calls ``tick``; the shared schedule
rows make one of them start each period's collection (see models.Schedule).
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import logging

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ..config import Config
from ..db import session
from ..models import Gpu, Job, Node, Schedule
from ..states import GpuAssignment, JobStatus, NodeStatus, Operation
from .series import GPU_METRICS
from .agent_http import AgentError, Target, gpu_readings, read_agents, status_from_bytes, tenant_section
from .store import prune, record_gpu_samples, record_storage_sample
from .tenants import store_tenant_reports

log = logging.getLogger(__name__)
SCHEDULE = "metrics"
# With the agents' readings, the storage nodes' own period (the Ansible job).
STORAGE_SCHEDULE = "storage_metrics"
# The collect_metrics playbook's result holding each node's agent status file (roles/gpu_scan).
AGENT_STATUS_KEY = "gpuaas_agent_status"
# How many failing nodes a collection's log line names (the count is always there).
LOGGED_FAILURES = 10


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def claim_period(interval_seconds: float, at: dt.datetime | None = None, name: str = SCHEDULE) -> bool:
    """True for exactly one caller per period of schedule ``name``, across threads and processes."""
    db = session()
    at = at or now()
    if db.get(Schedule, name) is None:
        try:
            db.add(Schedule(name=name, next_run_at=at))
            db.commit()
        except IntegrityError:  # another process made it first
            db.rollback()
    won = db.execute(update(Schedule).where(Schedule.name == name, Schedule.next_run_at <= at)
                     .values(next_run_at=at + dt.timedelta(seconds=interval_seconds))).rowcount == 1
    db.commit()
    return won


def collection_targets() -> tuple[list[Node], list[Node]]:
    """The nodes to sample: those holding pool GPUs, and storage nodes; none that a mutating job holds
    (a reboot or a pool change would read as an outage)."""
    db = session()
    usable = (Node.status != NodeStatus.UNINITIALIZED, Node.busy_job_id.is_(None))
    gpu_nodes = db.scalars(select(Node).where(*usable, Node.id.in_(
        select(Gpu.node_id).where(Gpu.pool_id.is_not(None)))).order_by(Node.id)).all()
    storage_nodes = db.scalars(select(Node).where(*usable, Node.is_storage_service).order_by(Node.id)).all()
    return gpu_nodes, storage_nodes


def unfinished_collection() -> bool:
    return session().scalar(select(Job.id).where(Job.operation == Operation.COLLECT_METRICS.value,
                                                 Job.status.in_((JobStatus.PENDING, JobStatus.RUNNING)))
                            .limit(1)) is not None


def submit_collection(gpus: bool = True) -> Job | None:
    """Record the period's collect_metrics job; none while the last one is unfinished or nothing is to sample.
    Without ``gpus`` (the agents read them), the job reads the storage nodes alone."""
    db = session()
    if unfinished_collection():
        db.rollback()
        return None
    gpu_nodes, storage_nodes = collection_targets()
    if not gpus:
        gpu_nodes = []
    if not (gpu_nodes or storage_nodes):
        db.rollback()
        return None
    node_ids = sorted({node.id for node in (*gpu_nodes, *storage_nodes)})
    job = Job(created_at=now(), operation=Operation.COLLECT_METRICS.value, node_id=None, mutating=False,
              extravars={"hosts": node_ids, "targets": node_ids,
                         "vars": {"collect_metrics_gpu_hosts": [node.inventory_name for node in gpu_nodes],
                                  "collect_metrics_storage_hosts": [node.inventory_name for node in storage_nodes]}})
    db.add(job)
    db.commit()
    return job


def tick(config: Config):
    """Called often by every job worker: starts each collection whose period is due and unclaimed.

    Returns what it started (the Ansible path's job, or the agents' AgentCollection), or None.
    """
    if config.METRICS_INTERVAL_SECONDS <= 0:
        return None
    if not config.agent_http:
        if not claim_period(config.METRICS_INTERVAL_SECONDS):
            return None
        return _submitted(submit_collection())
    started = None
    if config.STORAGE_METRICS_INTERVAL_SECONDS > 0 and claim_period(config.STORAGE_METRICS_INTERVAL_SECONDS,
                                                                    name=STORAGE_SCHEDULE):
        started = _submitted(submit_collection(gpus=False))
    if claim_period(config.METRICS_INTERVAL_SECONDS):
        started = collect_from_agents(config)
    return started


def _submitted(job: Job | None) -> Job | None:
    if job is not None:
        log.info("metrics collection: job %s over %d node(s)", job.id, len(job.extravars["targets"]))
    return job


@dataclasses.dataclass
class AgentCollection:
    """What one collection from the agents did (also its log line)."""
    nodes: int
    readings: int
    failed: dict[str, str]  # inventory name -> why it did not answer
    skipped: list[str]  # still in flight at the deadline: left as they were
    seconds: float


def collect_from_agents(config: Config) -> AgentCollection:
    """Read every pool-GPU node's agent over HTTP and store what they said, as the Ansible path does.

    No transaction is held while the agents are read. The whole takes at most half the interval
    (reads still in flight then are left for the next period), so a collection never overlaps the
    next, and it never raises: a node's failure is that node's verdict.
    """
    db = session()
    gpu_nodes, _storage = collection_targets()
    targets = [Target(node.id, node.node_ip, config.AGENT_PORT) for node in gpu_nodes]
    names = {node.id: node.inventory_name for node in gpu_nodes}
    addresses = {target.node_id: str(target) for target in targets}
    db.rollback()  # nothing held while the network is read
    reads = read_agents(targets, config.AGENT_TOKEN, config.AGENT_CONNECT_TIMEOUT_SECONDS,
                        config.AGENT_READ_TIMEOUT_SECONDS, config.AGENT_CONCURRENCY,
                        deadline_seconds=config.METRICS_INTERVAL_SECONDS / 2)
    sampled_at = now()
    readings_by_node: dict[int, dict | None] = {node_id: gpu_readings(status) for node_id, status in reads.answered.items()}
    readings_by_node.update({node_id: None for node_id in reads.failed})
    stored = store_gpu_readings(readings_by_node, sampled_at)
    tenants_by_node = {node_id: tenant_section(status) for node_id, status in reads.answered.items()}
    store_tenant_reports(tenants_by_node, sampled_at, config.POOL_RESOURCE_PREFIX)
    prune(sampled_at, config.METRICS_RAW_RETENTION_DAYS, config.METRICS_MINUTE_RETENTION_DAYS,
          config.METRICS_ROLLUP_RETENTION_DAYS)
    db.commit()
    result = AgentCollection(nodes=len(targets), readings=stored,
                             failed={names[node_id]: reason for node_id, reason in sorted(reads.failed.items())},
                             skipped=[names[node_id] for node_id in reads.skipped], seconds=reads.seconds)
    if targets:
        failures = "; ".join(f"{names[node_id]} ({addresses[node_id]}): {reason}"
                             for node_id, reason in sorted(reads.failed.items())[:LOGGED_FAILURES])
        more = len(reads.failed) - LOGGED_FAILURES
        (log.warning if reads.failed or reads.skipped else log.info)(
            "metrics collection (agents): %d node(s) in %.2f s, %d answered, %d GPU reading(s) stored, "
            "%d not answering%s%s", len(targets), reads.seconds, len(reads.answered), stored, len(reads.failed),
            f": {failures}" + (f"; and {more} more" if more > 0 else "") if reads.failed else "",
            f"; {len(reads.skipped)} still in flight at the deadline, left as they were: "
            f"{', '.join(result.skipped[:LOGGED_FAILURES])}" if reads.skipped else "")
    return result


def store_gpu_readings(readings_by_node: dict[int, dict | None], sampled_at: dt.datetime) -> int:
    """Store the pool GPUs' readings of the nodes read, and say which cannot be used now (UNAVAILABLE) or again.

    ``readings_by_node``: node id -> {uuid: readings} of the GPUs the node reported healthy, or None
    when the node did not answer. A pool GPU is UNAVAILABLE when its node did not answer or no
    longer reports it; it is ASSIGNED again once it is read. A node that a mutating job took since
    the collection started (a pool change, a reboot) is left to that job. Returns the readings stored.
    """
    db = session()
    samples = []
    # Two queries for all the nodes (a query per node was most of a 30-node collection's CPU).
    free = db.scalars(select(Node.id).where(Node.id.in_(list(readings_by_node)), Node.busy_job_id.is_(None))).all()
    for gpu in db.scalars(select(Gpu).where(Gpu.node_id.in_(free), Gpu.pool_id.is_not(None))
                          .order_by(Gpu.node_id, Gpu.index)).all():
        reading = (readings_by_node[gpu.node_id] or {}).get(gpu.uuid)
        if reading is None:
            if gpu.assignment_status is GpuAssignment.ASSIGNED:
                gpu.assignment_status = GpuAssignment.UNAVAILABLE
            continue
        if gpu.assignment_status is GpuAssignment.UNAVAILABLE:
            gpu.assignment_status = GpuAssignment.ASSIGNED
        samples.append({"gpu_id": gpu.id, "pool_id": gpu.pool_id, "sampled_at": sampled_at,
                        **{name: float(reading[name]) for name in GPU_METRICS}})
    record_gpu_samples(samples)
    return len(samples)


def store_collection(job: Job, artifact_data: dict, node_succeeded: dict[int, bool], config: Config) -> None:
    """Store what the collect_metrics job read (store_gpu_readings: the agents' path stores the same way)."""
    db = session()
    sampled_at = job.finished_at or now()
    gpu_reports = artifact_data.get("gpuaas_gpu_scan", {})
    agent_reports = artifact_data.get(AGENT_STATUS_KEY, {})
    storage_reports = artifact_data.get("gpuaas_storage_metrics", {})
    gpu_hosts = set(job.extravars.get("vars", {}).get("collect_metrics_gpu_hosts", []))
    readings_by_node: dict[int, dict | None] = {}
    tenants_by_node: dict[int, dict | None] = {}
    for node_id, succeeded in node_succeeded.items():
        node = db.get(Node, node_id)
        if node is None:
            continue
        if succeeded and node.inventory_name in storage_reports:
            record_storage_sample(node.id, sampled_at, storage_reports[node.inventory_name])
        if node.inventory_name not in gpu_hosts:
            continue
        report = gpu_reports.get(node.inventory_name) if succeeded else None
        readings_by_node[node.id] = None if report is None else {
            entry["uuid"]: entry["metrics"] for entry in report.get("gpus", [])
            if entry.get("status") == "ok" and "metrics" in entry}
        tenants_by_node[node.id] = _agent_tenants(node, agent_reports.get(node.inventory_name)) if succeeded else None
    store_gpu_readings(readings_by_node, sampled_at)
    store_tenant_reports(tenants_by_node, sampled_at, config.POOL_RESOURCE_PREFIX)
    prune(sampled_at, config.METRICS_RAW_RETENTION_DAYS, config.METRICS_MINUTE_RETENTION_DAYS,
          config.METRICS_ROLLUP_RETENTION_DAYS)
    # The collections' own job records (and their events) go with the raw samples they produced.
    db.execute(delete(Job).where(Job.operation == Operation.COLLECT_METRICS.value, Job.id != job.id,
                                 Job.finished_at < sampled_at - dt.timedelta(days=config.METRICS_RAW_RETENTION_DAYS)))


def _agent_tenants(node: Node, slurped) -> dict | None:
    """The tenant section of the agent's status file as the playbook read it (base64, from
    ansible.builtin.slurp), checked as an HTTP reply is; None when there was none to read."""
    if not isinstance(slurped, dict) or not isinstance(slurped.get("content"), str):
        return None
    try:
        return tenant_section(status_from_bytes(base64.b64decode(slurped["content"], validate=True)))
    except (AgentError, ValueError) as refusal:
        log.warning("node %s: the agent's status file: %s", node.inventory_name, refusal)
        return None
