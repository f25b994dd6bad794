"""What a node reports, checked before any of it is stored.

A scan's GPUs and NPUs, its driver versions and the node's hardware facts come from the node, whose
root may be hostile (a tenant who escaped a container). Stored as sent, a value would be a template
the next time it reached Ansible (runner.as_data stops that) and text in every client's reply. So
each value must have its real format and fit its column (validation.py); a report holding one that
does not is refused whole, naming what was wrong, and none of it is stored.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re

from sqlalchemy import select

from . import validation
from .db import session
from .models import Gpu, Node, Npu, column_length

MAX_INDEX = MAX_MEMORY_MB = validation.MAX_INT32  # the index and memory columns are 32-bit integers
MAX_BYTES = 2**63 - 1  # a JSON number the database keeps exactly
MAX_ENTRIES = 1024  # volume groups or filesystems in one storage report
MAX_SLOTS = 8192  # slots in one agent's tenant report (a node of 64 GPUs at ratio 10 has 640)
MAX_FIGURE = 1e15  # a vRAM or GPU-seconds figure an agent can report (finite, and far beyond any GPU)
# The slot states an agent reports (gpuaas_agent.tenants.SLOT_STATES).
SLOT_STATES = ("free", "idle", "running", "unknown")


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


def check_gpu_report(report: dict) -> None:
    """A gpu_info result (roles/gpu_scan): the driver, and each GPU that answered."""
    _text(report.get("driver_version"), validation.VERSION, column_length(Node.nvidia_driver_version), "driver version",
          "a version such as 550.54.15", optional=True)
    _text(report.get("cuda_version"), validation.VERSION, column_length(Node.cuda_version), "CUDA version",
          "a version such as 12.4", optional=True)
    gpus = report.get("gpus", [])
    if not isinstance(gpus, list):
        raise InvalidNodeReport("GPU list", "a list")
    seen: set[str] = set()
    for position, entry in enumerate(gpus):
        if not isinstance(entry, dict):
            raise InvalidNodeReport(f"GPU #{position}", "an object")
        if entry.get("status") == "ok":
            _check_gpu(entry, position)
            if entry["uuid"] in seen:
                raise InvalidNodeReport(f"GPU #{position}'s UUID", "each GPU's own: this one was listed twice")
            seen.add(entry["uuid"])


def check_gpu_owners(node: Node, report: dict) -> None:
    """A GPU UUID is the GPU's own, worldwide: one that another node holds is not this node's (a
    node claiming another's GPUs would take them, and its pool slots, over)."""
    positions = {entry["uuid"]: position for position, entry in enumerate(report.get("gpus", []))
                 if entry.get("status") == "ok"}
    taken = session().scalar(select(Gpu.uuid).where(Gpu.uuid.in_(positions), Gpu.node_id != node.id).limit(1))
    if taken is not None:
        raise InvalidNodeReport(f"GPU #{positions[taken]}'s UUID", "unique: another node holds that GPU")


def _check_gpu(entry: dict, position: int) -> None:
    where = f"GPU #{position}'s"
    _count(entry.get("index"), MAX_INDEX, f"{where} index")
    _text(entry.get("uuid"), validation.GPU_UUID, validation.GPU_UUID_MAX_LENGTH, f"{where} UUID",
          "GPU-<uuid>, MIG-<uuid> or MIG-GPU-<uuid>/<gi>/<ci>")
    _text(entry.get("model"), validation.PRODUCT_NAME, column_length(Gpu.model), f"{where} model name",
          "a product name: letters, digits, spaces and . _ ( ) @ / + , : # -")
    _count(entry.get("memory_mb"), MAX_MEMORY_MB, f"{where} memory")
    _text(entry.get("vendor"), validation.WORD, column_length(Gpu.vendor), f"{where} vendor", "a word", optional=True)
    _text(entry.get("pci_bus_id"), validation.PCI_BUS_ID, column_length(Gpu.pci_bus_id), f"{where} PCI bus id",
          "domain:bus:device.function in hex", optional=True)
    for mode, column in (("compute_mode", Gpu.compute_mode), ("mig_mode", Gpu.mig_mode)):
        _text(entry.get(mode), validation.WORD, column_length(column), f"{where} {mode.replace('_', ' ')}", "a word",
              optional=True)


def check_npu_report(report: dict) -> None:
    """An npu_info result (roles/npu_scan): each NPU npu-smi listed."""
    npus = report.get("npus", [])
    if not isinstance(npus, list):
        raise InvalidNodeReport("NPU list", "a list")
    seen: set[int] = set()
    for position, entry in enumerate(npus):
        where = f"NPU #{position}'s"
        if not isinstance(entry, dict):
            raise InvalidNodeReport(f"NPU #{position}", "an object")
        _count(entry.get("id"), MAX_INDEX, f"{where} id")
        if entry["id"] in seen:
            raise InvalidNodeReport(f"{where} id", "each NPU's own: this one was listed twice")
        seen.add(entry["id"])
        _text(entry.get("chip_name"), validation.PRODUCT_NAME, column_length(Npu.chip_name), f"{where} chip name",
              "a product name such as 910B3", optional=True)
        _count(entry.get("memory_mb"), MAX_MEMORY_MB, f"{where} memory", optional=True)
        _text(entry.get("health"), validation.WORD, column_length(Npu.health), f"{where} health", "a word such as OK")


def cpu_model(value) -> str | None:
    """The node's CPU model as stored, or None where the node told none; InvalidNodeReport for
    anything /proc/cpuinfo cannot hold."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    _text(value.strip() if isinstance(value, str) else value, validation.PRODUCT_NAME, column_length(Node.cpu_model),
          "CPU model", "a model name as /proc/cpuinfo prints it")
    return value.strip()


def hostname(value) -> str | None:
    """The node's own host name (uname -n) if it is one (RFC 1123), else None."""
    return value if isinstance(value, str) and validation.HOSTNAME.fullmatch(value) else None


def storage_report(report) -> dict:
    """A storage_info result (roles/storage_metrics) as stored: only its checked parts."""
    if not isinstance(report, dict):
        raise InvalidNodeReport("storage report", "an object")
    checked: dict = {"volume_groups": [_volume_group(entry, f"volume group #{position}")
                                       for position, entry in enumerate(_entries(report, "volume_groups"))],
                     "filesystems": [_filesystem(entry, f"filesystem #{position}")
                                     for position, entry in enumerate(_entries(report, "filesystems"))]}
    if report.get("volume_group") is not None:
        checked["volume_group"] = _volume_group(report["volume_group"], "volume group")
    return checked


def _entries(report: dict, key: str) -> list:
    entries = report.get(key, [])
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise InvalidNodeReport(key.replace("_", " "), f"a list of {MAX_ENTRIES} at most")
    return entries


def _sizes(entry: dict, label: str) -> dict:
    for key in ("size_bytes", "free_bytes", "used_bytes"):
        _count(entry.get(key), MAX_BYTES, f"{label}'s {key.replace('_', ' ')}")
    return {key: entry[key] for key in ("size_bytes", "free_bytes", "used_bytes")}


def _volume_group(entry, label: str) -> dict:
    if not isinstance(entry, dict):
        raise InvalidNodeReport(label, "an object")
    _text(entry.get("name"), validation.VOLUME_GROUP, 127, f"{label}'s name", "an LVM volume group name")
    return {"name": entry["name"], **_sizes(entry, label)}


def _filesystem(entry, label: str) -> dict:
    if not isinstance(entry, dict):
        raise InvalidNodeReport(label, "an object")
    _text(entry.get("path"), validation.ABSOLUTE_PATH, 4095, f"{label}'s path", "an absolute path")
    return {"path": entry["path"], **_sizes(entry, label)}


def volume_group_name(value) -> str:
    """The volume group a storage node's init chose (roles/node_init: its largest), as stored."""
    _text(value, validation.VOLUME_GROUP, column_length(Node.volume_group), "volume group", "an LVM volume group name")
    return value


def cluster_facts(facts) -> dict:
    """What an enable reports of its cluster (roles/cluster_controller's facts), as stored."""
    if not isinstance(facts, dict):
        raise InvalidNodeReport("cluster facts", "an object")
    address = facts.get("api_server_address")
    if address is not None and not (isinstance(address, str) and (validation.HOSTNAME.fullmatch(address) or validation.is_ip_address(address))):
        raise InvalidNodeReport("API server address", "an IP address or a host name")
    port = facts.get("api_server_port")
    port = int(port) if isinstance(port, str) and port.isdigit() and len(port) <= 5 else port  # `| int` in a role var
    _count(port, 65535, "API server port", minimum=1)
    checked = {"api_server_address": address, "api_server_port": port}
    for key in ("pod_network_cidr", "service_cidr"):
        if facts.get(key) is not None:
            checked[key] = _network(facts[key], key.replace("_", " "))
    if facts.get("controller") is not None:
        _text(facts["controller"], validation.HOSTNAME, 63, "controller name", "a Kubernetes node name")
        checked["controller"] = facts["controller"]
    return checked


def _network(value, where: str) -> str:
    try:
        if isinstance(value, str) and len(value) <= 49:  # an IPv6 address and its /128
            return str(ipaddress.ip_network(value))
    except ValueError:
        pass
    raise InvalidNodeReport(where, "a network in CIDR notation")


@dataclasses.dataclass(frozen=True)
class SlotReport:
    """One slot of an agent's tenant report, checked: who holds it (None: free) and their figures."""
    gpu_uuid: str
    slot: int  # 1..ratio, as the agent numbers them; 0 for a whole GPU's device
    resource: str
    state: str
    team: str | None = None  # the Pod's namespace
    pod: str | None = None
    container: str | None = None
    pod_uid: str | None = None
    vram_used_mb: float = 0.0
    gpu_seconds: float = 0.0


def tenant_report(report) -> list[SlotReport]:
    """An agent's ``tenants`` section (gpuaas_agent.tenants; docs/agent.md, "Tenants"), checked
    whole: its slots, each with its holder's names (Kubernetes' rules) and finite figures."""
    if not isinstance(report, dict):
        raise InvalidNodeReport("tenant report", "an object")
    slots = report.get("slots", {})
    if not isinstance(slots, dict) or len(slots) > MAX_SLOTS:
        raise InvalidNodeReport("tenant slots", f"an object of {MAX_SLOTS} slots at most")
    return [_slot(device_id, entry) for device_id, entry in slots.items()]


def _slot(device_id, entry) -> SlotReport:
    where = "slot"
    matched = validation.SLOT_DEVICE_ID.fullmatch(device_id) if isinstance(device_id, str) else None
    if matched is None:
        raise InvalidNodeReport("slot's device ID", "<GPU UUID>::<slot number>, or a GPU UUID (a whole GPU)")
    if not isinstance(entry, dict):
        raise InvalidNodeReport(f"{where} {device_id}", "an object")
    if entry.get("state") not in SLOT_STATES:
        raise InvalidNodeReport(f"{where} {device_id}'s state", "one of " + ", ".join(SLOT_STATES))
    _text(entry.get("resource"), validation.PRINTABLE_TEXT, 253, f"{where} {device_id}'s resource", "printable text")
    figures = {name: _figure(entry.get(name, 0), f"{where} {device_id}'s {name}") for name in ("vram_used_mb", "gpu_seconds")}
    # A whole GPU's device (the agent's whole-GPU resource) is its UUID alone: slot 0, no pool's.
    checked = SlotReport(matched["uuid"], int(matched["slot"] or 0), entry["resource"], entry["state"], **figures)
    tenant = entry.get("tenant")
    if tenant is None or entry["state"] in ("free", "unknown"):
        return checked
    if not isinstance(tenant, dict):
        raise InvalidNodeReport(f"{where} {device_id}'s tenant", "an object")
    _text(tenant.get("namespace"), validation.DNS_LABEL, 63, f"{where} {device_id}'s namespace", "a DNS-1123 label")
    _text(tenant.get("pod"), validation.DNS_SUBDOMAIN, 253, f"{where} {device_id}'s Pod name", "a DNS-1123 subdomain")
    _text(tenant.get("container"), validation.DNS_LABEL, 63, f"{where} {device_id}'s container name", "a DNS-1123 label")
    _text(tenant.get("uid"), validation.POD_UID, 36, f"{where} {device_id}'s Pod UID", "a UUID", optional=True)
    return dataclasses.replace(checked, team=tenant["namespace"], pod=tenant["pod"], container=tenant["container"],
                               pod_uid=tenant.get("uid"))


def _figure(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_FIGURE:
        raise InvalidNodeReport(where, f"a number from 0 to {MAX_FIGURE:g}")
    return float(value)
