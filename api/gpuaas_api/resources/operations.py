"""Node operations: each one records a job that runs the collection's playbook."""
from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import func, select

from ..access import changes, reads
from ..db import session
from ..clusters import cluster_by_id
from ..domain_errors import Conflict, Invalid, Refused, not_found
from ..validation import MAX_ID
from ..jobs.queue import cancel_waiting
from ..jobs.waiting import wait_until_finished
from ..metrics.store import latest_storage_sample
from ..operations.nodes import submit
from ..operations.preconditions import refusal_beyond_status
from ..models import Cluster, Gpu, Job, JobEvent, Node, Scan
from ..rendering import render_cluster, render_cluster_gpu, render_job, render_scan, timestamp
from ..schemas import (ClusterGpuListSchema, ClusterSchema, ControllerQuerySchema, EnableReplySchema, JobSchema,
                       JobWaitQuerySchema, JoinSchema, LeaveQuerySchema, LogPageSchema, NodeIdAltQuerySchema,
                       NodeIdQuerySchema, OperationReplySchema, PageQuerySchema, ScanQuerySchema, ScanSchema,
                       StorageMetricsSchema, SuccessSchema)
from ..states import SCAN_KINDS, ClusterStatus, JobStatus, Operation
from ..reply_cache import json_reply
from .nodes import get_node
from .regions import remove_torn_down_clusters

blp = Blueprint("operations", __name__, description="Node operations, scans, logs and jobs")


def started(job: Job, what: str, node: Node) -> dict:
    if getattr(job, "already_pending", False):
        return {"success": True, "job_id": job.id,
                "message": f"{what} of node {node.id} already pending as job {job.id} (the same request)"}
    behind = getattr(job, "queued_behind", None)
    if behind is not None:
        return {"success": True, "job_id": job.id,
                "message": f"{what} of node {node.id} queued behind job {behind} (job {job.id})"}
    return {"success": True, "message": f"{what} of node {node.id} started (job {job.id})", "job_id": job.id}


def active_cluster_of(node: Node) -> Cluster:
    cluster = session().scalar(select(Cluster).where(Cluster.region_id == node.region_id,
                                                     Cluster.status != ClusterStatus.INACTIVE))
    if cluster is None or cluster.status is not ClusterStatus.ACTIVE:
        raise Refused(f"region {node.region_id} has no active GPUaaS cluster; enable one on a controller first")
    return cluster


def _check_beyond_status(operation: Operation, node: Node, cluster_id: int | None = None, field: str | None = None):
    """409 for what the operation needs beyond the node's status (operations/preconditions.py)."""
    reason = refusal_beyond_status(operation, node, cluster_id)
    if reason:
        raise Refused(reason, field)


def _simple(operation: Operation, what: str, arguments, query_key: str, extra=None):
    node = get_node(arguments[query_key])
    return started(submit(operation, node, extra), what, node)


@blp.route("/gpuaas/node/init")
class NodeInit(MethodView):
    @blp.arguments(NodeIdQuerySchema, location="query")
    @blp.response(200, OperationReplySchema)
    @changes
    def get(self, args):
        """Initialise a node (playbook node_init)."""
        return _simple(Operation.INIT, "initialisation", args, "gpuaas_node_id")


@blp.route("/gpuaas/node/deinit")
class NodeDeinit(MethodView):
    @blp.arguments(NodeIdQuerySchema, location="query")
    @blp.response(200, OperationReplySchema)
    @changes
    def get(self, args):
        """Deinitialise a node (playbook node_deinit): it ends as freshly added."""
        node = get_node(args["gpuaas_node_id"])
        _check_beyond_status(Operation.DEINIT, node)
        return started(submit(Operation.DEINIT, node), "deinitialisation", node)


@blp.route("/gpuaas/node/reboot")
class NodeReboot(MethodView):
    @blp.arguments(NodeIdAltQuerySchema, location="query")
    @blp.response(200, OperationReplySchema)
    @changes
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
                     extravars={"node_reboot_controller": controller.inventory_name})
        return started(job, "reboot", node)


@blp.route("/gpuaas/node/test_conn")
class NodeTestConn(MethodView):
    @blp.arguments(NodeIdQuerySchema, location="query")
    @blp.response(200, OperationReplySchema)
    @changes
    def get(self, args):
        """Check SSH, then Python (playbook test_conn); the job's result names a failed step."""
        return _simple(Operation.TEST_CONN, "connection test", args, "gpuaas_node_id")


@blp.route("/gpuaas/node/<id:node_id>/disable")
class NodeDisable(MethodView):
    @blp.response(200, OperationReplySchema)
    @changes
    def post(self, node_id):
        """Disable the node's GPUaaS services (playbook node_disable)."""
        node = get_node(node_id)
        return started(submit(Operation.DISABLE, node), "disabling", node)


