"""What a node operation needs beyond the node's own status (states.refusal).

Checked when the operation is requested, and again when a queued job's turn comes (nodes.py), so
a job never starts on a state that would have refused its request.
"""
from __future__ import annotations

from sqlalchemy import func, select

from ..db import session
from ..models import Cluster, Node
from ..states import ClusterStatus, Operation


def _deinit(node: Node, _cluster_id: int | None) -> str | None:
    if not (node.is_controller_node and node.joined):
        return None
    members = session().scalar(select(func.count(Node.id)).where(Node.cluster_id == node.cluster_id,
                                                                 Node.id != node.id, Node.joined))
    return f"node {node.id} controls a cluster with {members} joined worker(s); make them leave first" if members else None


def _enable(node: Node, _cluster_id: int | None) -> str | None:
    member_of = session().get(Cluster, node.cluster_id) if node.cluster_id is not None else None
    if member_of is not None and member_of.controller_node_id != node.id:
        return f"node {node.id} is a member of GPUaaS cluster {member_of.id}; make it leave first"
    return None


def _join(_node: Node, cluster_id: int | None) -> str | None:
    if cluster_id is None:
        return None
    cluster = session().get(Cluster, cluster_id)
    return None if cluster is not None and cluster.status is ClusterStatus.ACTIVE else f"GPUaaS cluster {cluster_id} is not active"


def _leave(node: Node, _cluster_id: int | None) -> str | None:
    if not node.joined or node.cluster_id is None:
        return f"node {node.id} is not in a cluster"
    cluster = session().get(Cluster, node.cluster_id)
    if cluster is not None and cluster.controller_node_id == node.id:
        return f"node {node.id} is the cluster's controller; deinitialise it instead"
    return None


CHECKS = {Operation.DEINIT: _deinit, Operation.ENABLE: _enable, Operation.JOIN: _join, Operation.LEAVE: _leave}


def refusal_beyond_status(operation: Operation, node: Node, cluster_id: int | None = None) -> str | None:
    """Why ``operation`` may not start on ``node`` (for join: into ``cluster_id``); None when it may."""
    check = CHECKS.get(operation)
    return check(node, cluster_id) if check else None
