# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The name a GPUaaS node has in an inventory, defined once.

A node's ``name`` is a free display name (any printable text), so it never becomes an
inventory hostname, a command-line argument or a file name: the node's id does.  Pure Python
with no Ansible import: the inventory plugin imports it, and the REST service can load this
same file (as it loads sharing_policy.py), so both name a node's host alike.
"""
from __future__ import annotations

HOST_ALIAS_FORMAT = "node-%d"


def host_alias(node_id):
    """``node-<id>`` for a node id (a positive integer); ValueError for anything else."""
    if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id < 1:
        raise ValueError("a node id is a positive integer, not %r" % (node_id,))
    return HOST_ALIAS_FORMAT % node_id
