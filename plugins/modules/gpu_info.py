#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_info
short_description: Discover a node's NVIDIA GPUs through NVML
version_added: "0.1.0"
description:
  - Reads the NVIDIA driver and every GPU on the node through NVML, using nvidia-ml-py (C(pynvml)),
    which loads the driver's C(libnvidia-ml.so.1).
  - Reports per GPU its index, UUID, vendor, model, memory, PCI bus id, compute mode and MIG mode,
    and per node the driver version, CUDA version and GPU count.
  - A host without the NVIDIA driver or NVML library, and a host whose driver sees no GPU, are two
    distinct, successful outcomes (see RV(driver_state) and RV(gpu_count)). Set O(require_driver)
    to turn the first into a failure.
  - A GPU that has fallen off the bus is reported with RV(gpus[].status=lost) instead of failing the scan.
author:
  - hosted·ai GPUaaS developers (@hostedai)
requirements:
  - nvidia-ml-py (C(pynvml)) on the managed node
  - the NVIDIA driver's C(libnvidia-ml.so.1) on the managed node, for any GPU to be found
options:
  require_driver:
    description:
      - Fail when the host has no usable NVIDIA driver or NVML library, instead of reporting it.
    type: bool
    default: false
  include_metrics:
    description:
      - Also sample each GPU's utilisation, memory used, temperature and power.
    type: bool
    default: false
extends_documentation_fragment:
  - hostedai.gpuaas.read_only
notes:
  - Only reads state; C(changed) is always false.
seealso:
  - module: hostedai.gpuaas.npu_info
"""

EXAMPLES = r"""
- name: Discover the GPUs of every node
  hostedai.gpuaas.gpu_info:
  register: gpu_scan

- name: Show how many GPUs each node has
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }}: {{ gpu_scan.gpu_count }} GPU(s), driver {{ gpu_scan.driver_version }}"

- name: Refuse to go on without an NVIDIA driver
  hostedai.gpuaas.gpu_info:
    require_driver: true
    include_metrics: true
"""

RETURN = r"""
driver_state:
  description:
    - C(present) when NVML initialised; C(absent) when there is no NVIDIA driver or NVML library;
      C(not_loaded) when the library is there but the kernel driver is not; C(pynvml_missing) when
      nvidia-ml-py is not installed; C(error) for any other NVML failure.
  returned: always
  type: str
  sample: present
msg:
  description: One sentence saying what was found.
  returned: always
  type: str
  sample: "8 NVIDIA GPU(s), driver 550.54.15"
driver_version:
  description: The NVIDIA driver version, or null without a driver.
  returned: always
  type: str
  sample: "550.54.15"
cuda_version:
  description: The highest CUDA version the driver supports, or null without a driver.
  returned: always
  type: str
  sample: "12.4"
gpu_count:
  description: How many GPUs the driver reports; 0 without a driver.
  returned: always
  type: int
  sample: 8
gpus:
  description: One entry per GPU, in NVML index order.
  returned: always
  type: list
  elements: dict
  contains:
    index:
      description: NVML index.
      type: int
      returned: always
      sample: 0
    uuid:
      description: GPU UUID.
      type: str
      returned: when status is ok
      sample: "GPU-5b6c1f8e-0d5e-5d3b-9a8c-3f2e1d0c9b8a"
    vendor:
      description: Always C(NVIDIA).
      type: str
      returned: always
      sample: NVIDIA
    model:
      description: Product name.
      type: str
      returned: when status is ok
      sample: "NVIDIA H100 80GB HBM3"
    memory_mb:
      description: Total memory in MiB.
      type: int
      returned: when status is ok
      sample: 81559
    pci_bus_id:
      description: PCI bus id.
      type: str
      returned: when status is ok
      sample: "00000000:18:00.0"
    compute_mode:
      description: C(DEFAULT), C(PROHIBITED), C(EXCLUSIVE_PROCESS) (or C(EXCLUSIVE_THREAD) on old drivers).
      type: str
      returned: when status is ok
      sample: DEFAULT
    mig_mode:
      description: C(enabled), C(disabled) or C(unsupported).
      type: str
      returned: when status is ok
      sample: disabled
    mig_mode_pending:
      description: MIG mode after the next GPU reset.
      type: str
      returned: when status is ok
      sample: disabled
    status:
      description: C(ok), C(lost) (fallen off the bus) or C(error).
      type: str
      returned: always
      sample: ok
    error:
      description: The NVML error for a lost or failing GPU.
      type: str
      returned: when status is not ok
      sample: "GPU is lost"
    metrics:
      description: Utilisation, memory used, temperature and power.
      type: dict
      returned: when O(include_metrics=true) and status is ok
      sample:
        utilization_gpu_percent: 35
        utilization_memory_percent: 20
        memory_used_mb: 512
        temperature_c: 41
        power_w: 88.0
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.hostedai.gpuaas.plugins.module_utils._nvml import (
    NvmlSession,
    NvmlUnavailable,
    describe_driver,
    describe_gpu,
)


def discover(include_metrics):
    with NvmlSession() as nvml:
        result = describe_driver(nvml)
        result["gpus"] = [describe_gpu(nvml, index, include_metrics) for index in range(result["gpu_count"])]
    result["driver_state"] = "present"
    lost = sum(1 for gpu in result["gpus"] if gpu["status"] != "ok")
    result["msg"] = "%d NVIDIA GPU(s), driver %s%s" % (
        result["gpu_count"], result["driver_version"], ", %d not answering" % lost if lost else "")
    if result["gpu_count"] == 0:
        result["msg"] = "NVIDIA driver %s present, 0 GPUs" % result["driver_version"]
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            require_driver=dict(type="bool", default=False),
            include_metrics=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    try:
        result = discover(module.params["include_metrics"])
    except NvmlUnavailable as unavailable:
        result = dict(driver_state=unavailable.driver_state, msg=unavailable.reason, driver_version=None,
                      cuda_version=None, gpu_count=0, gpus=[])
        if module.params["require_driver"]:
            module.fail_json(changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
