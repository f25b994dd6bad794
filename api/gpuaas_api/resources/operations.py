"""Node operations: each one records a job that runs the collection's playbook."""
from __future__ import annotations

import uuid

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import func, select

from ..db import session
from ..errors import ApiError, conflict, field_error, not_found
from ..jobs.submit import submit
from ..jobs.waiting import wait_until_finished
from ..metrics.store import latest_storage_sample
from ..models import Cluster, Job, JobEvent, Node, Scan
from ..schemas import (ClusterSchema, ControllerQuerySchema, JobSchema, JobWaitQuerySchema, JoinSchema,
                       LeaveQuerySchema, NodeIdAltQuerySchema, NodeIdQuerySchema, OperationReplySchema,
                       PageQuerySchema, ScanQuerySchema, ScanSchema)
from ..states import ClusterStatus, JobStatus, Operation
from .nodes import get_node

blp = Blueprint("operations", __name__, description="Node operations, scans, logs and jobs")


def started(job: Job, what: str, node: Node) -> dict:
    return {"success": True, "message": f"{what} of node {node.id} started (job {job.id})", "job_id": job.id}


def active_cluster_of(node: Node) -> Cluster:
    cluster = session().scalar(select(Cluster).where(Cluster.region_id == node.region_id,
                                                     Cluster.status != ClusterStatus.INACTIVE))
    if cluster is None or cluster.status is not ClusterStatus.ACTIVE:
        raise conflict(f"region {node.region_id} has no active GPUaaS cluster; enable one on a controller first")
    return cluster


def _simple(operation: Operation, what: str, arguments, query_key: str, extra=None):
    node = get_node(arguments[query_key])
    return started(submit(operation, node, extra), what, node)


@blp.route("/gpuaas/node/init")
class NodeInit(MethodView):
    @blp.arguments(NodeIdQuerySchema, location="query")
    @blp.response(200, OperationReplySchema)
    def get(self, args):
        """Initialise a node (playbook node_init)."""
        return _simple(Operation.INIT, "initialisation", args, "gpuaas_node_id")


@blp.route("/gpuaas/node/deinit")
class NodeDeinit(MethodView):
    @blp.arguments(NodeIdQuerySchema, location="query")
    @blp.response(200, OperationReplySchema)
    def get(self, args):
        """Deinitialise a node (playbook node_deinit): it ends as freshly added."""
        node = get_node(args["gpuaas_node_id"])
        if node.is_controller_node and node.joined:
            members = session().scalar(select(func.count(Node.id)).where(Node.cluster_id == node.cluster_id,
                                                                         Node.id != node.id, Node.joined))
            if members:
                raise conflict(f"node {node.id} controls a cluster with {members} joined worker(s); "
                               "make them leave first")
        return started(submit(Operation.DEINIT, node), "deinitialisation", node)


@blp.route("/gpuaas/node/reboot")
class NodeReboot(MethodView):
    @blp.arguments(NodeIdAltQuerySchema, location="query")
    @blp.response(200, OperationReplySchema)
    def post(self, args):
        """Reboot a node and wait for it (playbook node_reboot); a node in a cluster is drained first
        on its controller, and uncordoned once it is Ready again."""
        node = get_node(args["node_id"])
        cluster = session().get(Cluster, node.cluster_id) if node.joined and node.cluster_id else None
        if cluster is None or cluster.controller_node_id is None:
            return started(submit(Operation.REBOOT, node), "reboot", node)
        controller = get_node(cluster.controller_node_id)
        extra_hosts = [controller.id] if controller.id != node.id else []
        job = submit(Operation.REBOOT, node, cluster_id=cluster.id, extra_hosts=extra_hosts,
                     extravars={"node_reboot_controller": controller.name})
        return started(job, "reboot", node)


@blp.route("/gpuaas/node/test_conn")
class NodeTestConn(MethodView):
    @blp.arguments(NodeIdQuerySchema, location="query")
    @blp.response(200, OperationReplySchema)
    def get(self, args):
        """Check SSH, then Python (playbook test_conn); the job's result names a failed step."""
        return _simple(Operation.TEST_CONN, "connection test", args, "gpuaas_node_id")


@blp.route("/gpuaas/node/<int:node_id>/disable")
class NodeDisable(MethodView):
    @blp.response(200, OperationReplySchema)
    def post(self, node_id):
        """Disable the node's GPUaaS services (playbook node_disable)."""
        node = get_node(node_id)
        return started(submit(Operation.DISABLE, node), "disabling", node)


