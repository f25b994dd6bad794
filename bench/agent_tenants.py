#!/usr/bin/env python3
"""Benchmark: the gpuaas agent's tenant look per poll, 8 GPUs x 10 slots all held (80 Pods, one
process each on its slot's GPU).

The agent's Tenants (gpuaas_agent/tenants.py) runs in this process against:
- a real gRPC PodResources v1 server on a Unix socket (tests/support/tenant_doubles.py), listing
  the 80 Pods' devices;
- an HTTP API-server double answering this node's PodList (80 Pods);
- a /proc stand-in with each process's cgroup v2 line in the systemd driver's layout;
- NVML: by default a Python double of Gpus.processes (per GPU its 10 processes, their vRAM and a
  utilisation sample each). With ``--fake-gpu DIR`` (a directory holding the fake GPU's
  libnvidia-ml.so.1, libcuda.so.1 and fake-gpu-workload, built from tests/fleet/fake_nvml and
  fake_cuda by tests/fleet/package_repo.py's build_fake_nvml, build_fake_cuda and
  build_fake_cuda_program): the agent's real NVML path (gpus.Gpus, nvidia-ml-py, ctypes) on that library,
  with 80 real workload processes (10 per GPU, each a context, 500 MiB and a 5 ms kernel every
  100 ms); the bench then re-runs itself with that library on LD_LIBRARY_PATH.

It prints:
- CPU time per poll, p50/p99 over --polls steady polls (the Pod list cached): of the whole
  process (time.process_time: every thread, gRPC's and the PodResources double's serving
  included, so an upper bound) and of the polling thread alone (time.thread_time, what the
  agent's status reports as tenants.poll_cpu_ms), each with the tenants' part of the status
  file serialised as the agent writes it every poll; and the first poll's (every cgroup read,
  the Pods listed);
- with --fake-gpu, each slot's GPU-time counter against what its workload says it received
  (its own JSON lines), over 8 s of 0.25 s polls: the relative error, p50 and max;
- the time from a Pod's start to its tenant in the agent's report, over --starts starts: a
  thread polls every poll_seconds (1 s, the agent's default) as the agent's loop does; the
  clock starts when the Pod's devices appear in PodResources, its object (with its container
  ID) in the API server's list and its process on the GPU, all at once, and stops when the
  report names the Pod on its slot with the process attributed. It is bounded by the poll
  period: a start lands anywhere in the 1 s between two polls.

Targets (issue #33): <= 5 ms of CPU per poll; <= 2 s from a Pod's start to its tenant.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests/support"), str(REPO / "agent/src")]

from gpuaas_agent.config import Settings  # noqa: E402
from gpuaas_agent.tenants import Tenants  # noqa: E402
from tenant_doubles import NODE, ApiServer, Gpus, PodResources, ProcRoot, pod_object, systemd_cgroup  # noqa: E402

GPUS, RATIO = 8, 10
RESOURCE = "gpuaas.hosted.ai/pool-1"


def percentile(values: list, fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


UUIDS = [f"GPU-be0c0000-0000-4000-8000-{index:012d}" for index in range(GPUS)]


def fake_gpu_env(root: Path, directory: Path) -> dict:
    """The fake NVML's and fake libcuda's inputs: a profile of 8 H100s and their state directories."""
    (root / "profile").write_text("driver_version=580.95.05\ncuda_version=13000\n" + "".join(
        f"gpu={uuid}|NVIDIA H100 80GB HBM3|81559|00000000:{0x18 + 0x10 * i:02X}:00.0|0\n" for i, uuid in enumerate(UUIDS)))
    for name in ("state", "gpus"):
        (root / name).mkdir(exist_ok=True)
    (root / "loaded").touch()
    return {"LD_LIBRARY_PATH": str(directory), "FAKE_NVML_PROFILE": str(root / "profile"),
            "FAKE_NVML_STATE_DIR": str(root / "state"), "FAKE_NVML_LOADED_MARKER": str(root / "loaded"),
            "FAKE_NVIDIA_GPU_STATE_DIR": str(root / "gpus")}


class RealGpus:
    """The agent's own NVML code on the fake library, and real workloads for the processes."""

    def __init__(self, workload: Path):
        from gpuaas_agent.gpus import Gpus as AgentGpus  # pylint: disable=import-outside-toplevel
        self.nvml = AgentGpus()
        if not self.nvml.start():
            raise SystemExit(f"NVML: {self.nvml.unavailable}")
        self.workload = workload
        self.children: list = []
        self.lines: dict = {}  # pid -> [(time, GPU ms the workload says it received)]

    def run(self, uuid: str, pid_hint: int, mib: int, percent: int = 0) -> int:  # pylint: disable=unused-argument
        child = subprocess.Popen([str(self.workload), "--memory-mib", str(mib), "--kernel-ms", "5", "--interval-ms", "100"],
                                 env={**os.environ, "CUDA_VISIBLE_DEVICES": uuid}, stdout=subprocess.PIPE, text=True)
        self.children.append(child)
        self.lines[child.pid] = []
        threading.Thread(target=self.read, args=(child,), daemon=True).start()
        return child.pid

    def read(self, child):
        """The workload's own account: one JSON line a second, gpu_ms_received so far."""
        for line in child.stdout:
            self.lines[child.pid].append((time.time(), json.loads(line)["gpu_ms_received"]))

    def processes(self, uuid, medium, last_seen_us):
        return self.nvml.processes(uuid, medium, last_seen_us)

    def stop(self):
        for child in self.children:
            child.terminate()
        for child in self.children:
            child.wait()


