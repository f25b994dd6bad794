"""What a node reports, checked before any of it is stored.

A scan's GPUs and NPUs, its driver versions and the node's hardware facts come from the node, whose
root may be hostile (a tenant who escaped a container). Stored as sent, a value would be a template
the next time it reached Ansible (runner.as_data stops that) and text in every client's reply. So
each value must have its real format and fit its column (validation.py); a report holding one that
does not is refused whole, naming what was wrong, and none of it is stored.
"""
from __future__ import annotations

import re

from . import validation
from .models import Gpu, Node, Npu

MAX_INDEX = validation.MAX_GPU_INDEX  # the index and memory columns are 32-bit integers
MAX_MEMORY_MB = 2**31 - 1


class InvalidNodeReport(ValueError):
    """A node reported a value that is not what the hardware or the OS can report."""

    def __init__(self, where: str, rule: str):
        super().__init__(f"the node reported an invalid {where} ({rule}); nothing of its report was stored")
        self.where = where


def _text(value, pattern: re.Pattern, max_length: int, where: str, rule: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > max_length or not pattern.fullmatch(value):
        raise InvalidNodeReport(where, f"{rule}, {max_length} characters at most")


def _count(value, maximum: int, where: str, optional: bool = False, minimum: int = 0) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise InvalidNodeReport(where, f"an integer from {minimum} to {maximum}")


def _length(column) -> int:
    return column.type.length


def check_gpu_report(report: dict) -> None:
    """A gpu_info result (roles/gpu_scan): the driver, and each GPU that answered."""
    _text(report.get("driver_version"), validation.VERSION, _length(Node.nvidia_driver_version), "driver version",
          "a version such as 550.54.15", optional=True)
    _text(report.get("cuda_version"), validation.VERSION, _length(Node.cuda_version), "CUDA version",
          "a version such as 12.4", optional=True)
    gpus = report.get("gpus", [])
    if not isinstance(gpus, list):
        raise InvalidNodeReport("GPU list", "a list")
    for position, entry in enumerate(gpus):
        if not isinstance(entry, dict):
            raise InvalidNodeReport(f"GPU #{position}", "an object")
        if entry.get("status") == "ok":
            _check_gpu(entry, position)


def _check_gpu(entry: dict, position: int) -> None:
    where = f"GPU #{position}'s"
    _count(entry.get("index"), MAX_INDEX, f"{where} index")
    _text(entry.get("uuid"), validation.GPU_UUID, validation.GPU_UUID_MAX_LENGTH, f"{where} UUID",
          "GPU-<uuid>, MIG-<uuid> or MIG-GPU-<uuid>/<gi>/<ci>")
    _text(entry.get("model"), validation.PRODUCT_NAME, _length(Gpu.model), f"{where} model name",
          "a product name: letters, digits, spaces and . _ ( ) @ / + , : # -")
    _count(entry.get("memory_mb"), MAX_MEMORY_MB, f"{where} memory")
    _text(entry.get("vendor"), validation.WORD, _length(Gpu.vendor), f"{where} vendor", "a word", optional=True)
    _text(entry.get("pci_bus_id"), validation.PCI_BUS_ID, _length(Gpu.pci_bus_id), f"{where} PCI bus id",
          "domain:bus:device.function in hex", optional=True)
    for mode, column in (("compute_mode", Gpu.compute_mode), ("mig_mode", Gpu.mig_mode)):
        _text(entry.get(mode), validation.WORD, _length(column), f"{where} {mode.replace('_', ' ')}", "a word",
              optional=True)


def check_npu_report(report: dict) -> None:
    """An npu_info result (roles/npu_scan): each NPU npu-smi listed."""
    npus = report.get("npus", [])
    if not isinstance(npus, list):
        raise InvalidNodeReport("NPU list", "a list")
    for position, entry in enumerate(npus):
        where = f"NPU #{position}'s"
        if not isinstance(entry, dict):
            raise InvalidNodeReport(f"NPU #{position}", "an object")
        _count(entry.get("id"), MAX_INDEX, f"{where} id")
        _text(entry.get("chip_name"), validation.PRODUCT_NAME, _length(Npu.chip_name), f"{where} chip name",
              "a product name such as 910B3", optional=True)
        _count(entry.get("memory_mb"), MAX_MEMORY_MB, f"{where} memory", optional=True)
        _text(entry.get("health"), validation.WORD, _length(Npu.health), f"{where} health", "a word such as OK")


def cpu_model(value) -> str | None:
    """The node's CPU model as stored, or None where the node told none; InvalidNodeReport for
    anything /proc/cpuinfo cannot hold."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    _text(value.strip() if isinstance(value, str) else value, validation.PRODUCT_NAME, _length(Node.cpu_model),
          "CPU model", "a model name as /proc/cpuinfo prints it")
    return value.strip()


def hostname(value) -> str | None:
    """The node's own host name (uname -n) if it is one (RFC 1123), else None."""
    return value if isinstance(value, str) and validation.HOSTNAME.fullmatch(value) else None
