"""What the agent advertises, and what Allocate hands a container: pure functions, no I/O.

A pool's resource advertises ``slots`` devices for each of the pool's GPUs on the node, with
IDs ``<GPU UUID>::<slot>`` (the form NVIDIA's plugin gives time-sliced replicas). GPUs in no
pool are advertised whole, with their UUID as the ID. IDs depend only on the configuration, so
they are the same after an agent restart or a reload: the kubelet's checkpoint of its
allocations refers to them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re

from .config import GpuShare, Settings, Sharing
from .sharing_policy import MPS_SECURITY_LEVELS

HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"  # the API's two health values (constants.go)
SLOT_SEPARATOR = "::"
# NVIDIA's volume-mounts hand-off (k8s-device-plugin internal/plugin/server.go,
# deviceListAsVolumeMountsHostPath / deviceListAsVolumeMountsContainerPathRoot): the toolkit reads
# a GPU from each /dev/null mount under this directory (cuda_image.go, DevicesFromMounts).
VISIBLE_DEVICES_VAR = "NVIDIA_VISIBLE_DEVICES"
DEVICE_MOUNT_HOST_PATH = "/dev/null"
DEVICE_MOUNT_ROOT = "/var/run/nvidia-container-devices"
# Where a medium container finds its MPS daemon's tmpfs (k8s-device-plugin mps/daemon.go, ShmDir).
MPS_CONTAINER_SHM = "/dev/shm"


@dataclasses.dataclass(frozen=True)
class Slot:
    id: str
    gpu: str  # the GPU's UUID


@dataclasses.dataclass(frozen=True)
class ResourcePlan:
    """One extended resource: its socket, and its devices in advertising order."""
    name: str
    endpoint: str
    slots: tuple
    shares: dict  # uuid -> GpuShare; empty for whole GPUs

    def gpu_of(self, device_id: str) -> str | None:
        return next((slot.gpu for slot in self.slots if slot.id == device_id), None)


def endpoint_for(resource: str) -> str:
    """The plugin's socket file name in the device-plugins directory: the resource's name
    without its domain, and a digest of the whole name so that two resources never share a
    socket (a changed prefix gives both names for a while); kept short because a Unix
    socket's path has at most 107 bytes."""
    digest = hashlib.sha256(resource.encode()).hexdigest()[:6]
    return "gpuaas-" + re.sub(r"[^A-Za-z0-9.-]+", "-", resource.rsplit("/", 1)[-1]) + f"-{digest}.sock"


def plan(sharing: Sharing, node_gpus: list[str], settings: Settings) -> dict:
    """Every resource to advertise: one per pool on the node, and the whole GPUs in no pool."""
    plans = {}
    for resource, shares in sharing.resources.items():
        slots = tuple(Slot(f"{share.uuid}{SLOT_SEPARATOR}{slot}", share.uuid)
                      for share in shares for slot in range(1, share.slots + 1))
        plans[resource] = ResourcePlan(resource, endpoint_for(resource), slots, {s.uuid: s for s in shares})
    free = [uuid for uuid in node_gpus if uuid not in sharing.gpus]
    if settings.whole_gpu_resource and free:
        name = settings.whole_gpu_resource
        plans[name] = ResourcePlan(name, endpoint_for(name), tuple(Slot(uuid, uuid) for uuid in free), {})
    return plans


def preferred(plan_: ResourcePlan, available: list[str], must_include: list[str], size: int, policy: str) -> list[str]:
    """GetPreferredAllocation: ``size`` IDs from ``available``, with ``must_include`` first.

    binpack fills the GPU with the fewest free slots first, so that whole GPUs stay free for
    tenants who need more; spread takes one slot from each GPU in turn, the GPU with the most
    free slots first, so that tenants share as few GPUs as possible."""
    chosen = [device for device in must_include if device in available][:size]
    by_gpu: dict = {}
    for slot in plan_.slots:
        if slot.id in available and slot.id not in chosen:
            by_gpu.setdefault(slot.gpu, []).append(slot.id)
    order = sorted(by_gpu, key=lambda gpu: (len(by_gpu[gpu]) if policy == "binpack" else -len(by_gpu[gpu]),
                                            plan_.slots.index(Slot(by_gpu[gpu][0], gpu))))
    if policy == "binpack":
        # A GPU that must_include already touches comes first: the container stays on it.
        touched = {plan_.gpu_of(device) for device in chosen}
        order.sort(key=lambda gpu: gpu not in touched)
        for gpu in order:
            for device in by_gpu[gpu]:
                if len(chosen) < size:
                    chosen.append(device)
        return chosen
    while len(chosen) < size and any(by_gpu.values()):
        for gpu in order:
            if by_gpu[gpu] and len(chosen) < size:
                chosen.append(by_gpu[gpu].pop(0))
    return chosen


