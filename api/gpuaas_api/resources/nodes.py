from __future__ import annotations

from flask import current_app, jsonify
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy.orm import selectinload

from ..db import commit_unique, session
from ..errors import conflict, field_error, not_found
from ..models import Node
from ..schemas import NodeAddSchema, NodeEditSchema, NodeSchema, RegionQuerySchema
from ..ssh_keys import controller_public_key
from ..states import DELETABLE_NODE_STATUSES
from ..views import cached_reply, node_dict, node_list
from .regions import get_region

blp = Blueprint("nodes", __name__, description="GPU nodes")


def get_node(node_id: int) -> Node:
    node = session().get(Node, node_id, options=[selectinload(Node.gpus), selectinload(Node.region)])
    if node is None:
        raise not_found("node", node_id)
    return node


def _check_role_fields(node: Node) -> None:
    if node.is_storage_service and not node.volume_group:
        raise field_error("volume_group", "a storage node needs a volume group")
    if node.is_gateway_service and not node.external_service_ip:
        raise field_error("external_service_ip", "a gateway node needs an external service IP")
    if not any((node.is_controller_node, node.is_worker_node, node.is_gateway_service, node.is_storage_service)):
        raise field_error("is_worker_node", "a node needs at least one role")


def _commit_unique(node: Node) -> None:
    commit_unique("name", f"region {node.region_id} already has a node named {node.name}")


@blp.route("/gpuaas/node/add")
class NodeAdd(MethodView):
    @blp.arguments(NodeAddSchema)
    @blp.response(201, NodeSchema)
    def post(self, fields):
        """Add a node (uninitialized). Install the controller's key on it first: GET .../ssh_keys."""
        get_region(fields["region_id"])
        node = Node(**fields)
        _check_role_fields(node)
        session().add(node)
        _commit_unique(node)
        return jsonify(node_dict(get_node(node.id))), 201


@blp.route("/gpuaas/node/list")
class NodeList(MethodView):
    @blp.arguments(RegionQuerySchema, location="query")
    @blp.response(200, NodeSchema(many=True))
    def get(self, query):
        """Nodes, optionally of one region, as a bare array."""
        return cached_reply(("nodes", query.get("region_id")), lambda: node_list(session(), query.get("region_id")))


@blp.route("/gpuaas/node/<int:node_id>")
class NodeById(MethodView):
    @blp.response(200, NodeSchema)
    def get(self, node_id):
        return cached_reply(("node", node_id), lambda: node_dict(get_node(node_id)))


@blp.route("/gpuaas/node/<int:node_id>/edit")
class NodeEdit(MethodView):
    @blp.arguments(NodeEditSchema)
    @blp.response(200, NodeSchema)
    def put(self, fields, node_id):
        """Change a node's address, credentials or roles."""
        node = get_node(node_id)
        for key, value in fields.items():
            setattr(node, key, value)
        if {"node_ip", "port"} & fields.keys():
            node.ssh_host_key = None  # a new address is a new host: pin its key again
        _check_role_fields(node)
        _commit_unique(node)
        return jsonify(node_dict(get_node(node_id)))


@blp.route("/gpuaas/node/<int:node_id>/delete")
class NodeDelete(MethodView):
    def _delete(self, node_id):
        node = get_node(node_id)
        if node.status not in DELETABLE_NODE_STATUSES:
            raise conflict(f"node {node_id} is {node.status.value}; deinitialize it before deleting it")
        session().delete(node)
        session().commit()
        return {"success": True, "message": f"node {node_id} deleted"}

    @blp.response(200)
    def delete(self, node_id):
        """Delete a node that is uninitialized (or in error). Clients also use GET."""
        return self._delete(node_id)

    @blp.response(200)
    def get(self, node_id):
        return self._delete(node_id)


@blp.route("/gpuaas/node/<int:node_id>/ssh_keys")
class NodeSshKeys(MethodView):
    @blp.response(200)
    def get(self, node_id):
        """The controller's public keys, as a bare array: add them to the node's authorized_keys."""
        get_node(node_id)
        return [controller_public_key(current_app.config["GPUAAS"].DATA_DIR)]
