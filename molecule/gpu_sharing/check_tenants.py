"""Issue #33 on the fleet: the agent's tenants per slot equal what real workloads hold and received.

Run on node1 by verify_tenants.yml (argv[1]: the node's GPU UUIDs as JSON, in index order). On the
fake GPU (docs/test-fleet.md, "The fake GPU") the kubelet stand-in runs each Pod's container as a
real process in its kubelet/containerd cgroup:
- tenant-a/train and tenant-b/infer each hold one slot of pool 1 (low) and run a workload;
- tenant-b/mps holds pool 3's slot (medium): an MPS client, beside the daemon's MPS server;
- tenant-a/rogue holds no slot but, privileged with NVIDIA_VISIBLE_DEVICES=all, runs on GPU 1,
  which is in no pool: it must be listed under its Pod and flagged;
- tenant-a/confined holds a slot of pool 1 and asks the same: the toolkit takes its GPUs from the
  device plugin's mounts alone, so its workload finds no GPU 1 (CUDA_ERROR_NO_DEVICE) and fails;
- a workload started on the host (in no Pod) on GPU 0 must be unknown, never attributed.
Each workload's GPU time is compared with the agent's at the agent's own sampling time
(`sampled_at`), between the two counts the workload printed around it (each with its time).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

KUBECTL = ["kubectl", "--kubeconfig=/etc/kubernetes/admin.conf"]
STATUS_URL = "http://127.0.0.1:9460/"
TOKEN = "molecule-agent-token"
WORKLOAD = "/usr/bin/fake-gpu-workload"
HOST_UNIT = "gpuaas-molecule-host-workload"
TOLERANCE = 0.05
OLD_PODS = ["slot-low", "slot-high", "slot-medium"]
TENANT_PODS = [("tenant-a", "train"), ("tenant-b", "infer"), ("tenant-b", "mps"), ("tenant-a", "rogue"),
               ("tenant-a", "confined")]


def kubectl(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(KUBECTL + list(args), input=stdin, check=True, capture_output=True, text=True).stdout


def agent(path: str):
    request = urllib.request.Request(STATUS_URL + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        body = reply.read().decode()
    return json.loads(body) if path == "status" else body


def pod(namespace: str, name: str, resource: str | None, memory_mib: int, env=None, privileged=False) -> dict:
    container = {"name": "main", "image": "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04",
                 "command": [WORKLOAD, "--memory-mib", str(memory_mib), "--kernel-ms", "20"],
                 "resources": {"limits": {resource: 1}} if resource else {}, "env": env or []}
    if privileged:
        container["securityContext"] = {"privileged": True}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": "node1", "restartPolicy": "Never", "runtimeClassName": "nvidia",
                     "terminationGracePeriodSeconds": 5, "containers": [container]}}


def wait(what: str, predicate, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {timeout} s")


def delete_and_wait(namespace: str, names: list) -> None:
    """Delete and wait until gone, by looking (kubectl's own --wait watches from the object's
    resourceVersion, and the fleet's API server does not replay a deletion that came before the
    watch began, as the real one's watch cache does)."""
    kubectl("delete", "pod", "-n", namespace, "--ignore-not-found", "--wait=false", *names)
    wait(f"{namespace}/{names} gone", lambda: not kubectl("get", "pod", "-n", namespace, "--ignore-not-found", "-o", "name",
                                                          *names).strip(), timeout=60)


def pod_json(namespace: str, name: str) -> dict:
    return json.loads(kubectl("get", "pod", "-n", namespace, name, "-o", "json"))


def running_pid(namespace: str, name: str) -> int | None:
    """The container's process (the runtime stand-in's task record), once the Pod is Running."""
    status = pod_json(namespace, name).get("status", {})  # none until the kubelet reports
    assert status.get("phase") not in ("Failed", "Succeeded"), (namespace, name, status)
    if status.get("phase") != "Running":
        return None
    container_id = status["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    with open(f"/var/lib/kubelet/fake-device-manager/containers/tasks/{container_id}/state.json", encoding="utf-8") as handle:
        return json.load(handle)["pid"]


def log_lines(namespace: str, name: str) -> list:
    """The container's CRI log (`<RFC3339Nano> stdout|stderr F <line>`), split."""
    uid = pod_json(namespace, name)["metadata"]["uid"]
    with open(f"/var/log/pods/{namespace}_{name}_{uid}/main/0.log", encoding="utf-8") as handle:
        return [line.rstrip("\n").split(" ", 3) for line in handle]


def log_points(namespace: str, name: str) -> list:
    """(when, gpu_ms_received) from the workload's lines in its log: when is its own clock
    (CLOCK_REALTIME, the clock of NVML's samples and of the agent's sampled_at)."""
    points = []
    for unused_stamp, stream, unused_partial, text in log_lines(namespace, name):
        if stream == "stdout" and text.startswith("{"):
            line = json.loads(text)
            points.append((line["time_us"] / 1e6, line["gpu_ms_received"]))
    return points


def points_past(key: tuple, when: float) -> list | None:
    """The workload's points once one is at or after `when` (it prints every second)."""
    points = log_points(*key)
    return points if points and points[-1][0] >= when else None


def received_at(points: list, when: float) -> float:
    """The workload's GPU seconds at `when`, between the two lines around it (a steady rate)."""
    for (t0, ms0), (t1, ms1) in zip(points, points[1:]):
        if t0 <= when <= t1:
            return (ms0 + (ms1 - ms0) * (when - t0) / (t1 - t0)) / 1000.0
    raise AssertionError(f"no workload line around {when}: {points[:1]} .. {points[-1:]}")


def slots_of(status: dict, namespace: str, name: str) -> list:
    return [slot for slot in status["tenants"]["slots"].values()
            if (slot.get("tenant") or {}).get("namespace") == namespace and slot["tenant"].get("pod") == name]


def everywhere(status: dict) -> list:
    """Every (place, pid) the report names: the slots' processes, flagged, unknown, infrastructure."""
    tenants = status["tenants"]
    found = [("slot", process["pid"]) for slot in tenants["slots"].values() for process in slot.get("processes", [])]
    for place in ("flagged", "unknown", "infrastructure"):
        found += [(place, entry["pid"]) for entry in tenants.get(place, [])]
    return found


def gone(status: dict, key: tuple, pid: int) -> bool:
    """Neither the Pod on a slot nor its process anywhere in the report."""
    return not slots_of(status, *key) and pid not in [entry[1] for entry in everywhere(status)]


def close(measured: float, expected: float, what: str) -> None:
    assert expected > 0 and abs(measured - expected) <= TOLERANCE * expected, f"{what}: {measured} vs {expected}"


def main() -> None:
    uuids = json.loads(sys.argv[1])
    try:
        check(uuids)
    finally:  # nothing of this check holds a slot or a GPU afterwards, whatever failed
        for namespace, name in TENANT_PODS:
            kubectl("delete", "pod", "-n", namespace, "--ignore-not-found", "--wait=false", name)
        subprocess.run(["systemctl", "stop", HOST_UNIT], capture_output=True, check=False)


def check(uuids: list) -> None:
    delete_and_wait("default", OLD_PODS)  # pool 3's one slot is needed
    subprocess.run(["systemctl", "stop", HOST_UNIT], capture_output=True, check=False)
    widen = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}, {"name": "CUDA_VISIBLE_DEVICES", "value": uuids[1]}]
    pods = {("tenant-a", "train"): pod("tenant-a", "train", "gpuaas.hosted.ai/pool-1", 1024),
            ("tenant-b", "infer"): pod("tenant-b", "infer", "gpuaas.hosted.ai/pool-1", 512),
            ("tenant-b", "mps"): pod("tenant-b", "mps", "gpuaas.hosted.ai/pool-3", 256),
            ("tenant-a", "rogue"): pod("tenant-a", "rogue", None, 128, privileged=True, env=widen)}
    confined = pod("tenant-a", "confined", "gpuaas.hosted.ai/pool-1", 128, privileged=True, env=widen)
    for (namespace, name), manifest in [*pods.items(), (("tenant-a", "confined"), confined)]:
        delete_and_wait(namespace, [name])
        kubectl("create", "--validate=false", "-f", "-", stdin=json.dumps(manifest))
    subprocess.run(["systemd-run", f"--unit={HOST_UNIT}", f"--setenv=CUDA_VISIBLE_DEVICES={uuids[0]}", WORKLOAD,
                    "--memory-mib", "64", "--kernel-ms", "5", "--interval-ms", "50"], check=True, capture_output=True)
    host_pid = int(subprocess.run(["systemctl", "show", "-P", "MainPID", HOST_UNIT], check=True, capture_output=True,
                                  text=True).stdout)
    pids = {key: wait(f"{key} Running", lambda key=key: running_pid(*key)) for key in pods}
    started = time.monotonic()
    wait("every workload in the agent's report",
         lambda: {entry[1] for entry in everywhere(agent("status"))} >= set(pids.values()) | {host_pid}, timeout=20)
    seen_in = time.monotonic() - started
    time.sleep(4)
    status = agent("status")
    tenants = status["tenants"]
    assert tenants["state"] == "ok", tenants
    sampled = tenants["sampled_at"]
    figures = {"tenants_seen_after_s": round(seen_in, 1)}
    for key, memory in ((("tenant-a", "train"), 1024), (("tenant-b", "infer"), 512), (("tenant-b", "mps"), 256)):
        slots = slots_of(status, *key)
        assert len(slots) == 1 and slots[0]["state"] == "running", (key, tenants)
        slot = slots[0]
        assert [process["pid"] for process in slot["processes"]] == [pids[key]], (key, slot)
        assert slot["tenant"]["container"] == "main" and slot["tenant"]["uid"] == pod_json(*key)["metadata"]["uid"]
        close(slot["vram_used_mb"], memory, f"{key} vRAM")
        points = wait(f"{key}'s line after the agent's sample", lambda key=key: points_past(key, sampled), timeout=5)
        received = received_at(points, sampled)
        close(slot["gpu_seconds"], received, f"{key} GPU seconds")
        figures["/".join(key)] = {"gpu": slot["gpu"], "agent_gpu_s": round(slot["gpu_seconds"], 3),
                                  "workload_gpu_s": round(received, 3), "vram_mb": slot["vram_used_mb"]}
    assert slots_of(status, "tenant-b", "mps")[0]["gpu"] == uuids[4]
    servers = [entry for entry in tenants["infrastructure"] if entry["gpu"] == uuids[4]]
    assert servers and all(entry["pid"] not in pids.values() for entry in servers), tenants["infrastructure"]
    rogue = [entry for entry in tenants["flagged"] if entry["pid"] == pids[("tenant-a", "rogue")]]
    assert len(rogue) == 1 and rogue[0]["flag"] == "outside_allocation" and rogue[0]["gpu"] == uuids[1], tenants["flagged"]
    assert (rogue[0]["namespace"], rogue[0]["pod"]) == ("tenant-a", "rogue")
    assert [place for place, pid in everywhere(status) if pid == host_pid] == ["unknown"], tenants
    assert [place for place, pid in everywhere(status) if pid == pids[("tenant-a", "rogue")]] == ["flagged"], tenants
    assert wait("tenant-a/confined Failed", lambda: pod_json("tenant-a", "confined").get("status", {}).get("phase") == "Failed")
    assert ["stderr", "F", "CUDA_ERROR_NO_DEVICE"] in [line[1:] for line in log_lines("tenant-a", "confined")]
    metrics = agent("metrics")
    assert 'namespace="tenant-a"' in metrics and 'pod="train"' in metrics, metrics[:2000]
    assert "gpuaas_agent_slot_gpu_seconds_total{" in metrics and "gpuaas_gpu_" not in metrics

    deleted = time.monotonic()
    kubectl("delete", "pod", "-n", "tenant-b", "infer", "--wait=false")
    wait("tenant-b/infer gone from the report", lambda: gone(agent("status"), ("tenant-b", "infer"), pids[("tenant-b", "infer")]))
    figures["deleted_pod_gone_after_s"] = round(time.monotonic() - deleted, 1)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
