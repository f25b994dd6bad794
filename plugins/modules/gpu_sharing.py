#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_sharing
short_description: Apply GPU pools' sharing to specific GPUs of a node
version_added: "0.2.0"
description:
  - Configures the GPUs named by UUID for the pools they belong to. A node may hold GPUs of several pools,
    each with its own sharing ratio, time quantum and security level.
  - Writes the node's versioned sharing configuration (O(config_path)) recording, per GPU, the pool, the extended
    resource its slots are advertised as (O(resource_prefix) and the pool's id), the sharing ratio and slot count,
    the time quantum, the security level, the compute mode the level requires and (medium level) the per-slot
    limits. Its C(version) goes up by one with every change.
  - The gpuaas agent on the node reads that file and makes it real (the gpu_sharing role installs and signals it).
    It advertises each pool's slots to the kubelet, sets the compute modes and runs the MPS daemons; this module
    changes no GPU setting itself.
  - O(state=absent) takes the GPUs out of their pools (the agent then restores compute mode DEFAULT and advertises
    them whole).
  - Every GPU is checked through NVML before anything is written; an unknown UUID or a setting out of range changes
    nothing.
author:
  - hosted·ai GPUaaS developers (@hostedai)
requirements:
  - nvidia-ml-py (C(pynvml)) and the NVIDIA driver on the managed node, to find the GPUs and their memory
options:
  gpus:
    description:
      - The GPUs to configure, by UUID. With O(state=absent) only C(uuid) is read.
      - GPUs of the node that are not listed keep their configuration.
    type: list
    elements: dict
    required: true
    suboptions:
      uuid:
        description: The GPU's UUID, as NVML reports it.
        type: str
        required: true
      pool_id:
        description: The pool the GPU belongs to. Required with O(state=present).
        type: int
      sharing_ratio:
        description: Virtual-GPU slots per physical GPU, 1 to 10. Required with O(state=present).
        type: int
      time_quantum_in_sec:
        description: The pool's scheduling quantum in seconds, 10 to 120.
        type: int
        default: 30
      security_level:
        description: The pool's isolation; see the module description for what each level sets.
        type: str
        choices: [low, medium, high]
        default: low
  state:
    description: Whether the GPUs are in their pools (V(present)) or back to their defaults (V(absent)).
    type: str
    choices: [present, absent]
    default: present
  config_path:
    description: The node's sharing configuration, which the gpuaas agent reads.
    type: path
    default: /etc/gpuaas/sharing.yaml
  resource_prefix:
    description: The extended resource name of a pool's slots is this prefix followed by the pool's id.
    type: str
    default: gpuaas.hosted.ai/pool-
  mps_compute_mode:
    description:
      - The compute mode of medium-level (MPS) GPUs. NVIDIA recommends V(EXCLUSIVE_PROCESS) for MPS; V(DEFAULT) is
        for machines whose GPU modes must not change.
    type: str
    choices: [EXCLUSIVE_PROCESS, DEFAULT]
    default: EXCLUSIVE_PROCESS
attributes:
  check_mode:
    support: full
    description: Reports whether the configuration would change, and changes nothing.
  diff_mode:
    support: full
    description: Shows the configuration before and after.
notes:
  - The time quantum is the platform's scheduling period, enforced above the driver; the driver has no setting
    in seconds. It is recorded per GPU for the node's scheduler.
  - See docs/gpu-sharing.md and docs/agent.md for what each security level means on the node.
seealso:
  - module: hostedai.gpuaas.gpu_info
  - module: hostedai.gpuaas.pool
"""

EXAMPLES = r"""
- name: Two pools on one node
  hostedai.gpuaas.gpu_sharing:
    gpus:
      - {uuid: GPU-aaaa, pool_id: 1, sharing_ratio: 4, time_quantum_in_sec: 30, security_level: low}
      - {uuid: GPU-bbbb, pool_id: 2, sharing_ratio: 2, time_quantum_in_sec: 60, security_level: high}

- name: Take a GPU out of its pool
  hostedai.gpuaas.gpu_sharing:
    state: absent
    gpus:
      - uuid: GPU-bbbb
"""

RETURN = r"""
version:
  description: The node configuration's version after the run.
  returned: always
  type: int
  sample: 3
gpus:
  description: The node's sharing configuration after the run, by GPU UUID.
  returned: always
  type: dict
  sample: {"GPU-aaaa": {"pool_id": 1, "resource": "gpuaas.hosted.ai/pool-1", "sharing_ratio": 4, "slots": 4,
                        "time_quantum_in_sec": 30, "security_level": "low", "compute_mode": "DEFAULT"}}
resources:
  description: Each extended resource the node's agent must advertise, with its device count (slots of the pool's GPUs).
  returned: always
  type: dict
  sample: {"gpuaas.hosted.ai/pool-1": 8}