class Node:
    def __init__(self, root: Path, workload: Path | None = None):
        self.uuids = UUIDS
        self.slots = {f"{uuid}::{n}": (RESOURCE, uuid) for uuid in self.uuids for n in range(1, RATIO + 1)}
        self.kubelet = PodResources(root / "pod-resources.sock").start()
        self.api = ApiServer(root).start()
        self.proc = ProcRoot(root / "proc")
        self.gpus = RealGpus(workload) if workload else Gpus()
        self.settings = Settings(pod_resources_socket=str(root / "pod-resources.sock"), kubeconfig=str(self.api.kubeconfig),
                                 node_name=NODE, proc_root=str(self.proc.root))
        self.tenants = Tenants(self.settings, self.gpus)
        self.pods = 0

    def start_pod(self, device: str) -> tuple:
        """A Pod holding ``device``, with one process on its GPU: (namespace, name, pid)."""
        self.pods += 1
        n = self.pods
        uid, cid, pid = f"{n:08x}-0000-4000-8000-000000000000", f"{n:064x}", 10000 + n
        namespace, name = f"team-{n % 7}", f"job-{n}"
        if isinstance(self.gpus, RealGpus):
            pid = self.gpus.run(self.slots[device][1], pid, mib=500)
        self.proc.set(pid, systemd_cgroup(uid, cid))
        self.api.pods.append(pod_object(uid, namespace, name, containers={"main": cid}))
        self.kubelet.hold(namespace, name, "main", RESOURCE, device)
        if not isinstance(self.gpus, RealGpus):
            self.gpus.run(self.slots[device][1], pid, mib=4000, percent=9)
        return namespace, name, pid

    def poll(self) -> None:
        self.tenants.refresh(self.slots, set(), self.uuids)

    def stop(self):
        self.kubelet.stop()
        self.api.stop()
        if isinstance(self.gpus, RealGpus):
            self.gpus.stop()


def cpu_per_poll(node: Node, polls: int) -> None:
    for device in node.slots:
        node.start_pod(device)
    if isinstance(node.gpus, RealGpus):
        time.sleep(1.5)  # every workload holds its context
    started = time.process_time()
    node.poll()
    first = (time.process_time() - started) * 1000
    report = node.tenants.report
    held = sum(1 for slot in report["slots"].values() if slot["state"] == "running")
    assert held == GPUS * RATIO and not report["unknown"], (held, report["unknown"][:2])
    for unused in range(20):  # warm
        node.poll()
    lists = node.tenants.api_lists
    costs, own = [], []
    for unused in range(polls):
        started, thread_started = time.process_time(), time.thread_time()
        node.poll()
        json.dumps(node.tenants.report, sort_keys=True, separators=(",", ":"))  # its part of the status file
        costs.append((time.process_time() - started) * 1000)
        own.append((time.thread_time() - thread_started) * 1000)
    assert node.tenants.api_lists == lists, "a steady poll listed the Pods again"
    print(f"tenants per poll, {GPUS} GPUs x {RATIO} slots held, {GPUS * RATIO} processes, {polls} polls: "
          f"CPU of the process (the PodResources double's serving included) p50 {statistics.median(costs):.2f} ms, "
          f"p99 {percentile(costs, 0.99):.2f} ms, max {max(costs):.2f} ms; of the polling thread alone "
          f"p50 {statistics.median(own):.2f} ms, p99 {percentile(own, 0.99):.2f} ms; "
          f"first poll (every cgroup read, the Pods listed) {first:.2f} ms")


