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

# Security level -> the NVML compute mode it requires (see docs/gpu-sharing.md); the gpuaas
# agent applies it on the node.
#   low:    time-slicing, shared contexts: DEFAULT.
#   medium: MPS, one control daemon per GPU, with per-slot memory and compute limits:
#           EXCLUSIVE_PROCESS, as NVIDIA recommends for MPS (the MPS server is then the GPU's
#           one context); an operator whose GPU modes must not change keeps DEFAULT instead
#           (MPS_COMPUTE_MODES, the gpu_sharing module's mps_compute_mode).
#   high:   one tenant's contexts on the GPU at a time, no MPS: EXCLUSIVE_PROCESS.
COMPUTE_MODE_BY_SECURITY_LEVEL = {"low": "DEFAULT", "medium": "EXCLUSIVE_PROCESS", "high": "EXCLUSIVE_PROCESS"}
MPS_COMPUTE_MODES = ("EXCLUSIVE_PROCESS", "DEFAULT")
# The compute mode of GPUs in no pool (advertised as whole GPUs) and of GPUs leaving a pool.
DEFAULT_COMPUTE_MODE = "DEFAULT"
# The security levels whose GPUs run an MPS control daemon.
MPS_SECURITY_LEVELS = ("medium",)

# The extended resource a pool's slots are advertised as by the gpuaas agent; tenants' Pods
# request it (resources.limits). Deployments may choose another prefix (the role's
# gpu_sharing_resource_prefix, the service's GPUAAS_POOL_RESOURCE_PREFIX).
POOL_RESOURCE_PREFIX = "gpuaas.hosted.ai/pool-"


def compute_mode_for(security_level, mps_compute_mode=MPS_COMPUTE_MODES[0]):
    """The compute mode a GPU of this security level is given."""
    if security_level in MPS_SECURITY_LEVELS:
        return mps_compute_mode
    return COMPUTE_MODE_BY_SECURITY_LEVEL[security_level]


def pool_resource_name(pool_id, prefix=POOL_RESOURCE_PREFIX):
    return "%s%d" % (prefix, pool_id)


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
