# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A pool's sharing settings and what each one means on a node, defined once.

Pure Python with no Ansible import: the gpu_sharing and pool modules import it as
module_utils, and the REST service loads this same file (gpuaas_api.states), so the
ranges, the security levels and their isolation cannot drift apart.
"""
from __future__ import annotations

SHARING_RATIO_RANGE = (1, 10)  # virtual-GPU slots per physical GPU
TIME_QUANTUM_RANGE_SECONDS = (10, 120)
DEFAULT_TIME_QUANTUM_SECONDS = 30  # hosted·ai's published default
SECURITY_LEVELS = ("low", "medium", "high")

# Security level -> the NVML compute mode it requires (see docs/gpu-sharing.md).
#   low:    time-slicing, shared contexts: DEFAULT.
#   medium: time-slicing with per-slot memory and compute limits (MPS-style): DEFAULT.
#   high:   one tenant (process) at a time per quantum: EXCLUSIVE_PROCESS.
COMPUTE_MODE_BY_SECURITY_LEVEL = {"low": "DEFAULT", "medium": "DEFAULT", "high": "EXCLUSIVE_PROCESS"}
# What `state: absent` restores.
DEFAULT_COMPUTE_MODE = "DEFAULT"

# The device plugin's resource a pool's shared GPUs are advertised as (nvidia.com/<rename>).
POOL_RESOURCE_RENAME = "gpu.pool-%d"


def sharing_errors(sharing_ratio, time_quantum_in_sec, security_level):
    """Every way these settings leave the allowed ranges, as (field, message); empty when valid."""
    errors = []
    for field, value, (low, high) in (("sharing_ratio", sharing_ratio, SHARING_RATIO_RANGE),
                                      ("time_quantum_in_sec", time_quantum_in_sec, TIME_QUANTUM_RANGE_SECONDS)):
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append((field, "must be a whole number"))
        elif not low <= value <= high:
            errors.append((field, "must be between %d and %d" % (low, high)))
    if security_level not in SECURITY_LEVELS:
        errors.append(("security_level", "must be one of %s" % ", ".join(SECURITY_LEVELS)))
    return errors


def slot_limits(sharing_ratio, memory_mb):
    """The per-slot limits of a medium-level GPU: vRAM / ratio and 100 / ratio percent of compute."""
    return {"memory_limit_mb": memory_mb // sharing_ratio, "compute_share_percent": 100 // sharing_ratio}