@blp.route("/gpuaas/enable")
class Enable(MethodView):
    @blp.arguments(ControllerQuerySchema, location="query")
    @blp.response(200, EnableReplySchema)
    @changes
    def post(self, args):
        """Set up the region's cluster on this node (playbook gpuaas_enable). Returns {success, gpuaas_id}.

        A node not flagged as a controller becomes the controller (clients call this for the node the
        operator picked), unless it is a member of another cluster.
        """
        node = get_node(args["controller_node_id"])
        db = session()
        _check_beyond_status(Operation.ENABLE, node, field="controller_node_id")
        existing = db.scalar(select(Cluster).where(Cluster.region_id == node.region_id,
                                                   Cluster.status != ClusterStatus.INACTIVE))
        if existing is not None and existing.status is not ClusterStatus.ERROR_WHILE_ENABLING:
            raise Refused(f"region {node.region_id} already has GPUaaS cluster {existing.id} "
                          f"({existing.status.value})")
        cluster = existing or Cluster(region_id=node.region_id)
        node.is_controller_node = True
        cluster.controller_node_id, cluster.status = node.id, ClusterStatus.ENABLE_SETTING_UP
        db.add(cluster)
        db.flush()
        job = submit(Operation.ENABLE, node, cluster_id=cluster.id)
        return {"success": True, "gpuaas_id": cluster.id, "job_id": job.id,
                "message": started(job, f"enabling of GPUaaS cluster {cluster.id}", node)["message"]}


@blp.route("/gpuaas/node/join")
class NodeJoin(MethodView):
    @blp.arguments(JoinSchema)
    @blp.response(200, OperationReplySchema)
    @changes
    def post(self, body):
        """Join a worker to its region's cluster. Body: {joinee_node_id, region_id} or {gpuaas_id, gpuaas_node_id}."""
        node_id = body.get("joinee_node_id") or body.get("gpuaas_node_id")
        if node_id is None:
            raise Invalid("give joinee_node_id (or gpuaas_node_id)", "joinee_node_id")
        node = get_node(node_id)
        if "region_id" in body and body["region_id"] != node.region_id:
            raise Conflict(f"node {node.id} is in region {node.region_id}", "region_id")
        cluster = active_cluster_of(node)
        if "gpuaas_id" in body and body["gpuaas_id"] != cluster.id:
            raise Conflict(f"node {node.id}'s region has cluster {cluster.id}", "gpuaas_id")
        controller = get_node(cluster.controller_node_id)
        job = submit(Operation.JOIN, node, cluster_id=cluster.id, extra_hosts=[controller.id],
                     extravars={"cluster_join_controller": controller.inventory_name})
        return started(job, "join", node)


@blp.route("/gpuaas/node/leave")
class NodeLeave(MethodView):
    @blp.arguments(LeaveQuerySchema, location="query")
    @blp.response(200, OperationReplySchema)
    @changes
    def post(self, args):
        """Drain and delete the worker on the controller, then reset it; `ungraceful=true` for a worker that is down."""
        node = get_node(args["node_id"])
        _check_beyond_status(Operation.LEAVE, node)
        cluster = session().get(Cluster, node.cluster_id)
        controller = get_node(cluster.controller_node_id)
        job = submit(Operation.LEAVE, node, cluster_id=cluster.id, extra_hosts=[controller.id],
                     extravars={"cluster_leave_controller": controller.inventory_name,
                                "cluster_leave_ungraceful": args["ungraceful"]})
        return started(job, "leave", node)


def _start_scan(kind: Operation, node_id: int) -> Scan:
    """The scan its job recorded (operations/scans.py): a new one, or the node's pending one for the same request."""
    job = submit(kind, get_node(node_id))
    return session().scalar(select(Scan).where(Scan.job_id == job.id))


def _scan_status(scan_id: str, kind: str) -> Scan:
    """By the scan's numeric id (as clients send it) or its request_id (a UUID, never all digits)."""
    if scan_id.isdigit() and int(scan_id) <= MAX_ID:
        found = Scan.id == int(scan_id)
    else:
        found = Scan.request_id == scan_id
    scan = session().scalar(select(Scan).where(found, Scan.kind == kind))
    if scan is None:
        raise not_found(f"{kind} scan", scan_id)
    return scan


def scan_reply(scan: Scan):
    gpus = session().scalars(select(Gpu).where(Gpu.node_id == scan.node_id).order_by(Gpu.index)).all()
    return json_reply(render_scan(scan, gpus))


for _kind in SCAN_KINDS:
    def _make(kind: Operation):
        short = SCAN_KINDS[kind]

        class Start(MethodView):
            @blp.arguments(NodeIdQuerySchema, location="query")
            @blp.response(200, ScanSchema)
            @changes
            def get(self, args):
                return scan_reply(_start_scan(kind, args["gpuaas_node_id"]))

        class Status(MethodView):
            @blp.arguments(ScanQuerySchema, location="query")
            @blp.response(200, ScanSchema)
            @reads
            def get(self, args):
                return scan_reply(_scan_status(args["scan_id"], short))

        Start.get.__doc__ = (f"Start a {short} scan; returns its id and scan_id (status processing), with the "
                             "node's known GPUs.")
        Status.get.__doc__ = (f"A {short} scan's status, by its numeric id or request_id: processing, completed "
                              "(with resources) or failed.")
        Start.__name__, Status.__name__ = f"Scan{short.title()}", f"Scan{short.title()}Status"
        blp.route(f"/gpuaas/node/{kind.value}")(Start)
        blp.route(f"/gpuaas/node/{kind.value}/status")(Status)

    _make(_kind)