changed_files:
  description: The files written (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: ["/etc/gpuaas/sharing.yaml"]
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostedai.gpuaas.plugins.module_utils._nvml import NvmlSession, NvmlUnavailable
from ansible_collections.hostedai.gpuaas.plugins.module_utils.sharing_policy import (
    DEFAULT_TIME_QUANTUM_SECONDS, MPS_COMPUTE_MODES, MPS_SECURITY_LEVELS, POOL_RESOURCE_PREFIX, SECURITY_LEVELS,
    compute_mode_for, pool_resource_name, sharing_errors, slot_limits)

# The file is YAML written in its JSON form (a comment header, then JSON): readable by
# anything that reads YAML (the agent does), and written and read here without PyYAML, which
# nodes may lack.
HEADER = "# Managed by hostedai.gpuaas.gpu_sharing: edits are overwritten. The gpuaas agent reads it.\n"


def load_config(path):
    if not os.path.exists(path):
        return {"version": 0, "gpus": {}}
    with open(path) as handle:
        body = "".join(line for line in handle if not line.startswith("#"))
    loaded = json.loads(body) if body.strip() else {}
    return {"version": int(loaded.get("version", 0)), "gpus": dict(loaded.get("gpus") or {})}


def dump_yaml(data, header=HEADER):
    return header + json.dumps(data, indent=2, sort_keys=True) + "\n"


def resource_counts(gpus):
    counts = {}
    for entry in gpus.values():
        counts[entry["resource"]] = counts.get(entry["resource"], 0) + entry["slots"]
    return counts


def read_text(path):
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return handle.read()


def write_atomically(module, path, text):
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".gpuaas-")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.chmod(temporary, 0o644)
    module.atomic_move(temporary, path)


def validate(module, gpus, state):
    for gpu in gpus:
        if state == "absent":
            continue
        missing = [key for key in ("pool_id", "sharing_ratio") if gpu.get(key) is None]
        if missing:
            module.fail_json(msg="GPU %s: %s is required with state=present" % (gpu["uuid"], missing[0]))
        errors = sharing_errors(gpu["sharing_ratio"], gpu["time_quantum_in_sec"], gpu["security_level"])
        if errors:
            module.fail_json(msg="GPU %s: %s %s" % (gpu["uuid"], errors[0][0], errors[0][1]), errors=errors)
    uuids = [gpu["uuid"] for gpu in gpus]
    duplicates = sorted(set(uuid for uuid in uuids if uuids.count(uuid) > 1))
    if duplicates:
        module.fail_json(msg="GPU %s is listed twice" % duplicates[0])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            gpus=dict(type="list", elements="dict", required=True, options=dict(
                uuid=dict(type="str", required=True),
                pool_id=dict(type="int"),
                sharing_ratio=dict(type="int"),
                time_quantum_in_sec=dict(type="int", default=DEFAULT_TIME_QUANTUM_SECONDS),
                security_level=dict(type="str", choices=list(SECURITY_LEVELS), default="low"),
            )),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            config_path=dict(type="path", default="/etc/gpuaas/sharing.yaml"),
            resource_prefix=dict(type="str", default=POOL_RESOURCE_PREFIX),
            mps_compute_mode=dict(type="str", choices=list(MPS_COMPUTE_MODES), default=MPS_COMPUTE_MODES[0]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    gpus, state = params["gpus"], params["state"]
    validate(module, gpus, state)

    try:
        with NvmlSession() as nvml:
            result = apply(module, nvml, gpus, state)
    except NvmlUnavailable as unavailable:
        module.fail_json(msg=unavailable.reason, driver_state=unavailable.driver_state)
    module.exit_json(**result)


def apply(module, nvml, gpus, state):
    params = module.params
    # 1. Find every GPU before changing anything.
    memory_mb = {}
    for gpu in gpus:
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(gpu["uuid"])
            memory_mb[gpu["uuid"]] = nvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
        except nvml.NVMLError as error:
            if state == "absent":  # a lost GPU can still leave its pool
                module.warn("GPU %s is not usable on this node (%s); only its configuration is removed"
                            % (gpu["uuid"], error))
                continue
            module.fail_json(msg="GPU %s is not usable on this node: %s" % (gpu["uuid"], error))

    # 2. The desired node configuration.
    before = load_config(params["config_path"])
    desired = {uuid: dict(entry) for uuid, entry in before["gpus"].items()}
    for gpu in gpus:
        uuid = gpu["uuid"]
        if state == "absent":
            desired.pop(uuid, None)
            continue
        level = gpu["security_level"]
        entry = {"pool_id": gpu["pool_id"], "resource": pool_resource_name(gpu["pool_id"], params["resource_prefix"]),
                 "sharing_ratio": gpu["sharing_ratio"], "slots": gpu["sharing_ratio"],
                 "time_quantum_in_sec": gpu["time_quantum_in_sec"], "security_level": level,
                 "compute_mode": compute_mode_for(level, params["mps_compute_mode"])}
        if level in MPS_SECURITY_LEVELS:
            entry.update(slot_limits(gpu["sharing_ratio"], memory_mb[uuid]))
        desired[uuid] = entry
    changed = desired != before["gpus"]
    version = before["version"] + 1 if changed else before["version"]
    text = dump_yaml({"version": version, "gpus": desired})
    current = read_text(params["config_path"])
    changed_files, diffs = [], []
    if current != text:
        changed_files.append(params["config_path"])
        diffs.append({"before_header": params["config_path"], "after_header": params["config_path"],
                      "before": current or "", "after": text})
        if not module.check_mode:
            write_atomically(module, params["config_path"], text)
    return dict(changed=bool(changed_files), version=version, gpus=desired, resources=resource_counts(desired),
                changed_files=changed_files, diff=diffs)


if __name__ == "__main__":
    main()
