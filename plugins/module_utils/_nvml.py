# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVML access shared by the node-side modules (private to the collection).

Everything goes through nvidia-ml-py (``pynvml``), which loads
``libnvidia-ml.so.1`` from the driver; nothing here parses nvidia-smi output.
"""
from __future__ import annotations

# NVML's compute modes by value; 1 (EXCLUSIVE_THREAD) was removed from NVML
# but old drivers can still report it.
COMPUTE_MODES = {0: "DEFAULT", 1: "EXCLUSIVE_THREAD", 2: "PROHIBITED", 3: "EXCLUSIVE_PROCESS"}
COMPUTE_MODE_VALUES = {name: value for value, name in COMPUTE_MODES.items()}
MIG_MODES = {0: "disabled", 1: "enabled"}

NO_PYNVML = "nvidia-ml-py (the pynvml Python module) is not installed on this host"
NO_DRIVER = "No NVIDIA driver or NVML library on this host"
DRIVER_NOT_LOADED = "The NVIDIA driver is installed but not loaded on this host"


class NvmlUnavailable(Exception):
    """NVML cannot be used on this host; ``reason`` says why in one sentence."""

    def __init__(self, reason, driver_state):
        super().__init__(reason)
        self.reason = reason
        self.driver_state = driver_state


def import_pynvml():
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable(NO_PYNVML, "pynvml_missing")
    return pynvml


class NvmlSession(object):
    """``with NvmlSession() as nvml:`` initialises NVML and always shuts it down."""

    def __init__(self):
        self.nvml = import_pynvml()

    def __enter__(self):
        nvml = self.nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            code = getattr(error, "value", None)
            if code == nvml.NVML_ERROR_LIBRARY_NOT_FOUND:
                raise NvmlUnavailable(NO_DRIVER, "absent")
            if code == nvml.NVML_ERROR_DRIVER_NOT_LOADED:
                raise NvmlUnavailable(DRIVER_NOT_LOADED, "not_loaded")
            raise NvmlUnavailable("NVML failed to initialise: %s" % error, "error")
        return nvml

    def __exit__(self, *exc_info):
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass
        return False


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def cuda_version_string(encoded):
    """NVML encodes CUDA 12.4 as 12040."""
    return "%d.%d" % (encoded // 1000, (encoded % 1000) // 10)


def describe_driver(nvml):
    return {
        "driver_version": _text(nvml.nvmlSystemGetDriverVersion()),
        "cuda_version": cuda_version_string(nvml.nvmlSystemGetCudaDriverVersion_v2()),
        "gpu_count": nvml.nvmlDeviceGetCount(),
    }


def describe_gpu(nvml, index, include_metrics=False):
    """One GPU's identity and settings; a GPU that is lost is reported, not raised."""
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        mig_current, mig_pending = _mig_mode(nvml, handle)
        gpu = {
            "index": index,
            "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
            "vendor": "NVIDIA",
            "model": _text(nvml.nvmlDeviceGetName(handle)),
            "memory_mb": memory.total // (1024 * 1024),
            "pci_bus_id": _text(nvml.nvmlDeviceGetPciInfo(handle).busId),
            "compute_mode": COMPUTE_MODES.get(nvml.nvmlDeviceGetComputeMode(handle), "UNKNOWN"),
            "mig_mode": mig_current,
            "mig_mode_pending": mig_pending,
            "status": "ok",
        }
        if include_metrics:
            gpu["metrics"] = gpu_metrics(nvml, handle, memory)
        return gpu
    except nvml.NVMLError as error:
        lost = getattr(error, "value", None) == nvml.NVML_ERROR_GPU_IS_LOST
        return {"index": index, "vendor": "NVIDIA", "status": "lost" if lost else "error", "error": str(error)}


def _mig_mode(nvml, handle):
    try:
        current, pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError_NotSupported:
        return "unsupported", "unsupported"
    return MIG_MODES.get(current, "unknown"), MIG_MODES.get(pending, "unknown")


def gpu_metrics(nvml, handle, memory=None):
    memory = memory or nvml.nvmlDeviceGetMemoryInfo(handle)
    utilization = nvml.nvmlDeviceGetUtilizationRates(handle)
    return {
        "utilization_gpu_percent": utilization.gpu,
        "utilization_memory_percent": utilization.memory,
        "memory_used_mb": memory.used // (1024 * 1024),
        "temperature_c": nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU),
        "power_w": round(nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, 1),
    }
