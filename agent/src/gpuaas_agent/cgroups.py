"""Which Pod and container a process runs in, from its cgroup (cgroup v2 only).

A process's cgroup is set by the container runtime and the kubelet, not by the process: a
container cannot move itself out of its own cgroup (its cgroupfs is read-only unless it is
privileged, and a cgroup it creates under its own stays under it). So the cgroup is the
identity the agent trusts; nothing in a process's environment is.

The unified hierarchy's line of ``/proc/<pid>/cgroup`` is ``0::<path>`` (cgroups(7), "/proc/pid/cgroup";
the kernel's Documentation/admin-guide/cgroup-v2.rst). The path's Kubernetes part is laid out
by the kubelet (the Pod's cgroup) and containerd (the container's, under it):

- **systemd driver** (kubelet ``cgroupDriver: systemd``, the kubeadm default): the kubelet names
  the Pod's cgroup ``["kubepods", <qos>, "pod<uid>"]`` (pkg/kubelet/cm/pod_container_manager_linux.go,
  GetPodContainerName; Guaranteed Pods have no QoS level, qos_container_manager_linux.go) and
  converts it to nested slices, each name prefixed by its parents' and with ``-`` escaped as
  ``_`` (pkg/kubelet/cm/cgroup_manager_linux.go, ToSystemd / systemd's ExpandSlice):
  ``kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice``, or
  ``kubepods.slice/kubepods-pod<uid with _>.slice`` for Guaranteed. containerd's CRI plugin gives
  the container ``<pod slice>:cri-containerd:<id>`` when the parent is a ``.slice`` (the CRI plugin's
  getCgroupsPath, "runc systemd cgroup path format is slice:prefix:name"; pkg/cri/server
  helpers_linux.go in 1.7, internal/cri/server in 2.x), which runc's systemd driver runs as the
  unit ``cri-containerd-<id>.scope`` under that slice.
- **cgroupfs driver**: ``kubepods/<qos>/pod<uid>/<id>``, or ``kubepods/pod<uid>/<id>`` for
  Guaranteed (the same names, joined as directories; containerd's getCgroupsPath joins the
  parent and the ID: filepath.Join(cgroupsParent, id)).

The container ID is the 64-hex-digit ID that the Pod's status reports as ``containerd://<id>``.
The first ``kubepods`` component is taken, whatever comes before it (the kubelet's
``--cgroup-root``); what comes after the container's component is still that container (a
cgroup it created under its own), so a process cannot claim another Pod by nesting one.
"""
from __future__ import annotations

import dataclasses
import os
import re

QOS_CLASSES = ("burstable", "besteffort")  # Guaranteed Pods sit directly under kubepods
CONTAINER_ID = r"[0-9a-f]{64}"
# A Pod UID: a UUID as the API server makes it, or 32 hex digits (a static Pod's UID is a hash
# of its manifest: pkg/kubelet/config/common.go, applyDefaults).
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}"
_UUID_ESCAPED = r"[0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12}|[0-9a-f]{32}"  # systemd's - as _
_QOS = "|".join(QOS_CLASSES)
_SYSTEMD = re.compile(
    rf"kubepods\.slice/(?:kubepods-(?P<qos>{_QOS})\.slice/kubepods-(?P=qos)-|kubepods-)"
    rf"pod(?P<uid>{_UUID_ESCAPED})\.slice/cri-containerd-(?P<id>{CONTAINER_ID})\.scope(?:/.*)?")
_CGROUPFS = re.compile(rf"kubepods/(?:(?:{_QOS})/)?pod(?P<uid>{_UUID})/(?P<id>{CONTAINER_ID})(?:/.*)?")


@dataclasses.dataclass(frozen=True)
class ContainerCgroup:
    pod_uid: str  # as the API server writes it (with -)
    container_id: str


@dataclasses.dataclass(frozen=True)
class NotInPod:
    """A process the agent cannot tie to a Pod's container, and why (one line)."""
    reason: str
    path: str = ""  # its cgroup v2 path, where there is one


def parse_cgroup_file(text: str):
    """The content of /proc/<pid>/cgroup -> ContainerCgroup, or NotInPod with the reason."""
    lines = [line for line in text.splitlines() if line.startswith("0::")]
    if len(lines) != 1:
        return NotInPod("no cgroup v2 (0::) line" if not lines else "more than one cgroup v2 (0::) line")
    return parse_cgroup_path(lines[0][3:])


def parse_cgroup_path(path: str):
    if not path.startswith("/") or "\x00" in path:
        return NotInPod("not a cgroup path", path)
    parts = path.split("/")
    first = next((n for n, part in enumerate(parts) if part in ("kubepods", "kubepods.slice")), None)
    if first is None:
        return NotInPod("not in a Pod's cgroup", path)
    tail = "/".join(parts[first:])
    found = _SYSTEMD.fullmatch(tail)
    if found:
        return ContainerCgroup(found["uid"].replace("_", "-"), found["id"])
    found = _CGROUPFS.fullmatch(tail)
    if found:
        return ContainerCgroup(found["uid"], found["id"])
    return NotInPod("under kubepods but not a container's cgroup", path)


def process_cgroup(proc_root: str, pid: int):
    """The process's Pod and container, or NotInPod: a cgroup that cannot be read is never guessed."""
    try:
        with open(os.path.join(proc_root, str(pid), "cgroup"), encoding="utf-8", errors="replace") as handle:
            text = handle.read(65536)
    except OSError as error:
        return NotInPod(f"its cgroup cannot be read: {error.strerror or error}")
    return parse_cgroup_file(text)


def own_cgroup(proc_root: str):
    """The agent's own cgroup v2 path (the MPS daemons it starts run in it), or None."""
    try:
        with open(os.path.join(proc_root, "self", "cgroup"), encoding="utf-8", errors="replace") as handle:
            lines = [line[3:] for line in handle.read(65536).splitlines() if line.startswith("0::")]
    except OSError:
        return None
    return lines[0] if len(lines) == 1 else None
