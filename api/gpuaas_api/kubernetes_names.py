"""A node's Kubernetes name: the one rule, applied once, at the node's first contact.

The name a node is registered with in the API is the operator's; Kubernetes needs a DNS-1123
label (what kubeadm's --node-name and the kubelet's --hostname-override take here).  At the
first job that reads the host's own hostname (test_conn or node_init), the service derives the
label from it and stores it with the node; join, labels, drain, delete and the agent all use
that stored name afterwards (the host variable gpuaas_node_name), whatever the node is
renamed to later.
"""
from __future__ import annotations

import re

from .validation import NODE_NAME

MAX_LABEL = 63


def derive(hostname: str, node_id: int, taken: set[str]) -> str:
    """The host's hostname (uname -n) as a DNS label: its first dot-separated part, lower-cased,
    other characters as hyphens; `node-<id>` when nothing usable is left, and `-<id>` appended
    when another node of the region has the label already."""
    label = hostname.strip().lower().split(".")[0]
    label = re.sub(r"[^a-z0-9-]+", "-", label)[:MAX_LABEL].strip("-")
    if not NODE_NAME.match(label):
        label = f"node-{node_id}"
    if label in taken:
        suffix = f"-{node_id}"
        label = label[:MAX_LABEL - len(suffix)].rstrip("-") + suffix
    return label