@blp.route("/gpuaas/node/<id:node_id>/storage_metrics")
class NodeStorageMetrics(MethodView):
    @blp.response(200, StorageMetricsSchema)
    @changes
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
        return {"node_id": node.id, "collected_at": timestamp(latest.sampled_at) if latest else None,
                "metrics": latest.data if latest else None, "refresh_job_id": job_id}


@blp.route("/gpuaas/node/<id:node_id>/logs")
class NodeLogs(MethodView):
    @blp.arguments(PageQuerySchema, location="query")
    @blp.response(200, LogPageSchema)
    @reads
    def get(self, args, node_id):
        """The node's job events, oldest first (job, then event counter), a page at a time, with the total."""
        get_node(node_id)
        db = session()
        total = db.scalar(select(func.count(JobEvent.id)).where(JobEvent.node_id == node_id))
        rows = db.scalars(select(JobEvent).where(JobEvent.node_id == node_id)
                          .order_by(JobEvent.job_id, JobEvent.counter)
                          .offset((args["page"] - 1) * args["per_page"]).limit(args["per_page"])).all()
        items = [{"job_id": e.job_id, "counter": e.counter, "event": e.event, "host": e.host, "task": e.task,
                  "stdout": e.stdout or "", "created_at": timestamp(e.created_at)}
                 for e in rows]
        return {"items": items, "total": total, "page": args["page"], "per_page": args["per_page"]}


@blp.route("/jobs/<id:job_id>")
class JobById(MethodView):
    @blp.arguments(JobWaitQuerySchema, location="query")
    @blp.response(200, JobSchema)
    @reads
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
        return json_reply(render_job(job))


@blp.route("/jobs/<id:job_id>/cancel")
class JobCancel(MethodView):
    @blp.response(202, JobSchema)
    @changes
    def post(self, job_id):
        """Ask a pending or running job to stop: a queued job ends at once without running; a running one's
        worker ends its whole process tree."""
        db = session()
        job = db.get(Job, job_id)
        if job is None:
            raise not_found("job", job_id)
        if job.status.finished:
            raise Refused(f"job {job_id} has already finished ({job.status.value})")
        job.cancel_requested = True  # stored before anything is signalled
        db.commit()
        if job.status is JobStatus.PENDING:
            cancel_waiting(job)  # a queued job that holds nothing ends now; one holding its nodes, when run
            job = db.get(Job, job_id, populate_existing=True)
        return json_reply(render_job(job), 202)


@blp.route("/gpuaas")
class Clusters(MethodView):
    @blp.response(200, ClusterSchema(many=True))
    @reads
    def get(self):
        """Every GPUaaS cluster: live ones first, then torn-down ones (GPUAAS_INACTIVE), each by id."""
        clusters = session().scalars(select(Cluster).order_by(Cluster.id)).all()
        ordered = sorted(clusters, key=lambda cluster: cluster.status is ClusterStatus.INACTIVE)
        return json_reply([render_cluster(cluster) for cluster in ordered])


@blp.route("/gpuaas/<id:gpuaas_id>")
class ClusterById(MethodView):
    @blp.response(200, ClusterSchema)
    @reads
    def get(self, gpuaas_id):
        return json_reply(render_cluster(cluster_by_id(gpuaas_id)))

    @blp.response(200, SuccessSchema)
    @changes
    def delete(self, gpuaas_id):
        """Tear a cluster down once no node is in it (workers left, controller deinitialised): the cluster
        and its pools are removed, and a GET then answers 404."""
        db = session()
        cluster = cluster_by_id(gpuaas_id)
        if cluster.status is ClusterStatus.ENABLE_SETTING_UP:
            raise Refused(f"GPUaaS cluster {gpuaas_id} is being enabled; wait for its job, then tear it down")
        members = db.scalar(select(func.count(Node.id)).where(Node.cluster_id == gpuaas_id))
        if members:
            raise Refused(f"GPUaaS cluster {gpuaas_id} still has {members} node(s); make them leave first")
        remove_torn_down_clusters(db, [gpuaas_id])
        db.commit()
        return {"success": True, "message": f"GPUaaS cluster {gpuaas_id} torn down"}


@blp.route("/gpuaas/<id:gpuaas_id>/gpus")
class ClusterGpus(MethodView):
    @blp.response(200, ClusterGpuListSchema)
    @reads
    def get(self, gpuaas_id):
        """The cluster's GPUs, on its nodes, in node and index order; assignment_status in lower case."""
        cluster_by_id(gpuaas_id)
        gpus = session().scalars(select(Gpu).join(Node, Gpu.node_id == Node.id).where(Node.cluster_id == gpuaas_id)
                                 .order_by(Gpu.node_id, Gpu.index)).all()
        return json_reply({"items": [render_cluster_gpu(gpu) for gpu in gpus]})
