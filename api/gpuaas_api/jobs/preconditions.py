"""What a node operation needs beyond the node's own status (states.refusal).

Checked when the operation is requested, and again when a queued job's turn comes (queue.py), so
a job never starts on a state that would have refused its request.
"""
from __future__ import annotations

from sqlalchemy import func, select

from ..db import session
from ..models import Cluster, Node
from ..states import ClusterStatus, Operation


def refusal_beyond_status(operation: Operation, node: Node, cluster_id: int | None = None) -> str | None:
    """Why ``operation`` may not start on ``node`` (for join: into ``cluster_id``); None when it may."""
    db = session()
    if operation is Operation.DEINIT and node.is_controller_node and node.joined:
        members = db.scalar(select(func.count(Node.id)).where(Node.cluster_id == node.cluster_id,
                                                              Node.id != node.id, Node.joined))
        if members:
            return f"node {node.id} controls a cluster with {members} joined worker(s); make them leave first"
    if operation is Operation.ENABLE and node.cluster_id is not None:
        member_of = db.get(Cluster, node.cluster_id)
        if member_of is not None and member_of.controller_node_id != node.id:
            return f"node {node.id} is a member of GPUaaS cluster {member_of.id}; make it leave first"
    if operation is Operation.JOIN and cluster_id is not None:
        cluster = db.get(Cluster, cluster_id)
        if cluster is None or cluster.status is not ClusterStatus.ACTIVE:
            return f"GPUaaS cluster {cluster_id} is not active"
    if operation is Operation.LEAVE:
        if not node.joined or node.cluster_id is None:
            return f"node {node.id} is not in a cluster"
        cluster = db.get(Cluster, node.cluster_id)
        if cluster is not None and cluster.controller_node_id == node.id:
            return f"node {node.id} is the cluster's controller; deinitialise it instead"
    return None
