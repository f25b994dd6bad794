#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: storage_info
short_description: Report a storage node's LVM volume groups and filesystem usage
version_added: "0.1.0"
description:
  - Reads LVM volume groups with C(vgs) (JSON report, sizes in bytes) and filesystem usage with C(statvfs).
  - This is what the API's storage metrics are built from.
author:
  - hosted·ai GPUaaS developers (@hostedai)
options:
  volume_group:
    description:
      - The volume group to report. When given, the module fails if it does not exist.
      - When omitted, every volume group is reported.
    type: str
  paths:
    description: Mount points whose filesystem usage is reported.
    type: list
    elements: path
    default: ["/"]
extends_documentation_fragment:
  - hostedai.gpuaas.read_only
"""

EXAMPLES = r"""
- name: Report the gpuaas volume group and the root filesystem
  hostedai.gpuaas.storage_info:
    volume_group: gpuaas
    paths: [/, /var/lib]
  register: storage
"""

RETURN = r"""
volume_groups:
  description: One entry per reported volume group.
  returned: always
  type: list
  elements: dict
  sample: [{name: gpuaas, size_bytes: 1099511627776, free_bytes: 412316860416, used_bytes: 687194767360}]
volume_group:
  description: The entry of O(volume_group), when one was asked for.
  returned: when O(volume_group) is set
  type: dict
  sample: {name: gpuaas, size_bytes: 1099511627776, free_bytes: 412316860416, used_bytes: 687194767360}
filesystems:
  description: Usage of each path in O(paths).
  returned: always
  type: list
  elements: dict
  sample: [{path: /, size_bytes: 105088212992, used_bytes: 20917370880, free_bytes: 84170842112}]
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


def read_volume_groups(module):
    vgs = module.get_bin_path("vgs", opt_dirs=["/sbin", "/usr/sbin", "/usr/local/sbin"])
    if not vgs:
        return None
    rc, out, err = module.run_command(
        [vgs, "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_name,vg_size,vg_free"],
        environ_update={"LC_ALL": "C"})
    if rc != 0:
        module.fail_json(msg="vgs failed (rc %d): %s" % (rc, (err or out).strip()), rc=rc)
    try:
        rows = json.loads(out)["report"][0]["vg"]
    except (ValueError, KeyError, IndexError):
        module.fail_json(msg="vgs printed a report that is not LVM's JSON format", stdout=out)
    groups = []
    for row in rows:
        size, free = int(row["vg_size"]), int(row["vg_free"])
        groups.append({"name": row["vg_name"], "size_bytes": size, "free_bytes": free, "used_bytes": size - free})
    return groups


def filesystem_usage(path):
    stat = os.statvfs(path)
    size = stat.f_blocks * stat.f_frsize
    free = stat.f_bavail * stat.f_frsize
    return {"path": path, "size_bytes": size, "free_bytes": free, "used_bytes": size - stat.f_bfree * stat.f_frsize}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            volume_group=dict(type="str"),
            paths=dict(type="list", elements="path", default=["/"]),
        ),
        supports_check_mode=True,
    )
    wanted = module.params["volume_group"]
    groups = read_volume_groups(module)
    if groups is None and wanted:
        module.fail_json(msg="volume_group %s cannot be read: the LVM tools (vgs) are not installed" % wanted)
    groups = groups or []
    result = {"changed": False, "volume_groups": groups}
    if wanted:
        matches = [group for group in groups if group["name"] == wanted]
        if not matches:
            module.fail_json(msg="volume_group %s does not exist on this host" % wanted, volume_groups=groups)
        result["volume_group"] = matches[0]
        groups = matches
        result["volume_groups"] = matches
    filesystems = []
    for path in module.params["paths"]:
        if not os.path.exists(path):
            module.fail_json(msg="paths: %s does not exist on this host" % path)
        filesystems.append(filesystem_usage(path))
    result["filesystems"] = filesystems
    module.exit_json(**result)


if __name__ == "__main__":
    main()
