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
  - Writes a versioned node configuration (O(config_path)) recording, per GPU, the pool, the sharing ratio
    and slot count, the time quantum, the security level, the compute mode and (medium level) the per-slot limits.
    Its C(version) goes up by one with every change.
  - Writes the Kubernetes device plugin's configuration for the node (O(device_plugin_config_path)), one named
    config in which each pool with a sharing ratio of 2 or more is one time-slicing resource, C(nvidia.com/gpu.pool-<id>),
    limited to that pool's GPUs with C(replicas) equal to the ratio. GPUs of ratio-1 pools get no sharing entry
    (the plugin rejects C(replicas=1)) and stay C(nvidia.com/gpu). RV(device_plugin_config_name) changes with the
    content, so relabelling the node with it makes the plugin load the new config.
  - Sets each GPU's compute mode through NVML from its security level (C(high) is EXCLUSIVE_PROCESS, C(low) and
    C(medium) are DEFAULT) and, for C(medium), writes the MPS-style per-slot limits (vRAM / ratio,
    100 / ratio % of compute) to O(runtime_limits_dir)C(/<uuid>.env).
  - O(state=absent) takes the GPUs out of their pools and restores their defaults (compute mode DEFAULT, no limits).
  - Every GPU is checked before anything is written; an unknown UUID or a setting out of range changes nothing.
author:
  - hosted·ai GPUaaS developers (@hostedai)
requirements:
  - nvidia-ml-py (C(pynvml)) and the NVIDIA driver on the managed node; root, to set compute modes
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
    description: The node's sharing configuration.
    type: path
    default: /etc/gpuaas/sharing.yaml
  device_plugin_config_path:
    description: The device plugin configuration written for this node.
    type: path
    default: /etc/gpuaas/device-plugin/config.yaml
  runtime_limits_dir:
    description: Where the per-GPU MPS-style limits of medium-level GPUs are written, one C(<uuid>.env) each.
    type: path
    default: /etc/gpuaas/mps
attributes:
  check_mode:
    support: full
    description: Reports the files and compute modes that would change, and changes nothing.
  diff_mode:
    support: full
    description: Shows each changed file before and after, and the compute modes that change.
notes:
  - The time quantum is the platform's scheduling period, enforced above the driver; the driver has no setting
    in seconds. It is recorded per GPU for the node's scheduler.
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
  sample: {"GPU-aaaa": {"pool_id": 1, "sharing_ratio": 4, "slots": 4, "time_quantum_in_sec": 30,
                        "security_level": "low", "compute_mode": "DEFAULT"}}
device_plugin_config_name:
  description: The name of the node's device plugin config, for the C(nvidia.com/device-plugin.config) label.
  returned: always
  type: str
  sample: gpuaas-3f9c2a1b7d
