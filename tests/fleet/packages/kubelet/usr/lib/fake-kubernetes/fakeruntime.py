"""The kubelet stand-in's containers (package kubelet): each Pod's QoS class and cgroups, named as
the real kubelet and containerd name them, and the containers themselves, real processes, each
run by a shim (fake-containerd-shim, beside this file) that outlives the kubelet.

Cgroup v2 only: kubelets from 1.35 on refuse a cgroup v1 host (KEP-5573, failCgroupV1 true by
default).  The fleet's nodes see the host's hybrid layout (docs/test-fleet.md): the stand-in uses
the unified hierarchy there (/sys/fs/cgroup/unified), where a real 1.37 kubelet would refuse to
start; the `0::` line of /proc/PID/cgroup is the same either way.
"""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM = os.path.join(HERE, "fake-containerd-shim")
CGROUP2_MOUNTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
GUARANTEED, BURSTABLE, BEST_EFFORT = "Guaranteed", "Burstable", "BestEffort"
# pkg/apis/core/v1/helper/qos/qos.go: supportedQoSComputeResources.
QOS_RESOURCES = ("cpu", "memory")
# containerd pkg/cri/server/helpers_linux.go: the systemd cgroup path's prefix for a container.
SYSTEMD_SCOPE_PREFIX = "cri-containerd"

# resource.Quantity suffixes (apimachinery pkg/api/resource/suffix.go).
_BINARY = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
_DECIMAL = {"n": Fraction(1, 10 ** 9), "u": Fraction(1, 10 ** 6), "m": Fraction(1, 1000), "": 1, "k": 10 ** 3,
            "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12, "P": 10 ** 15, "E": 10 ** 18}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")


def quantity(text) -> Fraction:
    """A resource.Quantity's value ("500m", "1Gi", "2", "1e3")."""
    found = _QUANTITY.match(str(text).strip())
    if not found:
        raise ValueError(f"quantities must match the regular expression '{_QUANTITY.pattern}'")
    number, suffix = Fraction(found.group(1)), found.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * (_BINARY.get(suffix) or _DECIMAL[suffix])


def qos_class(pod: dict) -> str:
    """The Pod's QoS class: status.qosClass when the API server set it, else computed as
    pkg/apis/core/v1/helper/qos/qos.go ComputePodQOS does (pod-level resources not modelled): over
    the containers and init containers, cpu and memory only, zero quantities ignored; no request
    and no limit is BestEffort; every container limiting both, and the summed requests equal to the
    summed limits, is Guaranteed; anything else Burstable."""
    if pod.get("status", {}).get("qosClass"):
        return pod["status"]["qosClass"]
    spec = pod.get("spec", {})
    requests: dict = {}
    limits: dict = {}
    guaranteed = True
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        resources = container.get("resources") or {}
        for name, value in (resources.get("requests") or {}).items():
            if name in QOS_RESOURCES and quantity(value) > 0:
                requests[name] = requests.get(name, 0) + quantity(value)
        found = set()
        for name, value in (resources.get("limits") or {}).items():
            if name in QOS_RESOURCES and quantity(value) > 0:
                found.add(name)
                limits[name] = limits.get(name, 0) + quantity(value)
        if not set(QOS_RESOURCES) <= found:
            guaranteed = False
    if not requests and not limits:
        return BEST_EFFORT
    if guaranteed and all(limits.get(name) == value for name, value in requests.items()) and len(requests) == len(limits):
        return GUARANTEED
    return BURSTABLE


def pod_cgroup_name(pod: dict, cgroup_root: str = "/") -> list:
    """The Pod's CgroupName, as components: the cgroup root's, "kubepods", the QoS class's
    (lower case; none for Guaranteed: qos_container_manager_linux.go makes only the besteffort and
    burstable cgroups under kubepods), then "pod<uid>" (pod_container_manager_linux.go
    GetPodContainerName, podCgroupNamePrefix)."""
    qos = qos_class(pod)
    name = [part for part in cgroup_root.split("/") if part] + ["kubepods"]
    if qos != GUARANTEED:
        name.append(qos.lower())
    return name + [f"pod{pod['metadata']['uid']}"]


def systemd_slice_path(name: list) -> str:
    """cgroup_manager_linux.go ToSystemd: each component escaped ("-" becomes "_",
    escapeSystemdCgroupName), each slice named after all the components above it joined by "-"
    (libcontainer's ExpandSlice): /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podU.slice."""
    parts, path = [], ""
    for component in name:
        parts.append(component.replace("-", "_"))
        path += "/" + "-".join(parts) + ".slice"
    return path


def cgroupfs_path(name: list) -> str:
    """cgroup_manager_linux.go ToCgroupfs: the components as a path, /kubepods/besteffort/podU."""
    return "/" + "/".join(name)


def container_cgroups_path(pod: dict, container_id: str, driver: str, cgroup_root: str = "/") -> str:
    """linux.cgroupsPath of the container's OCI spec, as containerd's CRI plugin writes it
    (pkg/cri/server/helpers_linux.go getCgroupsPath): with the systemd driver
    "<the Pod's slice>:cri-containerd:<id>", which runc turns into the scope
    cri-containerd-<id>.scope in that slice; with cgroupfs, the Pod's cgroup joined with the id."""
    name = pod_cgroup_name(pod, cgroup_root)
    if driver == "systemd":
        return f"{os.path.basename(systemd_slice_path(name))}:{SYSTEMD_SCOPE_PREFIX}:{container_id}"
    return f"{cgroupfs_path(name)}/{container_id}"


