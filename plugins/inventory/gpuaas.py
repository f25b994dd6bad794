# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
name: gpuaas
short_description: GPUaaS nodes from the hosted·ai GPUaaS API
version_added: "0.1.0"
description:
  - Reads the nodes the GPUaaS API knows (C(GET /api/gpuaas/node/list)) and makes them an inventory.
  - Groups hosts by role (C(controller), C(worker), C(gateway), C(storage)), by region (C(region_<name>))
    and by cluster (C(gpuaas_<id>)).
  - Names each host C(node-<id>) after the node's id (for example C(node-17)), never after the node's C(name),
    which is a free display name (any printable text) and so never becomes an inventory hostname, a command-line
    argument or a file name. The display name is the host variable C(gpuaas_display_name).
  - Sets C(gpuaas_node_name), the node's Kubernetes name, once the service has derived it from the host's hostname.
  - Sets C(ansible_host), C(ansible_port) and C(ansible_user), and C(gpuaas_node) with the node as the API
    returns it (id, name, status, GPUs, ...). Supports C(compose), C(groups) and C(keyed_groups).
  - Every value from the API is data, never a template (ansible-core does not template what an inventory
    plugin sets unless the plugin marks it trusted, and this one does not).
  - The inventory file must end in C(gpuaas.yml) or C(gpuaas.yaml).
author:
  - hosted·ai GPUaaS developers (@hostedai)
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin; it must be C(hostedai.gpuaas.gpuaas).
    required: true
    choices: [hostedai.gpuaas.gpuaas]
    type: str
  url:
    description: The API's base URL.
    type: str
    required: true
    env:
      - name: GPUAAS_URL
  token:
    description: An API token (C(gpuaas-api create-token)); a viewer's is enough, since the plugin only reads.
    type: str
    required: true
    env:
      - name: GPUAAS_TOKEN
  region_id:
    description: Only the nodes of this region.
    type: int
  validate_certs:
    description: Verify the API's TLS certificate.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for the API.
    type: int
    default: 30
"""

EXAMPLES = r"""
# gpuaas.yml: hosts node-1, node-2, ... (one per node id)
plugin: hostedai.gpuaas.gpuaas
url: https://gpuaas.example.com
keyed_groups:
  - key: gpuaas_node.status
    prefix: status
compose:
  gpu_count: gpuaas_node.gpus | length

# Then: ansible-playbook -i gpuaas.yml hostedai.gpuaas.scan_gpus --limit node-17
# and, in a play, the node's display name for messages and reports:
#   - ansible.builtin.debug:
#       msg: "{{ inventory_hostname }} is {{ gpuaas_display_name }}"
"""

import json

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_native
from ansible.module_utils.urls import open_url
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible_collections.hostedai.gpuaas.plugins.module_utils.inventory_names import host_alias

ROLE_GROUPS = {"is_controller_node": "controller", "is_worker_node": "worker", "is_gateway_service": "gateway",
               "is_storage_service": "storage"}


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "hostedai.gpuaas.gpuaas"

    def verify_file(self, path):
        return super(InventoryModule, self).verify_file(path) and path.endswith(("gpuaas.yml", "gpuaas.yaml"))

    def _get(self, path):
        url = self.get_option("url").rstrip("/") + path
        try:
            response = open_url(url, headers={"Authorization": "Bearer %s" % self.get_option("token")},
                                validate_certs=self.get_option("validate_certs"), timeout=self.get_option("timeout"))
            return json.loads(response.read())
        except Exception as error:
            raise AnsibleError("the GPUaaS API at %s did not answer %s: %s" % (self.get_option("url"), path,
                                                                               to_native(error)))

    def parse(self, inventory, loader, path, cache=True):
        super(InventoryModule, self).parse(inventory, loader, path, cache)
        self._read_config_data(path)
        query = "?region_id=%d" % self.get_option("region_id") if self.get_option("region_id") else ""
        strict = self.get_option("strict")
        for node in self._get("/api/gpuaas/node/list" + query):
            try:
                alias = host_alias(node.get("id"))
            except ValueError as error:
                raise AnsibleError("the GPUaaS API at %s listed a node without a usable id: %s"
                                   % (self.get_option("url"), to_native(error)))
            # The display name is free text: a host variable only, never the host's name.
            host = self.inventory.add_host(alias)
            self.inventory.set_variable(host, "gpuaas_display_name", node.get("name"))
            self.inventory.set_variable(host, "ansible_host", node["node_ip"])
            self.inventory.set_variable(host, "ansible_port", node["port"])
            self.inventory.set_variable(host, "ansible_user", node["username"])
            self.inventory.set_variable(host, "gpuaas_node", node)
            if node.get("kubernetes_name"):
                # The roles name the node in Kubernetes by this (join, labels, drain, delete).
                self.inventory.set_variable(host, "gpuaas_node_name", node["kubernetes_name"])
            for flag, group in ROLE_GROUPS.items():
                if node["role"].get(flag):
                    self.inventory.add_group(group)
                    self.inventory.add_child(group, host)
            region = self.inventory.add_group("region_%s" % self._sanitize_group_name(node["region"]["region_name"]))
            self.inventory.add_child(region, host)
            if node.get("gpuaas_id"):
                cluster = self.inventory.add_group("gpuaas_%d" % node["gpuaas_id"])
                self.inventory.add_child(cluster, host)
            variables = self.inventory.get_host(host).get_vars()
            self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), variables, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, host, strict=strict)
