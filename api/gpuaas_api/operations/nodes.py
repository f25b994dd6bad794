"""The node operations (init, deinit, enable, join, leave, disable, reboot, test_conn): the node's
state machine (states.NODE_TRANSITIONS) at each moment of their jobs, and what they report."""
from __future__ import annotations

import logging

from sqlalchemy import select, update

from .. import kubernetes_names, node_reports, validation
from ..agent_wheel import agent_source_vars
from ..db import session
from ..jobs.claims import wake_a_worker
from ..jobs.holds import take_nodes
from ..jobs.hooks import OperationHooks, Outcome, Turn, TurnRefused, register
from ..jobs.submit import new_job
from ..jobs.submit import submit as submit_job
from ..models import Cluster, Job, Node
from ..states import NODE_TRANSITIONS, ClusterStatus, JobStatus, Operation, refusal
from .preconditions import refusal_beyond_status

log = logging.getLogger(__name__)


def submit(operation: Operation, node: Node, extravars: dict | None = None, cluster_id: int | None = None,
           extra_hosts: list[int] | None = None) -> Job:
    """Record (committed) a job for ``operation`` on ``node``; Refused when the node's state forbids it.

    A mutating operation on a node that another job holds (or waits for) is queued behind it
    (jobs/queue.py): accepted like any other, unless the node's state forbids it whatever those
    jobs do. The job's ``queued_behind`` (not stored) names the job it waits for, or is None.
    """
    job = new_job(operation.value, mutating=NODE_TRANSITIONS[operation].mutating, node_id=node.id, cluster_id=cluster_id,
                  extravars={"hosts": [node.id] + list(extra_hosts or []), "vars": extravars or {}})
    job = submit_job(job, [node.id])
    session().commit()
    wake_a_worker()
    return job


def statuses_after(status, ahead: list[Job], holder: int | None) -> set:
    """Every status a node in ``status`` may be in once the jobs ``ahead`` have ended.

    The job that holds the node (``holder``) has passed its check: it ends either way. A job still
    queued may also be refused at its turn, leaving the node as it was.
    """
    possible = {status}
    for job in ahead:
        transition = NODE_TRANSITIONS.get(Operation(job.operation))
        if transition is None:
            continue  # a pool change leaves the node's status as it is
        started = job.id == holder or job.status is JobStatus.RUNNING
        after = set()
        for before in possible:
            if not started:
                after.add(before)  # refused at its turn
            if started or before in transition.allowed_from:
                after |= {transition.on_success or before, transition.on_failure or before}
        possible = after
    return possible


def refusal_whatever_happens(operation: Operation, status, ahead: list[Job], holder: int | None) -> str | None:
    """Why ``operation`` can never start behind ``ahead``: refused from every status they may leave."""
    if all(refusal(operation, possible) for possible in statuses_after(status, ahead, holder)):
        return refusal(operation, status)
    return None


class NodeOperation(OperationHooks):
    """A node operation's moments: its node's state machine, and the facts its node reports."""

    reported_keys = ("gpuaas_gpu_scan", "gpuaas_npu_scan", "gpuaas_storage_metrics", "gpuaas_node_facts", "gpuaas_cluster",
                     "gpuaas_node_volume_groups")

    def __init__(self, operation: Operation):
        self.operation = operation
        self.transition = NODE_TRANSITIONS[operation]

    def accepted(self, job: Job, ahead: list[Job], holds: bool) -> str | None:
        node = session().get(Node, job.node_id)
        holder = node.busy_job_id if node.busy_job_id != job.id else None
        reason = (refusal_whatever_happens(self.operation, node.status, ahead, holder) if ahead
                  else refusal(self.operation, node.status))
        if reason:
            return f"node {node.id}: {reason}"
        if holds:
            self.start_running(node)
        return None

    def start_running(self, node: Node) -> None:
        if self.transition.running is not None:
            session().execute(update(Node).where(Node.id == node.id).values(status=self.transition.running))

    def its_turn(self, job: Job) -> Turn | TurnRefused:
        node = session().get(Node, job.node_id)
        reason = refusal(self.operation, node.status)
        if reason:
            return TurnRefused(f"node {node.id}: {reason}")
        reason = refusal_beyond_status(self.operation, node, job.cluster_id)
        if reason:
            return TurnRefused(reason)
        if not take_nodes(job, [node.id]):
            return Turn.WAITS
        if self.transition.running is not None:
            node.status = self.transition.running
        return Turn.STARTED

    def failure_explanation(self, job: Job, artifact: dict) -> str | None:
        for host, result in artifact.get("gpuaas_conn_check", {}).items():
            if result.get("failed_step"):
                return f"{host}: step {result['failed_step']} failed"
        return None

    def run_vars(self, job: Job, config) -> dict:
        return agent_source_vars(job.operation, config)

    def finished(self, outcome: Outcome, config) -> None:
        name_nodes_in_kubernetes(outcome.job, outcome.node, outcome.artifact)
        record_node_facts(outcome.job, outcome.node, outcome.artifact)
        if outcome.node is not None:
            self.move_node(outcome)

    def move_node(self, outcome: Outcome) -> None:
        target = self.transition.on_success if outcome.succeeded else self.transition.on_failure
        if target is not None:
            outcome.node.status = target