@blp.route("/gpuaas/enable")
class Enable(MethodView):
    @blp.arguments(ControllerQuerySchema, location="query")
    @blp.response(200)
    def post(self, args):
        """Set up the region's cluster on this controller (playbook gpuaas_enable). Returns {success, gpuaas_id}."""
        node = get_node(args["controller_node_id"])
        if not node.is_controller_node:
            raise field_error("controller_node_id", f"node {node.id} is not a controller node", 409)
        db = session()
        existing = db.scalar(select(Cluster).where(Cluster.region_id == node.region_id,
                                                   Cluster.status != ClusterStatus.INACTIVE))
        if existing is not None and existing.status is not ClusterStatus.ERROR_WHILE_ENABLING:
            raise conflict(f"region {node.region_id} already has GPUaaS cluster {existing.id} "
                           f"({existing.status.value})")
        cluster = existing or Cluster(region_id=node.region_id)
        cluster.controller_node_id, cluster.status = node.id, ClusterStatus.ENABLE_SETTING_UP
        db.add(cluster)
        db.flush()
        job = submit(Operation.ENABLE, node, cluster_id=cluster.id)
        return {"success": True, "gpuaas_id": cluster.id, "job_id": job.id,
                "message": f"enabling GPUaaS cluster {cluster.id} on node {node.id} (job {job.id})"}


@blp.route("/gpuaas/node/join")
class NodeJoin(MethodView):
    @blp.arguments(JoinSchema)
    @blp.response(200, OperationReplySchema)
    def post(self, body):
        """Join a worker to its region's cluster. Body: {joinee_node_id, region_id} or {gpuaas_id, gpuaas_node_id}."""
        node_id = body.get("joinee_node_id") or body.get("gpuaas_node_id")
        if node_id is None:
            raise field_error("joinee_node_id", "give joinee_node_id (or gpuaas_node_id)")
        node = get_node(node_id)
        if "region_id" in body and body["region_id"] != node.region_id:
            raise field_error("region_id", f"node {node.id} is in region {node.region_id}", 409)
        cluster = active_cluster_of(node)
        if "gpuaas_id" in body and body["gpuaas_id"] != cluster.id:
            raise field_error("gpuaas_id", f"node {node.id}'s region has cluster {cluster.id}", 409)
        controller = get_node(cluster.controller_node_id)
        job = submit(Operation.JOIN, node, cluster_id=cluster.id, extra_hosts=[controller.id],
                     extravars={"cluster_join_controller": controller.name})
        return started(job, "join", node)


@blp.route("/gpuaas/node/leave")
class NodeLeave(MethodView):
    @blp.arguments(LeaveQuerySchema, location="query")
    @blp.response(200, OperationReplySchema)
    def post(self, args):
        """Drain and delete the worker on the controller, then reset it; `ungraceful=true` for a worker that is down."""
        node = get_node(args["node_id"])
        if not node.joined or node.cluster_id is None:
            raise conflict(f"node {node.id} is not in a cluster")
        cluster = session().get(Cluster, node.cluster_id)
        if cluster.controller_node_id == node.id:
            raise conflict(f"node {node.id} is the cluster's controller; deinitialise it instead")
        controller = get_node(cluster.controller_node_id)
        job = submit(Operation.LEAVE, node, cluster_id=cluster.id, extra_hosts=[controller.id],
                     extravars={"cluster_leave_controller": controller.name,
                                "cluster_leave_ungraceful": args["ungraceful"]})
        return started(job, "leave", node)


def _start_scan(kind: Operation, node_id: int) -> Scan:
    node = get_node(node_id)
    job = submit(kind, node)
    scan = Scan(request_id=str(uuid.uuid4()), kind=kind.value.replace("scan_", ""), node_id=node.id, job_id=job.id,
                status="processing")
    session().add(scan)
    session().commit()
    return scan


def _scan_status(scan_id: str, kind: str) -> Scan:
    scan = session().scalar(select(Scan).where(Scan.request_id == scan_id, Scan.kind == kind))
    if scan is None:
        raise not_found(f"{kind} scan", scan_id)
    return scan


for _kind in (Operation.SCAN_GPUS, Operation.SCAN_NPUS, Operation.SCAN_RESOURCES):
    def _make(kind: Operation):
        short = kind.value.replace("scan_", "")

        class Start(MethodView):
            @blp.arguments(NodeIdQuerySchema, location="query")
            @blp.response(200, ScanSchema)
            def get(self, args):
                return _start_scan(kind, args["gpuaas_node_id"])

        class Status(MethodView):
            @blp.arguments(ScanQuerySchema, location="query")
            @blp.response(200, ScanSchema)
            def get(self, args):
                return _scan_status(args["scan_id"], short)

        Start.get.__doc__ = f"Start a {short} scan; returns its scan_id (status processing)."
        Status.get.__doc__ = f"A {short} scan's status: processing, completed (with resources) or failed."
        Start.__name__, Status.__name__ = f"Scan{short.title()}", f"Scan{short.title()}Status"
        blp.route(f"/gpuaas/node/{kind.value}")(Start)
        blp.route(f"/gpuaas/node/{kind.value}/status")(Status)

    _make(_kind)


