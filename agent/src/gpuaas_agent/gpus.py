"""The node's GPUs through NVML: which exist, their health, modes and readings.

The same NVML code as the collection's modules (nvml_access is module_utils/_nvml.py), so the
agent's readings are those the Ansible metrics path reports for the same GPU state.
"""
from __future__ import annotations

import dataclasses
import logging

from .nvml_access import COMPUTE_MODE_VALUES, COMPUTE_MODES, NvmlUnavailable, describe_gpu, import_pynvml

log = logging.getLogger("gpuaas_agent.gpus")


@dataclasses.dataclass
class GpuState:
    index: int
    uuid: str
    healthy: bool
    error: str = ""
    compute_mode: str = ""
    readings: dict = dataclasses.field(default_factory=dict)
    memory_mb: int = 0


@dataclasses.dataclass
class GpuProcesses:
    """One GPU's processes as NVML lists them: pid -> (vRAM bytes or None, an MPS client), and
    the per-process utilisation samples taken since the last look: (pid, timeStamp in µs, smUtil %)."""
    processes: dict = dataclasses.field(default_factory=dict)
    samples: list = dataclasses.field(default_factory=list)
    error: str = ""


class Gpus:
    """NVML kept initialised for the agent's life; the UUIDs are learnt by index at start, so
    that a GPU lost later is still known by its UUID (a lost GPU answers nothing)."""

    def __init__(self):
        self.nvml = None
        self.uuid_by_index: dict = {}
        self.unavailable = ""

    def start(self) -> bool:
        """Initialise NVML; False (with the reason in ``unavailable``) while it cannot be used."""
        if self.nvml is not None:
            return True
        try:
            nvml = import_pynvml()
            nvml.nvmlInit()
        except NvmlUnavailable as error:
            self.unavailable = error.reason
            return False
        except nvml.NVMLError as error:  # pylint: disable=used-before-assignment
            self.unavailable = f"NVML failed to initialise: {error}"
            return False
        self.nvml, self.unavailable = nvml, ""
        self.learn()
        return True

    def learn(self) -> None:
        """Learn the UUID of each GPU index not known yet (one that answered nothing at start, or
        that the driver did not count then, is learnt once it answers)."""
        try:
            count = self.nvml.nvmlDeviceGetCount()
        except self.nvml.NVMLError as error:
            log.warning("NVML cannot count the GPUs: %s", error)
            return
        for index in range(count):
            if index in self.uuid_by_index:
                continue
            described = describe_gpu(self.nvml, index)
            if "uuid" in described:
                self.uuid_by_index[index] = described["uuid"]
                log.info("GPU %d is %s", index, described["uuid"])

    def stop(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass
            self.nvml = None

    def probe(self, readings: bool = False) -> dict:
        """uuid -> GpuState for every GPU whose UUID is known (see learn)."""
        if not self.start():
            return {}
        self.learn()
        states = {}
        for index, uuid in sorted(self.uuid_by_index.items()):
            described = describe_gpu(self.nvml, index, include_metrics=readings)
            if described.get("status") != "ok" or described.get("uuid") != uuid:
                states[uuid] = GpuState(index, uuid, False, described.get("error", "GPU answers with another UUID"))
                continue
            states[uuid] = GpuState(index, uuid, True, compute_mode=described["compute_mode"],
                                    readings=described.get("metrics", {}), memory_mb=described["memory_mb"])
        return states

    def apply_modes(self, wanted: dict) -> dict:
        """Set each healthy GPU's compute mode (uuid -> mode name) and persistence mode on; a
        mode is set only when it differs. Returns uuid -> error for those that failed."""
        failures = {}
        if not self.start():
            return {uuid: self.unavailable for uuid in wanted}
        nvml = self.nvml
        for index, uuid in sorted(self.uuid_by_index.items()):
            if uuid not in wanted:
                continue
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                # Persistence keeps the driver's state (the compute mode among it) while no
                # client is open; neither survives a reboot, so the agent sets both at start.
                # Some GPUs refuse it (vGPU guests, nvidia-persistenced owning it): a warning,
                # not a reason to take the GPU's slots away.
                try:
                    if nvml.nvmlDeviceGetPersistenceMode(handle) != 1:
                        nvml.nvmlDeviceSetPersistenceMode(handle, 1)
                except nvml.NVMLError as error:
                    log.warning("GPU %s: cannot enable persistence mode: %s", uuid, error)
                current = COMPUTE_MODES.get(nvml.nvmlDeviceGetComputeMode(handle), "UNKNOWN")
                if current != wanted[uuid]:
                    nvml.nvmlDeviceSetComputeMode(handle, COMPUTE_MODE_VALUES[wanted[uuid]])
                    log.info("GPU %s: compute mode %s -> %s", uuid, current, wanted[uuid])
            except nvml.NVMLError as error:
                failures[uuid] = str(error)
                log.error("GPU %s: cannot set its modes: %s", uuid, error)
        return failures

    def processes(self, uuid: str, medium: bool, last_seen_us: int) -> GpuProcesses:
        """The GPU's compute processes (nvmlDeviceGetComputeRunningProcesses_v3), its MPS clients
        on a medium GPU (nvmlDeviceGetMPSComputeRunningProcesses_v3: under MPS the compute list
        holds the MPS server, whose clients are the tenants), and the utilisation samples newer
        than ``last_seen_us`` (nvmlDeviceGetProcessUtilization, which answers NOT_FOUND when
        there is none)."""
        index = next((i for i, known in self.uuid_by_index.items() if known == uuid), None)
        if self.nvml is None or index is None:
            return GpuProcesses(error=self.unavailable or "NVML does not know this GPU")
        nvml, found = self.nvml, GpuProcesses()
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            for process in nvml.nvmlDeviceGetComputeRunningProcesses_v3(handle):
                found.processes[process.pid] = (process.usedGpuMemory, False)
            if medium:
                for process in nvml.nvmlDeviceGetMPSComputeRunningProcesses_v3(handle):
                    found.processes[process.pid] = (process.usedGpuMemory, True)
        except nvml.NVMLError as error:
            return GpuProcesses(error=f"NVML cannot list its processes: {error}")
        try:
            found.samples = [(sample.pid, sample.timeStamp, sample.smUtil)
                             for sample in nvml.nvmlDeviceGetProcessUtilization(handle, last_seen_us)]
        except nvml.NVMLError as error:
            if getattr(error, "value", None) != nvml.NVML_ERROR_NOT_FOUND:
                found.error = f"NVML gives no process utilisation: {error}"
        return found
