"""Each advertised slot's tenant: the Pod and container that hold it, their processes on the
slot's GPU, the vRAM they use and the GPU time they received.

Three sources, joined every poll (docs/agent.md, "Tenants"):

- the kubelet's PodResources ``List`` (pod_resources.py): which device IDs each container of
  each Pod (namespace/name) holds;
- NVML (gpus.py): each GPU's processes with their vRAM, and their utilisation samples;
- each process's cgroup (cgroups.py): its Pod UID and container ID, which the process cannot
  choose; joined to namespace/name and the container's name through this node's Pod list from
  the API server (apiserver.py), which also gives each Pod's phase.

Nothing comes from a process's environment. A process whose Pod or container cannot be
established is reported unknown, never attributed; a Pod's process on a GPU its container holds
no slot of is listed under its Pod and flagged.
"""
from __future__ import annotations

import logging
import socket
import time

from .apiserver import ApiServerClient, ApiUnavailable
from .cgroups import ContainerCgroup, NotInPod, own_cgroup, process_cgroup
from .pod_resources import PodResourcesClient, PodResourcesUnavailable

log = logging.getLogger("gpuaas_agent.tenants")

# A slot is free (no container holds it), idle (held, no process on its GPU), running (held,
# with processes), or unknown (the kubelet's PodResources did not answer).
SLOT_STATES = ("free", "idle", "running", "unknown")
FLAG_OUTSIDE_ALLOCATION = "outside_allocation"  # on a GPU its container holds no slot of
FLAG_TERMINAL_POD = "terminal_pod"  # its Pod has ended (Succeeded/Failed) and holds nothing
MIB = 1024 * 1024
# After the API server failed, the next list is tried this much later (a hanging one holds a
# poll for api_timeout; this bounds how often).
API_RETRY_SECONDS = 5.0


def default_node_name() -> str:
    """The kubelet's default node name: the host name, lowercased (k8s.io/component-helpers
    node/util GetHostname, without --hostname-override)."""
    return socket.gethostname().strip().lower()


def integrate(samples: list, last_seen_us: int, integrated_to: dict) -> dict:
    """GPU seconds each pid received from utilisation samples: smUtil % of the interval since
    the pid's last integrated sample (or ``last_seen_us``, the time the samples are newer than).
    ``integrated_to`` (pid -> µs) is updated in place. Returns pid -> seconds."""
    received: dict = {}
    for pid, stamp, sm_percent in sorted(samples, key=lambda sample: sample[1]):
        start = max(integrated_to.get(pid, 0), last_seen_us)
        if stamp > start:
            received[pid] = received.get(pid, 0.0) + sm_percent / 100.0 * (stamp - start) / 1e6
            integrated_to[pid] = stamp
    return received


