#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: npu_info
short_description: Discover a node's Huawei Ascend NPUs
version_added: "0.1.0"
description:
  - Lists Ascend NPUs with C(npu-smi info -l) and reports each one's id, chip name, memory and health.
  - Without C(npu-smi), falls back to the PCI bus and lists devices of Huawei's vendor id C(0x19e5)
    with the processing-accelerator class; chip, memory and health are then unknown.
author:
  - hosted·ai GPUaaS developers (@hostedai)
options:
  npu_smi_path:
    description: The npu-smi binary; found on C(PATH) (and C(/usr/local/sbin)) when not given.
    type: path
  sysfs_pci_path:
    description: Where the PCI devices are listed, for the fallback.
    type: path
    default: /sys/bus/pci/devices
extends_documentation_fragment:
  - hostedai.gpuaas.read_only
"""

EXAMPLES = r"""
- name: Discover Ascend NPUs
  hostedai.gpuaas.npu_info:
  register: npu_scan

- name: Fail when any NPU is unhealthy
  ansible.builtin.assert:
    that: npu_scan.npus | rejectattr('health', 'equalto', 'OK') | list | length == 0
"""

RETURN = r"""
source:
  description: Where the NPUs were found, C(npu-smi), C(pci) or C(none).
  returned: always
  type: str
  sample: npu-smi
npu_count:
  description: How many NPUs were found.
  returned: always
  type: int
  sample: 8
msg:
  description: One sentence saying what was found.
  returned: always
  type: str
  sample: "8 Ascend NPU(s) found with npu-smi"
npus:
  description: One entry per NPU.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: NPU id (npu-smi) or position on the bus (pci).
      type: int
      returned: always
      sample: 0
    chip_name:
      description: Chip name; null from the PCI fallback.
      type: str
      returned: always
      sample: 910B3
    memory_mb:
      description: HBM capacity in MB; null from the PCI fallback.
      type: int
      returned: always
      sample: 65536
    health:
      description: Health as npu-smi reports it (C(OK), C(Warning), C(Alarm) and so on), or C(unknown).
      type: str
      returned: always
      sample: OK
    pci_address:
      description: PCI address, from the PCI fallback only.
      type: str
      returned: when source is pci
      sample: "0000:c1:00.0"
"""

import os

from ansible.module_utils.basic import AnsibleModule

HUAWEI_PCI_VENDOR = "0x19e5"
# PCI class 0x1200xx: processing accelerator (Ascend cards), not Huawei NICs.
ACCELERATOR_CLASS_PREFIX = "0x1200"


def parse_npu_smi_list(text):
    """Parse the key/value blocks of ``npu-smi info -l``, one block per NPU."""
    npus, current = [], None
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, value = [part.strip() for part in line.split(":", 1)]
        if key == "NPU ID":
            current = {"id": int(value), "chip_name": None, "memory_mb": None, "health": "unknown"}
            npus.append(current)
        elif current is None:
            continue
        elif key == "Chip Name":
            current["chip_name"] = value
        elif key.startswith("HBM Capacity") or key.startswith("Memory Capacity"):
            current["memory_mb"] = int(value) if value.isdigit() else None
        elif key == "Health":
            current["health"] = value
    return npus


def scan_pci(sysfs):
    npus = []
    if not os.path.isdir(sysfs):
        return npus
    for address in sorted(os.listdir(sysfs)):
        try:
            with open(os.path.join(sysfs, address, "vendor")) as vendor:
                if vendor.read().strip().lower() != HUAWEI_PCI_VENDOR:
                    continue
            with open(os.path.join(sysfs, address, "class")) as device_class:
                if not device_class.read().strip().lower().startswith(ACCELERATOR_CLASS_PREFIX):
                    continue
        except (IOError, OSError):
            continue
        npus.append({"id": len(npus), "chip_name": None, "memory_mb": None, "health": "unknown",
                     "pci_address": address})
    return npus


def main():
    module = AnsibleModule(
        argument_spec=dict(
            npu_smi_path=dict(type="path"),
            sysfs_pci_path=dict(type="path", default="/sys/bus/pci/devices"),
        ),
        supports_check_mode=True,
    )
    npu_smi = module.params["npu_smi_path"] or module.get_bin_path("npu-smi", opt_dirs=["/usr/local/sbin"])
    if npu_smi:
        rc, out, err = module.run_command([npu_smi, "info", "-l"], environ_update={"LC_ALL": "C"})
        if rc != 0:
            module.fail_json(msg="npu-smi info -l failed (rc %d): %s" % (rc, (err or out).strip()), rc=rc)
        npus = parse_npu_smi_list(out)
        source = "npu-smi"
    else:
        npus = scan_pci(module.params["sysfs_pci_path"])
        source = "pci" if npus else "none"
    if source == "none":
        msg = "No Ascend NPU on this host (no npu-smi, no Huawei accelerator on the PCI bus)"
    else:
        msg = "%d Ascend NPU(s) found with %s" % (len(npus), source)
    module.exit_json(changed=False, source=source, npu_count=len(npus), npus=npus, msg=msg)


if __name__ == "__main__":
    main()
