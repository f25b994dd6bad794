"""A run's nodes as Ansible inventory hosts (runner.HostSpec)."""
from __future__ import annotations

from flask import current_app

from ..models import Node
from ..states import ROLE_FLAGS
from .runner import HostSpec

# The roles' defaults that name "the controller" as the first host of the run's `controller` group.
CONTROLLER_VARIABLES = ("cluster_join_controller", "cluster_leave_controller", "cluster_departed_controller",
                        "node_reboot_controller")


def node_groups(node: Node) -> list[str]:
    return [group for group, flag in ROLE_FLAGS.items() if getattr(node, flag)]


def own_controller(node: Node, helpers: list[Node]) -> str:
    """The controller a node's roles use when its job runs alone: the first controller-flagged host of
    its own run (the node, then its helpers), or none."""
    return next((host.inventory_name for host in [node, *helpers] if host.is_controller_node), "")


def host_spec(node: Node, controller: str | None = None) -> HostSpec:
    """The node as an inventory host. ``controller`` (in a batch) pins the controller its roles use to
    the one its own run would have had: the batch's `controller` group also holds the other jobs'
    controller-flagged nodes, maybe of other regions, and its first one is nobody's in particular."""
    hostvars = {"node_init_roles": node_groups(node)}
    if controller is not None:
        hostvars.update(dict.fromkeys(CONTROLLER_VARIABLES, controller))
    if node.kubernetes_name:
        hostvars["gpuaas_node_name"] = node.kubernetes_name  # what every role names the node in Kubernetes
    if node.volume_group:
        hostvars["node_init_volume_group"] = node.volume_group
        hostvars["storage_metrics_volume_group"] = node.volume_group
    if node.external_service_ip:
        hostvars["node_init_external_service_ip"] = node.external_service_ip
    hostvars.update(agent_http_vars(node, current_app.config["GPUAAS"]))
    return HostSpec(node_id=node.id, name=node.inventory_name, address=node.node_ip, port=node.port, user=node.username,
                    groups=node_groups(node), host_key=node.ssh_host_key, hostvars=hostvars)


def agent_http_vars(node: Node, config) -> dict:
    """Every play that installs the agent (gpu_sharing, gpuaas_enable, node_join) gives it HTTP on the
    node's registered address and the token; the task installing the token is no_log, and the
    inventory is gone with the job's private directory."""
    if not config.agent_http:
        return {}
    return {"gpu_sharing_agent_http_listen": config.agent_address(node.node_ip),
            "gpu_sharing_agent_token": config.AGENT_TOKEN}


def batch_hosts(targets: list[Node], helpers: list[Node]) -> list[HostSpec]:
    """A batch's hosts: each target keeps its own controller (its job's helpers are the lead's), then the helpers."""
    return [host_spec(node, own_controller(node, helpers)) for node in targets] + [host_spec(node) for node in helpers]