class Tenants:
    """Kept by the agent's loop: ``refresh`` once per poll, ``report`` read by the status."""

    def __init__(self, settings, gpus, pod_resources=None, api=None):
        self.settings = settings
        self.gpus = gpus
        self.pod_resources = pod_resources or PodResourcesClient(settings.pod_resources_socket,
                                                                 settings.pod_resources_timeout)
        self.api = api or ApiServerClient(settings.kubeconfig, settings.node_name, settings.api_timeout,
                                          fallback_node_name=default_node_name())
        self.own_cgroup = own_cgroup(settings.proc_root)
        self.report = {"state": "unknown", "reason": "not looked at yet", "pod_resources": "", "api_server": "",
                       "api_lists": 0, "gpu_errors": {}, "slots": {}, "flagged": [], "unknown": [], "infrastructure": []}
        self.pods = None  # the last Pod list: uid -> Pod
        self.api_error = ""
        self.listed_at = None  # monotonic time of the last list
        self.retry_at = 0.0
        self.listed_for = None  # the PodResources answer the last list was made for
        self.relisted_for: set = set()  # cgroups unseen in a list, each worth one list
        self.cgroups: dict = {}  # pid -> ContainerCgroup | NotInPod, while NVML lists the pid
        self.last_seen_us: dict = {}  # GPU -> µs
        self.integrated_to: dict = {}  # GPU -> {pid: µs}
        self.process_seconds: dict = {}  # (GPU, pid) -> GPU seconds received since first seen
        self.slot_seconds: dict = {}  # (device ID, Pod UID, container) -> GPU seconds (a counter)
        self.credited: dict = {}  # (device ID, Pod UID, container, pid) -> that process's seconds counted
        self.api_lists = 0
        self.sampled_at = None  # wall-clock seconds when the last poll read NVML (the counters' time)
        self.held_for = None  # (PodResources' list, slots, their entries for those slots, a comparable key)

    # ---------------------------------------------------------------- one poll
    def refresh(self, slots: dict, medium: set, gpus: list) -> None:
        """``slots``: device ID -> (resource, GPU UUID) for every advertised device; ``medium``:
        the GPUs whose tenants are MPS clients; ``gpus``: every GPU NVML knows."""
        seen = self.read_gpus(gpus, medium)
        try:
            held = self.pod_resources.list()
        except PodResourcesUnavailable as error:
            self.report = self.unknown_report(slots, seen, str(error))
            return
        held = self.advertised_only(held, slots)
        self.list_pods_if_due(held, seen)
        self.report = self.join(slots, held, seen, medium)

    def advertised_only(self, held: list, slots: dict) -> list:
        """The entries of the agent's own devices (other plugins' are not its business); kept
        while PodResources answers the same list and the same devices are advertised."""
        if self.held_for is not None and self.held_for[0] is held and self.held_for[1] == slots:
            return self.held_for[2]
        advertised = {(resource, device) for device, (resource, unused_gpu) in slots.items()}
        mine = [entry for entry in held if any((entry.resource, device) in advertised for device in entry.device_ids)]
        self.held_for = (held, dict(slots), mine, tuple(sorted((entry.namespace, entry.pod, entry.container, entry.resource,
                                                                entry.device_ids) for entry in mine)))
        return mine

    def read_gpus(self, gpus: list, medium: set):
        """NVML's processes per GPU (pid -> (bytes, MPS client)) with their cgroups; the GPU
        seconds each received since the last poll are added to its total (process_seconds)."""
        seen, live = {}, set()
        now_us = int(time.time() * 1e6)
        self.sampled_at = now_us / 1e6
        for uuid in gpus:
            # NVML's sample timestamps are CPU wall-clock µs: the first look takes nothing older.
            last_seen = self.last_seen_us.setdefault(uuid, now_us)
            found = self.gpus.processes(uuid, uuid in medium, last_seen)
            seen[uuid] = found
            integrated = self.integrated_to.setdefault(uuid, {})
            for pid, seconds in integrate(found.samples, last_seen, integrated).items():
                self.process_seconds[(uuid, pid)] = self.process_seconds.get((uuid, pid), 0.0) + seconds
            # No sample: nobody received GPU time up to this call, so the next window starts now. Left
            # at the last sample, an idle GPU's next window would span the idle time too, and NVML's
            # whole-percent smUtil over it loses up to 0.5 % of all of it (seconds, after a minute).
            self.last_seen_us[uuid] = max(last_seen, now_us, *(stamp for unused, stamp, unused_sm in found.samples))
            for pid in list(integrated):
                if pid not in found.processes:
                    del integrated[pid]
            live.update((uuid, pid) for pid in found.processes)
        for key in [key for key in self.process_seconds if key not in live]:
            del self.process_seconds[key]
        pids = {pid for unused, pid in live}
        # A cgroup is read once per process (a container's processes stay in its cgroup); one that
        # gave no path (it could not be read) is read again next time.
        self.cgroups = {pid: self.cached_cgroup(pid) for pid in pids}
        return seen

    def cached_cgroup(self, pid: int):
        found = self.cgroups.get(pid)
        if found is None or (isinstance(found, NotInPod) and not found.path):
            found = process_cgroup(self.settings.proc_root, pid)
        return found

    def list_pods_if_due(self, held: list, seen: dict) -> None:
        """The API server's Pod list is read again when PodResources answers differently, when a
        process's cgroup names a Pod or container the list lacks (once for each), when the last
        list is older than api_relist_seconds, and not sooner than API_RETRY_SECONDS after a failure."""
        now = time.monotonic()
        answer = self.held_for[3]  # PodResources' answer, in a form that compares
        unseen = {cgroup for cgroup in self.cgroups.values() if isinstance(cgroup, ContainerCgroup)
                  and not self.knows(cgroup) and cgroup not in self.relisted_for}
        due = (self.pods is None or answer != self.listed_for or bool(unseen)
               or now - self.listed_at >= self.settings.api_relist_seconds)
        if not due or now < self.retry_at:
            return
        self.relisted_for |= unseen
        self.listed_for = answer
        try:
            pods = self.api.pods()
        except ApiUnavailable as error:
            if str(error) != self.api_error:
                log.warning("tenants: this node's Pods cannot be listed: %s", error)
            self.api_error, self.retry_at = str(error), now + API_RETRY_SECONDS
            self.listed_for = None  # try again once the retry is due
            return
        self.api_lists += 1
        self.pods, self.api_error, self.listed_at = {pod.uid: pod for pod in pods}, "", now
        self.relisted_for = {cgroup for cgroup in self.relisted_for if not self.knows(cgroup)}

    def knows(self, cgroup: ContainerCgroup) -> bool:
        pod = (self.pods or {}).get(cgroup.pod_uid)
        return pod is not None and cgroup.container_id in pod.containers

    # ---------------------------------------------------------------- the join
    def join(self, slots: dict, held: list, seen: dict, medium: set) -> dict:
        by_name = {(pod.namespace, pod.name): pod for pod in (self.pods or {}).values()}
        holders, container_slots = {}, {}  # device -> (ns, pod, container); (ns, pod, container) -> {gpu: [devices]}
        for entry in held:
            for device in entry.device_ids:
                if device in slots and slots[device][0] == entry.resource:
                    key = (entry.namespace, entry.pod, entry.container)
                    pod = by_name.get((entry.namespace, entry.pod))
                    if pod is not None and pod.terminal:
                        continue  # an ended Pod holds nothing (kubernetes#119423)
                    holders[device] = key
                    container_slots.setdefault(key, {}).setdefault(slots[device][1], []).append(device)
        report_slots = {}
        for device, (resource, gpu) in sorted(slots.items()):
            key = holders.get(device)
            pod = by_name.get(key[:2]) if key else None
            tenant = None if key is None else {"namespace": key[0], "pod": key[1], "container": key[2],
                                               "uid": pod.uid if pod else None}
            report_slots[device] = {"resource": resource, "gpu": gpu, "state": "free" if key is None else "idle",
                                    "tenant": tenant, "processes": [], "vram_used_mb": 0.0,
                                    "shared_with": sorted(set(container_slots[key][gpu]) - {device}) if key else []}
        flagged, unknown, infrastructure = [], [], []
        attributed: dict = {}  # (ns, pod, container, gpu) -> [process entries]
        for gpu, found in sorted(seen.items()):
            for pid, (used, mps_client) in sorted(found.processes.items()):
                entry = {"pid": pid, "gpu": gpu, "vram_mb": round((used or 0) / MIB, 3),
                         "gpu_seconds": round(self.process_seconds.get((gpu, pid), 0.0), 6)}
                cgroup = self.cgroups.get(pid)
                if not isinstance(cgroup, ContainerCgroup):
                    if gpu in medium and not mps_client and self.own_cgroup and cgroup.path == self.own_cgroup:
                        infrastructure.append({**entry, "what": "MPS server"})  # the agent started its daemon
                    else:
                        unknown.append({**entry, "reason": cgroup.reason, "cgroup": cgroup.path})
                    continue
                reason = self.unidentified(cgroup)
                if reason:
                    unknown.append({**entry, "reason": reason, "cgroup": f"pod {cgroup.pod_uid}, container {cgroup.container_id}"})
                    continue
                pod = self.pods[cgroup.pod_uid]
                key = (pod.namespace, pod.name, pod.containers[cgroup.container_id])
                who = {"namespace": key[0], "pod": key[1], "container": key[2], "uid": pod.uid}
                if pod.terminal:
                    flagged.append({**entry, **who, "flag": FLAG_TERMINAL_POD, "slots": []})
                elif gpu not in container_slots.get(key, {}):
                    flagged.append({**entry, **who, "flag": FLAG_OUTSIDE_ALLOCATION,
                                    "slots": sorted(d for ds in container_slots.get(key, {}).values() for d in ds)})
                else:
                    attributed.setdefault(key + (gpu,), []).append(entry)
        self.account(report_slots, container_slots, attributed)
        return {"state": "ok", "reason": self.api_error and f"the Pod list is stale or missing: {self.api_error}",
                "pod_resources": "ok", "api_server": self.api_error or "ok", "api_lists": self.api_lists,
                "node_name": getattr(self.api, "node", ""), "sampled_at": self.sampled_at,
                "gpu_errors": {gpu: found.error for gpu, found in sorted(seen.items()) if found.error},
                "slots": report_slots, "flagged": flagged, "unknown": unknown, "infrastructure": infrastructure}

    def unidentified(self, cgroup: ContainerCgroup) -> str:
        """Why a process in a Pod's cgroup cannot be tied to a Pod's container, or ''."""
        if self.pods is None:
            return f"this node's Pod list is unavailable: {self.api_error}"
        pod = self.pods.get(cgroup.pod_uid)
        if pod is None:
            return f"Pod {cgroup.pod_uid} is not in this node's Pod list"
        if cgroup.container_id not in pod.containers:
            return f"container {cgroup.container_id} is not in the status of Pod {pod.namespace}/{pod.name}"
        return ""

    def account(self, report_slots: dict, container_slots: dict, attributed: dict) -> None:
        """A container holding k slots on a GPU: each of them lists its processes there and
        carries 1/k of their vRAM and GPU time, so that sums over slots are the container's."""
        counters, credited = {}, {}
        for key, gpus in container_slots.items():
            for gpu, devices in gpus.items():
                processes = attributed.get(key + (gpu,), [])
                share = 1.0 / len(devices)
                for device in devices:
                    slot = report_slots[device]
                    counter = (device, slot["tenant"]["uid"] or "", key[2])
                    # Each process's whole GPU time since the agent first saw it, less what this
                    # counter already has of it: time received before the process could be tied
                    # to its Pod (the Pod not yet in PodResources or the Pod list) is not lost.
                    added = 0.0
                    for entry in processes:
                        total = self.process_seconds.get((gpu, entry["pid"]), 0.0)
                        credited[counter + (entry["pid"],)] = total
                        added += max(0.0, total - self.credited.get(counter + (entry["pid"],), 0.0))
                    counters[counter] = self.slot_seconds.get(counter, 0.0) + share * added
                    slot["processes"] = list(processes)
                    slot["vram_used_mb"] = round(share * sum(entry["vram_mb"] for entry in processes), 3)
                    slot["gpu_seconds"] = round(counters[counter], 6)
                    slot["state"] = "running" if processes else "idle"
        for slot in report_slots.values():
            slot.setdefault("gpu_seconds", 0.0)
        # Counters of tenants gone are dropped: a new tenant starts a new series at 0.
        self.slot_seconds, self.credited = counters, credited

    def unknown_report(self, slots: dict, seen: dict, reason: str) -> dict:
        """PodResources did not answer: no slot's tenant is known, and no process is attributed."""
        if self.report.get("pod_resources") != reason:
            log.warning("tenants unknown: %s", reason)
        unknown = [{"pid": pid, "gpu": gpu, "vram_mb": round((used or 0) / MIB, 3),
                    "gpu_seconds": round(self.process_seconds.get((gpu, pid), 0.0), 6),
                    "reason": "the slots' tenants are unknown", "cgroup": ""}
                   for gpu, found in sorted(seen.items()) for pid, (used, unused) in sorted(found.processes.items())]
        return {"state": "unknown", "reason": reason, "pod_resources": reason, "api_server": self.api_error or "ok",
                "api_lists": self.api_lists, "sampled_at": self.sampled_at,
                "gpu_errors": {gpu: found.error for gpu, found in sorted(seen.items()) if found.error},
                "slots": {device: {"resource": resource, "gpu": gpu, "state": "unknown", "tenant": None, "processes": [],
                                   "vram_used_mb": None, "gpu_seconds": None, "shared_with": []}
                          for device, (resource, gpu) in sorted(slots.items())},
                "flagged": [], "unknown": unknown, "infrastructure": []}
