from __future__ import annotations

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy.orm import selectinload

from ..access import changes, reads
from ..db import commit_unique, session
from ..domain_errors import Conflict, DomainError, Invalid, Refused, not_found
from ..jobs.holds import jobs_ahead
from ..models import Node
from ..schemas import NodeAddSchema, NodeEditSchema, NodeSchema, RegionQuerySchema, SuccessSchema
from ..ssh_keys import public_keys
from ..states import DELETABLE_NODE_STATUSES, ROLE_FLAGS
from ..reply_cache import cached_reply, json_reply, node_list, node_reply
from .regions import get_region

blp = Blueprint("nodes", __name__, description="GPU nodes")


def get_node(node_id: int) -> Node:
    node = session().get(Node, node_id, options=[selectinload(Node.gpus), selectinload(Node.region)])
    if node is None:
        raise not_found("node", node_id)
    return node


def _check_role_fields(node: Node, refusal: type[DomainError] = Invalid) -> None:
    """The role rules (published as schemas.SCHEMA_RULES on node add). On an edit they concern the node
    as stored and changed, not the request alone: a conflict with what is stored (409). A storage node
    may come without a volume group: its init serves the host's largest (roles/node_init)."""
    if node.is_gateway_service and not node.external_service_ip:
        raise refusal("a gateway node needs an external service IP", "external_service_ip")
    if not any(getattr(node, flag) for flag in ROLE_FLAGS.values()):
        raise refusal("a node needs at least one role", ROLE_FLAGS["worker"])


def _commit_unique(node: Node) -> None:
    commit_unique("name", f"region {node.region_id} already has a node named {node.name}")


@blp.route("/gpuaas/node/add")
class NodeAdd(MethodView):
    @blp.arguments(NodeAddSchema)
    @blp.response(201, NodeSchema)
    @changes
    def post(self, fields):
        """Add a node (uninitialized). Install the controller's key on it first: GET .../ssh_keys."""
        get_region(fields["region_id"])
        node = Node(**fields)
        _check_role_fields(node)
        session().add(node)
        _commit_unique(node)
        return json_reply(node_reply(session(), get_node(node.id)), 201)


@blp.route("/gpuaas/node/list")
class NodeList(MethodView):
    @blp.arguments(RegionQuerySchema, location="query")
    @blp.response(200, NodeSchema(many=True))
    @reads
    def get(self, query):
        """Nodes, optionally of one region, as a bare array."""
        return cached_reply(("nodes", query.get("region_id")), lambda: node_list(session(), query.get("region_id")))


@blp.route("/gpuaas/node/<id:node_id>")
class NodeById(MethodView):
    @blp.response(200, NodeSchema)
    @reads
    def get(self, node_id):
        return cached_reply(("node", node_id), lambda: node_reply(session(), get_node(node_id)))


@blp.route("/gpuaas/node/<id:node_id>/edit")
class NodeEdit(MethodView):
    @blp.arguments(NodeEditSchema, required=False)
    @blp.response(200, NodeSchema)
    @changes
    def put(self, fields, node_id):
        """Change a node's address, credentials or roles."""
        node = get_node(node_id)
        for key, value in fields.items():
            setattr(node, key, value)
        if {"node_ip", "port"} & fields.keys():
            node.ssh_host_key = None  # a new address is a new host: pin its key again
        _check_role_fields(node, Conflict)
        _commit_unique(node)
        return json_reply(node_reply(session(), get_node(node_id)))


@blp.route("/gpuaas/node/<id:node_id>/delete")
class NodeDelete(MethodView):
    def _delete(self, node_id):
        node = get_node(node_id)
        if node.status not in DELETABLE_NODE_STATUSES:
            raise Refused(f"node {node_id} is {node.status.value}; deinitialize it before deleting it")
        waiting = jobs_ahead({node.id})
        if waiting:
            raise Refused(f"node {node_id} has job {waiting[0].id} ({waiting[0].operation}) running or queued; "
                          "wait for it or cancel it")
        session().delete(node)
        session().commit()
        return {"success": True, "message": f"node {node_id} deleted"}

    @blp.response(200, SuccessSchema)
    @changes
    def delete(self, node_id):
        """Delete a node that is uninitialized (or in error). Clients also use GET."""
        return self._delete(node_id)

    @blp.response(200, SuccessSchema)
    @changes
    def get(self, node_id):
        return self._delete(node_id)


@blp.route("/gpuaas/node/<id:node_id>/ssh_keys")
class NodeSshKeys(MethodView):
    @blp.response(200, {"type": "array", "items": {"type": "string"}})
    @reads
    def get(self, node_id):
        """The controller's public keys, as a bare array: add them to the node's authorized_keys."""
        get_node(node_id)
        return json_reply(public_keys(current_app.config["GPUAAS"]))