def host_report(artifact: dict, key: str, node: Node | None):
    return (artifact.get(key) or {}).get(node.inventory_name) if node is not None else None


class Init(NodeOperation):
    """A storage node registered without a volume group gets the one its init chose (roles/node_init:
    the host's largest); its later jobs are given it (jobs/inventory.py). One it has is never replaced."""

    def refused_report(self, job: Job, node: Node | None, artifact: dict) -> str | None:
        reported = host_report(artifact, "gpuaas_node_volume_groups", node)
        if reported is not None:
            try:
                node_reports.volume_group_name(reported)
            except node_reports.InvalidNodeReport as refusal_:
                return str(refusal_)
        return None

    def finished(self, outcome: Outcome, config) -> None:
        reported = host_report(outcome.artifact, "gpuaas_node_volume_groups", outcome.node)
        if reported is not None and outcome.node.is_storage_service and not outcome.node.volume_group:
            outcome.node.volume_group = node_reports.volume_group_name(reported)  # checked: refused_report
        super().finished(outcome, config)


class Enable(NodeOperation):
    """The controller's enable makes its region's cluster active, with the facts it reported."""

    def refused_report(self, job: Job, node: Node | None, artifact: dict) -> str | None:
        if "gpuaas_cluster" in artifact:
            try:
                node_reports.cluster_facts(artifact["gpuaas_cluster"])
            except node_reports.InvalidNodeReport as refusal_:
                return str(refusal_)
        return None

    def move_node(self, outcome: Outcome) -> None:
        super().move_node(outcome)
        cluster = session().get(Cluster, outcome.job.cluster_id) if outcome.job.cluster_id else None
        if cluster is None:
            return
        if not outcome.succeeded:
            cluster.status = ClusterStatus.ERROR_WHILE_ENABLING
            return
        facts = node_reports.cluster_facts(outcome.artifact["gpuaas_cluster"]) if "gpuaas_cluster" in outcome.artifact else {}
        cluster.status = ClusterStatus.ACTIVE
        cluster.facts = facts  # checked before (refused_report): this cannot refuse now
        cluster.k8s_api_server_address = facts.get("api_server_address")
        cluster.k8s_api_server_port = facts.get("api_server_port")
        outcome.node.cluster_id, outcome.node.joined = cluster.id, True

    def ended_unstarted(self, job: Job) -> None:
        """An enable's cluster, set up when the request came, shows that the enable failed (and may be enabled again)."""
        if job.cluster_id is not None:
            session().execute(update(Cluster).where(Cluster.id == job.cluster_id,
                                                    Cluster.status == ClusterStatus.ENABLE_SETTING_UP)
                              .values(status=ClusterStatus.ERROR_WHILE_ENABLING))


class Join(NodeOperation):
    def move_node(self, outcome: Outcome) -> None:
        super().move_node(outcome)
        if outcome.succeeded:
            outcome.node.cluster_id, outcome.node.joined = outcome.job.cluster_id, True