changed_files:
  description: The files written or removed (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: ["/etc/gpuaas/sharing.yaml", "/etc/gpuaas/device-plugin/config.yaml"]
compute_modes:
  description: Each configured GPU's compute mode after the run.
  returned: always
  type: dict
  sample: {"GPU-aaaa": "DEFAULT", "GPU-bbbb": "EXCLUSIVE_PROCESS"}
"""

import hashlib
import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostedai.gpuaas.plugins.module_utils._nvml import (
    COMPUTE_MODES, COMPUTE_MODE_VALUES, NvmlSession, NvmlUnavailable)
from ansible_collections.hostedai.gpuaas.plugins.module_utils.sharing_policy import (
    COMPUTE_MODE_BY_SECURITY_LEVEL, DEFAULT_COMPUTE_MODE, DEFAULT_TIME_QUANTUM_SECONDS, POOL_RESOURCE_RENAME,
    SECURITY_LEVELS, sharing_errors, slot_limits)

# The files are YAML written in its JSON form (a comment header, then JSON): readable by
# anything that reads YAML, and written and read here without PyYAML, which nodes may lack.
HEADER = "# Managed by hostedai.gpuaas.gpu_sharing: edits are overwritten.\n"


def load_config(path):
    if not os.path.exists(path):
        return {"version": 0, "gpus": {}}
    with open(path) as handle:
        body = "".join(line for line in handle if not line.startswith("#"))
    loaded = json.loads(body) if body.strip() else {}
    return {"version": int(loaded.get("version", 0)), "gpus": dict(loaded.get("gpus") or {})}


def dump_yaml(data, header=HEADER):
    return header + json.dumps(data, indent=2, sort_keys=True) + "\n"


def device_plugin_config(gpus):
    """One time-slicing resource per shared pool on the node; ratio-1 GPUs are left unshared."""
    pools = {}
    for uuid, entry in sorted(gpus.items()):
        if entry["sharing_ratio"] >= 2:
            pools.setdefault(entry["pool_id"], {"ratio": entry["sharing_ratio"], "devices": []})["devices"].append(uuid)
    config = {"version": "v1", "flags": {"migStrategy": "none"}}
    if pools:
        config["sharing"] = {"timeSlicing": {
            "renameByDefault": False,
            "failRequestsGreaterThanOne": True,
            "resources": [{"name": "nvidia.com/gpu", "rename": POOL_RESOURCE_RENAME % pool_id,
                           "devices": pool["devices"], "replicas": pool["ratio"]}
                          for pool_id, pool in sorted(pools.items())],
        }}
    name = "gpuaas-" + hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    return name, dump_yaml(config, HEADER + "# config name: %s\n" % name)


def limits_file(uuid, limits):
    # The variables NVIDIA's MPS control daemon and clients read.
    return ("# Managed by hostedai.gpuaas.gpu_sharing (security level medium)\n"
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=%s=%dM\n"
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=%d\n" % (uuid, limits["memory_limit_mb"], limits["compute_share_percent"]))


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
            device_plugin_config_path=dict(type="path", default="/etc/gpuaas/device-plugin/config.yaml"),
            runtime_limits_dir=dict(type="path", default="/etc/gpuaas/mps"),
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
    handles, memory_mb = {}, {}
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
        handles[gpu["uuid"]] = handle

    # 2. The desired node configuration.
    before = load_config(params["config_path"])
    desired = {uuid: dict(entry) for uuid, entry in before["gpus"].items()}
    for gpu in gpus:
        uuid = gpu["uuid"]
        if state == "absent":
            desired.pop(uuid, None)
            continue
        entry = {"pool_id": gpu["pool_id"], "sharing_ratio": gpu["sharing_ratio"], "slots": gpu["sharing_ratio"],
                 "time_quantum_in_sec": gpu["time_quantum_in_sec"], "security_level": gpu["security_level"],
                 "compute_mode": COMPUTE_MODE_BY_SECURITY_LEVEL[gpu["security_level"]]}
        if gpu["security_level"] == "medium":
            entry.update(slot_limits(gpu["sharing_ratio"], memory_mb[uuid]))
        desired[uuid] = entry
    config_changed = desired != before["gpus"]
    version = before["version"] + 1 if config_changed else before["version"]
    config_text = dump_yaml({"version": version, "gpus": desired})
    plugin_name, plugin_text = device_plugin_config(desired)

    # 3. Files: the node config, the device plugin config, the medium-level limits.
    files = {params["config_path"]: config_text, params["device_plugin_config_path"]: plugin_text}
    for gpu in gpus:
        path = os.path.join(params["runtime_limits_dir"], "%s.env" % gpu["uuid"])
        entry = desired.get(gpu["uuid"])
        files[path] = limits_file(gpu["uuid"], entry) if entry and entry["security_level"] == "medium" else None
    diffs, changed_files = [], []
    for path, text in files.items():
        current = read_text(path)
        if current == text:
            continue
        changed_files.append(path)
        diffs.append({"before_header": path, "after_header": path, "before": current or "", "after": text or ""})
        if not module.check_mode:
            if text is None:
                os.remove(path)
            else:
                write_atomically(module, path, text)

    # 4. Compute modes, last: a failure above leaves the GPUs as they were.
    modes, mode_changes = {}, {}
    for gpu in gpus:
        uuid = gpu["uuid"]
        if uuid not in handles:  # leaving its pool, and gone from the node: nothing to restore
            continue
        wanted = desired[uuid]["compute_mode"] if uuid in desired else DEFAULT_COMPUTE_MODE
        current = COMPUTE_MODES.get(nvml.nvmlDeviceGetComputeMode(handles[uuid]), "UNKNOWN")
        if current != wanted:
            mode_changes[uuid] = (current, wanted)
            if not module.check_mode:
                try:
                    nvml.nvmlDeviceSetComputeMode(handles[uuid], COMPUTE_MODE_VALUES[wanted])
                except nvml.NVMLError as error:
                    module.fail_json(msg="GPU %s: cannot set compute mode %s: %s" % (uuid, wanted, error),
                                     changed=bool(changed_files))
        modes[uuid] = wanted
    if mode_changes:
        diffs.append({"before_header": "compute modes", "after_header": "compute modes",
                      "before": "".join("%s: %s\n" % (uuid, c[0]) for uuid, c in sorted(mode_changes.items())),
                      "after": "".join("%s: %s\n" % (uuid, c[1]) for uuid, c in sorted(mode_changes.items()))})

    return dict(changed=bool(changed_files or mode_changes), version=version, gpus=desired,
                device_plugin_config_name=plugin_name, compute_modes=modes, changed_files=changed_files, diff=diffs)


if __name__ == "__main__":
    main()