def expected_cgroup(pod: dict, container_id: str, driver: str, cgroup_root: str = "/") -> str:
    """The container's cgroup as its processes' `0::` line shows it."""
    name = pod_cgroup_name(pod, cgroup_root)
    if driver == "systemd":
        return f"{systemd_slice_path(name)}/{SYSTEMD_SCOPE_PREFIX}-{container_id}.scope"
    return f"{cgroupfs_path(name)}/{container_id}"


def new_container_id() -> str:
    """containerd's IDs: 32 random bytes in hex (pkg/util GenerateID)."""
    return secrets.token_hex(32)


def cgroup2_mount() -> str:
    for mount in CGROUP2_MOUNTS:
        if os.path.exists(os.path.join(mount, "cgroup.controllers")):
            return mount
    raise OSError("no cgroup2 hierarchy is mounted")


def systemd_runs() -> bool:
    return os.path.isdir("/run/systemd/system")  # sd_booted()


def process_start(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return ""


def read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


class Runtime:
    """The containers of this node, each a task directory under <records>/containers/tasks/<id>:
    task.json (what the kubelet asked for: the Pod, the container, the process, the cgroup, the
    log), state.json (the shim's: PID, its start time, the cgroup) and exit.json (the shim's, once
    the process ended).  What containerd's task list is to a real kubelet: a kubelet that starts
    finds its containers here."""

    def __init__(self, records: str, driver: str, cgroup_root: str = "/"):
        self.tasks = os.path.join(records, "containers", "tasks")
        self.driver, self.cgroup_root = driver, cgroup_root
        os.makedirs(self.tasks, exist_ok=True)

    def task_dir(self, container_id: str) -> str:
        return os.path.join(self.tasks, container_id)

    def start(self, task: dict) -> str:
        """Write the task and start its shim, detached (its own session; under systemd, its own
        transient service, so that stopping kubelet.service leaves it running, as containerd's shims
        outlive the kubelet).  Waits (5 s at most) until the process runs or failed to start."""
        directory = self.task_dir(task["id"])
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "task.json"), "w", encoding="utf-8") as handle:
            json.dump(task, handle, indent=1, sort_keys=True)
        argv = [sys.executable, SHIM, directory]
        if systemd_runs():
            argv = ["systemd-run", "--quiet", "--collect", f"--unit=fake-containerd-shim-{task['id'][:16]}", "--", *argv]
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                         stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any(os.path.exists(os.path.join(directory, name)) for name in ("state.json", "exit.json")):
                break
            time.sleep(0.02)
        return task["id"]

    def list(self) -> list:
        """Every task's task.json."""
        try:
            names = sorted(os.listdir(self.tasks))
        except OSError:
            return []
        return [task for task in (read_json(os.path.join(self.tasks, n, "task.json")) for n in names) if task]

    def inspect(self, container_id: str) -> dict:
        """{"state": "running" | "exited" | "created", ...}: exited with the shim's record; running
        while the recorded PID is the same process; exited 255 (Unknown) when neither the process
        nor its shim is left to say how it ended (a node that rebooted)."""
        directory = self.task_dir(container_id)
        ended = read_json(os.path.join(directory, "exit.json"))
        state = read_json(os.path.join(directory, "state.json")) or {}
        if ended is not None:
            return {"state": "exited", **state, **ended}
        if not state:
            return {"state": "created"}
        if process_start(state["pid"]) == state["pidStart"] or process_start(state.get("shimPid", 0)) == state.get("shimStart"):
            return {"state": "running", **state}
        return {"state": "exited", **state, "exitCode": 255, "reason": "Unknown", "finishedAt": state.get("startedAt", "")}

    def signal(self, container_id: str, number: int) -> None:
        state = self.inspect(container_id)
        if state["state"] == "running" and process_start(state["pid"]) == state["pidStart"]:
            try:
                os.kill(state["pid"], number)
            except OSError:
                pass

    def kill_all(self, container_id: str) -> None:
        """SIGKILL to every process in the container's cgroup (runc kill --all)."""
        state = self.inspect(container_id)
        self.signal(container_id, signal.SIGKILL)
        cgroup = state.get("cgroup")
        if not cgroup or cgroup == "/":
            return
        try:
            with open(os.path.join(cgroup2_mount(), cgroup.lstrip("/"), "cgroup.procs"), encoding="utf-8") as handle:
                for line in handle:
                    try:
                        os.kill(int(line), signal.SIGKILL)
                    except (OSError, ValueError):
                        pass
        except OSError:
            pass

    def remove(self, container_id: str) -> None:
        """The task and, with cgroupfs, its cgroup (runc delete; a systemd scope goes by itself)."""
        task = read_json(os.path.join(self.task_dir(container_id), "task.json")) or {}
        path = task.get("cgroupsPath", "")
        if path and ":" not in path:
            try:
                os.rmdir(os.path.join(cgroup2_mount(), path.lstrip("/")))
            except OSError:
                pass
        shutil.rmtree(self.task_dir(container_id), ignore_errors=True)

    def remove_pod_cgroup(self, pod: dict) -> None:
        """The Pod's cgroup, once its containers are gone (pod_container_manager_linux.go Destroy):
        the slice stopped (systemd), or the directory removed (cgroupfs)."""
        name = pod_cgroup_name(pod, self.cgroup_root)
        if self.driver == "systemd":
            subprocess.run(["systemctl", "stop", os.path.basename(systemd_slice_path(name))], capture_output=True, check=False)
            return
        try:
            os.rmdir(os.path.join(cgroup2_mount(), cgroupfs_path(name).lstrip("/")))
        except OSError:
            pass