class AllocationRefused(ValueError):
    """Allocate cannot give these devices; the message says why in one line."""


def container_allocation(plan_: ResourcePlan, device_ids: list[str], settings: Settings) -> dict:
    """Allocate's answer for one container: its GPUs, and its level's isolation.

    Returns {"envs", "mounts": [(container_path, host_path, read_only)], "cdi_devices"}."""
    per_gpu: dict = {}
    for device in device_ids:
        gpu = plan_.gpu_of(device)
        if gpu is None:
            raise AllocationRefused(f"unknown device {device} for {plan_.name}")
        per_gpu[gpu] = per_gpu.get(gpu, 0) + 1
    uuids = sorted(per_gpu)
    envs, mounts, cdi = device_list(uuids, settings)
    shares: list[GpuShare] = [plan_.shares[uuid] for uuid in uuids if uuid in plan_.shares]
    if shares:
        envs["GPUAAS_POOL_ID"] = str(shares[0].pool_id)
        envs["GPUAAS_SECURITY_LEVEL"] = shares[0].security_level
    mps = [share for share in shares if share.security_level in MPS_SECURITY_LEVELS]
    if len(mps) > 1:
        # One MPS control daemon per GPU, each with its own pipe directory, and a client
        # reaches one daemon: a medium container's slots must be on one GPU (GetPreferredAllocation
        # keeps them together where it can).
        raise AllocationRefused(f"{plan_.name}: medium (MPS) slots of one container must be on one GPU, "
                                f"not {len(mps)}")
    if mps:
        first = mps[0]
        # What NVIDIA's plugin mounts into an MPS client (internal/plugin/mps.go, updateReponse):
        # the daemon's pipe directory and its private /dev/shm, and nothing else of the host. The
        # pipe directory is read-write, as NVIDIA's: a client must connect to the control socket,
        # and what it may send there (quit, set_default_*) is not narrowed by the mount (docs/agent.md).
        mounts.append((settings.mps_container_pipe_dir, mps_pipe_dir(settings, first.uuid), False))
        mounts.append((MPS_CONTAINER_SHM, mps_shm_dir(settings, first.uuid), False))
        envs["CUDA_MPS_PIPE_DIRECTORY"] = settings.mps_container_pipe_dir
        # Limits scale with the slots the container holds on each GPU (NVIDIA's documented
        # form: "<uuid>=<N>M", comma-separated for several devices).
        envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = ",".join(
            f"{share.uuid}={share.memory_limit_mb * per_gpu[share.uuid]}M" for share in mps)
        envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(
            min(100, max(share.compute_share_percent * per_gpu[share.uuid] for share in mps)))
    return {"envs": envs, "mounts": mounts, "cdi_devices": cdi}


def device_list(uuids: list[str], settings: Settings) -> tuple[dict, list, list]:
    """The GPUs as each configured strategy hands them over: (envs, mounts, cdi_devices).

    As NVIDIA's getAllocateResponse does (k8s-device-plugin internal/plugin/server.go): envvar
    sets NVIDIA_VISIBLE_DEVICES to the UUIDs; volume-mounts (applied after it, so it wins) sets
    the variable to the mount directory and mounts /dev/null at <root>/<uuid> for each GPU
    (updateResponseForDeviceMounts, read-write as NVIDIA's); cdi-cri names CDI devices."""
    strategies = settings.device_list_strategy
    envs, mounts, cdi = {}, [], []
    if "envvar" in strategies:
        envs[VISIBLE_DEVICES_VAR] = ",".join(uuids)
    if "volume-mounts" in strategies:
        envs[VISIBLE_DEVICES_VAR] = DEVICE_MOUNT_ROOT
        mounts = [(f"{DEVICE_MOUNT_ROOT}/{uuid}", DEVICE_MOUNT_HOST_PATH, False) for uuid in uuids]
    if "cdi-cri" in strategies:
        cdi = [f"{settings.cdi_kind}={uuid}" for uuid in uuids]
    return envs, mounts, cdi


def mps_pipe_dir(settings: Settings, uuid: str) -> str:
    return f"{settings.mps_root}/{uuid}/pipe"


def mps_log_dir(settings: Settings, uuid: str) -> str:
    return f"{settings.mps_root}/{uuid}/log"


def mps_shm_dir(settings: Settings, uuid: str) -> str:
    """The GPU's MPS tmpfs: its daemon's /dev/shm, and its clients'."""
    return f"{settings.mps_root}/{uuid}/shm"