def accuracy(node: Node, seconds: float = 8.0) -> None:
    """GPU time per slot as the agent counts it against what each workload says it received,
    over the same window (the workloads print once a second; the agent polls every 0.25 s)."""
    first = {device: (time.time(), slot["gpu_seconds"], slot["processes"][0]["pid"])
             for device, slot in node.tenants.report["slots"].items() if slot["state"] == "running"}
    deadline = time.time() + seconds
    while time.time() < deadline:
        node.poll()
        time.sleep(0.25)
    node.poll()
    errors = []
    for device, (started, counted, pid) in first.items():
        ended, now = time.time(), node.tenants.report["slots"][device]["gpu_seconds"]
        lines = [(at, ms) for at, ms in node.gpus.lines[pid] if started <= at <= ended]
        if len(lines) < 2:
            continue
        said = (lines[-1][1] - lines[0][1]) / 1000 / (lines[-1][0] - lines[0][0])
        errors.append(abs((now - counted) / (ended - started) - said) / said)
    print(f"GPU time per slot against the workloads' own account, {len(errors)} slots, {seconds:g} s: "
          f"error p50 {statistics.median(errors) * 100:.1f} %, max {max(errors) * 100:.1f} %")


def start_to_tenant(node: Node, starts: int, poll_seconds: float) -> None:
    stop = threading.Event()

    def loop():  # the agent's loop: one look per poll_seconds
        while not stop.is_set():
            node.poll()
            stop.wait(poll_seconds)
    delays = []
    free = [device for device in node.slots if node.tenants.report["slots"][device]["state"] == "free"]
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        for n in range(starts):
            device = free[n]
            time.sleep(poll_seconds * (n % 7) / 7)  # start at different points of the poll period
            started = time.monotonic()
            namespace, name, pid = node.start_pod(device)
            while True:
                slot = node.tenants.report["slots"][device]
                if (slot["tenant"] or {}).get("pod") == name and slot["tenant"]["uid"] and \
                        [p["pid"] for p in slot["processes"]] == [pid]:
                    break
                if time.monotonic() - started > 10:
                    raise SystemExit(f"no tenant for {namespace}/{name} within 10 s")
                time.sleep(0.002)
            delays.append(time.monotonic() - started)
    finally:
        stop.set()
        thread.join()
    print(f"Pod start -> its tenant and process in the report, poll_seconds {poll_seconds:g}, {starts} starts: "
          f"p50 {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=500)
    parser.add_argument("--starts", type=int, default=14)
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("--fake-gpu", type=Path, help="the fake GPU's libraries and workload (see above)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuaas-tenants-bench-", dir="/tmp") as scratch:
        if args.fake_gpu and "FAKE_NVML_PROFILE" not in os.environ:
            # The library must be on LD_LIBRARY_PATH when the process starts: run again with it.
            env = {**os.environ, **fake_gpu_env(Path(scratch), args.fake_gpu.resolve())}
            return subprocess.run([sys.executable, *sys.argv], env=env, check=False).returncode
        node = Node(Path(scratch), args.fake_gpu.resolve() / "fake-gpu-workload" if args.fake_gpu else None)
        try:
            cpu_per_poll(node, args.polls)
            if args.fake_gpu:
                accuracy(node)
            # Room for the starts: free one slot per start (their Pods end).
            for device in list(node.slots)[:args.starts]:
                holder = next(key for key, containers in node.kubelet.pods.items()
                              if device in containers["main"][RESOURCE])
                node.kubelet.release(*holder)
                node.api.pods = [pod for pod in node.api.pods if (pod["metadata"]["namespace"], pod["metadata"]["name"]) != holder]
            node.poll()
            start_to_tenant(node, args.starts, args.poll_seconds)
        finally:
            node.stop()
    if args.fake_gpu:
        print(f"NVML: the agent's own NVML code on {args.fake_gpu}/libnvidia-ml.so.1, with 80 fake-gpu-workload processes.")
    else:
        print("NVML: a Python double of the process lists; --fake-gpu DIR runs the agent's real NVML path "
              "on the fake GPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