class Leave(NodeOperation):
    def move_node(self, outcome: Outcome) -> None:
        super().move_node(outcome)
        if outcome.succeeded:
            outcome.node.joined, outcome.node.cluster_id, outcome.node.disabled = False, None, False


class Deinit(Leave):
    def move_node(self, outcome: Outcome) -> None:
        if outcome.succeeded:  # a controller that is reset takes its cluster down with it
            for controlled in session().scalars(select(Cluster).where(Cluster.controller_node_id == outcome.node.id,
                                                                      Cluster.status != ClusterStatus.INACTIVE)):
                controlled.status = ClusterStatus.INACTIVE
        super().move_node(outcome)


class Disable(NodeOperation):
    def move_node(self, outcome: Outcome) -> None:
        super().move_node(outcome)
        if outcome.succeeded:
            outcome.node.disabled = True


class Reboot(NodeOperation):
    def run_vars(self, job: Job, config) -> dict:
        if "node_reboot_serial" in config.ANSIBLE_EXTRA_VARS:
            return super().run_vars(job, config)
        return {**super().run_vars(job, config), "node_reboot_serial": config.REBOOT_SERIAL}  # a batch's nodes down at once


def name_nodes_in_kubernetes(job: Job, node: Node | None, artifact_data: dict) -> None:
    """At a node's first contact that read its hostname (test_conn, node_init), derive and store
    its Kubernetes name; a stored name never changes."""
    hostnames = {host: result.get("hostname") for host, result in artifact_data.get("gpuaas_conn_check", {}).items()}
    hostnames.update(artifact_data.get("gpuaas_node_hostnames", {}))
    if not any(hostnames.values()):
        return
    db = session()
    for named in nodes_of(job, node):
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


def nodes_of(job: Job, node: Node | None) -> list[Node | None]:
    return [node] if node is not None else [session().get(Node, node_id) for node_id in job.extravars.get("targets", [])]


# What roles/node_facts reports per host (node init and every scan), as the node's own fields.
NODE_FACTS = ("cpu_model", "cores", "total_memory_in_mb", "total_disk_in_mb")
MAX_FACT = validation.MAX_INT32  # the columns are 32-bit integers (2 PiB in MiB)


def record_node_facts(job: Job, node: Node | None, artifact_data: dict) -> None:
    """Store the hardware facts the job gathered. A fact the host could not tell (null) keeps its last
    known value: a partial gathering does not erase what an earlier one found."""
    reported = artifact_data.get("gpuaas_node_facts")
    if not reported:
        return
    for gathered in nodes_of(job, node):
        facts = reported.get(gathered.inventory_name) if gathered is not None else None
        if not isinstance(facts, dict):
            continue
        for name in NODE_FACTS:
            value = node_fact(name, facts.get(name))
            if value is not None:
                setattr(gathered, name, value)


def node_fact(name: str, value):
    """A reported fact as the column holds it, or None (kept as it was) for what is not one: a host's
    report is data from the node, and a bad value must not fail the finalisation of a job that only
    gathered it on the way (a scan refuses it: refused_report)."""
    if name == "cpu_model":
        try:
            return node_reports.cpu_model(value)
        except node_reports.InvalidNodeReport:
            log.warning("a node reported a CPU model that is not one; the last known one is kept")
            return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_FACT:
        return value
    return None


HOOKS = {Operation.INIT: Init, Operation.DEINIT: Deinit, Operation.ENABLE: Enable, Operation.JOIN: Join,
         Operation.LEAVE: Leave, Operation.DISABLE: Disable, Operation.REBOOT: Reboot, Operation.TEST_CONN: NodeOperation}
# The node operations whose jobs share one playbook run when they come together (as Ansible runs
# them: one play, many hosts). Each job still holds its own node, and is finalised from its own
# host's result. Enable makes a cluster (one controller each) and runs alone.
SHARE_RUNS = frozenset({Operation.INIT, Operation.DEINIT, Operation.JOIN, Operation.LEAVE, Operation.DISABLE,
                        Operation.REBOOT})


def register_hooks() -> None:
    for operation, hooks in HOOKS.items():
        instance = hooks(operation)
        instance.shares_runs = operation in SHARE_RUNS
        register(operation.value, instance)