@blp.route("/gpuaas/node/<int:node_id>/storage_metrics")
class NodeStorageMetrics(MethodView):
    @blp.response(200)
    def get(self, node_id):
        """The node's latest storage metrics (volume group, filesystems), and a fresh collection started.

        The latest reading is the newest of this endpoint's own refreshes and the metrics collector's.
        """
        node = get_node(node_id)
        db = session()
        latest = latest_storage_sample(node.id)
        running = db.scalar(select(Job.id).where(Job.node_id == node.id,
                                                 Job.operation == Operation.STORAGE_METRICS.value,
                                                 Job.status.in_([JobStatus.PENDING, JobStatus.RUNNING])).limit(1))
        job_id = running or submit(Operation.STORAGE_METRICS, node).id
        return {"node_id": node.id, "collected_at": latest.sampled_at.isoformat() if latest else None,
                "metrics": latest.data if latest else None, "refresh_job_id": job_id}


@blp.route("/gpuaas/node/<int:node_id>/logs")
class NodeLogs(MethodView):
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200)
    def get(self, args, node_id):
        """The node's job events, oldest first (job, then event counter), a page at a time, with the total."""
        get_node(node_id)
        db = session()
        total = db.scalar(select(func.count(JobEvent.id)).where(JobEvent.node_id == node_id))
        rows = db.scalars(select(JobEvent).where(JobEvent.node_id == node_id)
                          .order_by(JobEvent.job_id, JobEvent.counter)
                          .offset((args["page"] - 1) * args["per_page"]).limit(args["per_page"])).all()
        items = [{"job_id": e.job_id, "counter": e.counter, "event": e.event, "host": e.host, "task": e.task,
                  "stdout": e.stdout, "created_at": e.created_at.isoformat() if e.created_at else None}
                 for e in rows]
        return {"items": items, "total": total, "page": args["page"], "per_page": args["per_page"]}


@blp.route("/jobs/<int:job_id>")
class JobById(MethodView):
    @blp.arguments(JobWaitQuerySchema, location="query")
    @blp.response(200, JobSchema)
    def get(self, args, job_id):
        """A job; with `wait`, answered once it has finished or `wait` seconds have passed (a long poll)."""
        db = session()
        job = db.get(Job, job_id)
        if job is None:
            raise not_found("job", job_id)
        if args["wait"] and not job.status.finished:
            db.rollback()  # hold no connection or transaction while waiting
            wait_until_finished(job_id, args["wait"])
            job = db.get(Job, job_id, populate_existing=True)
            if job is None:
                raise not_found("job", job_id)
        return job


@blp.route("/jobs/<int:job_id>/cancel")
class JobCancel(MethodView):
    @blp.response(202, JobSchema)
    def post(self, job_id):
        """Ask a pending or running job to stop; the worker ends its whole process tree."""
        db = session()
        job = db.get(Job, job_id)
        if job is None:
            raise not_found("job", job_id)
        if job.status.finished:
            raise ApiError(409, f"job {job_id} has already finished ({job.status.value})")
        job.cancel_requested = True  # stored before anything is signalled
        db.commit()
        return job


@blp.route("/gpuaas")
class Clusters(MethodView):
    @blp.response(200, ClusterSchema(many=True))
    def get(self):
        """Every GPUaaS cluster."""
        return session().scalars(select(Cluster).order_by(Cluster.id)).all()


@blp.route("/gpuaas/<int:gpuaas_id>")
class ClusterById(MethodView):
    @blp.response(200, ClusterSchema)
    def get(self, gpuaas_id):
        cluster = session().get(Cluster, gpuaas_id)
        if cluster is None:
            raise not_found("GPUaaS cluster", gpuaas_id)
        return cluster

    @blp.response(200)
    def delete(self, gpuaas_id):
        """Tear a cluster down once no node is in it (workers left, controller deinitialised)."""
        db = session()
        cluster = db.get(Cluster, gpuaas_id)
        if cluster is None:
            raise not_found("GPUaaS cluster", gpuaas_id)
        members = db.scalar(select(func.count(Node.id)).where(Node.cluster_id == gpuaas_id))
        if members:
            raise conflict(f"GPUaaS cluster {gpuaas_id} still has {members} node(s); make them leave first")
        cluster.status = ClusterStatus.INACTIVE
        db.commit()
        return {"success": True, "message": f"GPUaaS cluster {gpuaas_id} torn down"}
