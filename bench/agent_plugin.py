#!/usr/bin/env python3
"""Benchmark: the gpuaas agent's device plugin, 8 GPUs x ratio 10 (80 devices in one pool).

Runs the real `gpuaas-agent run` on the fake libnvidia-ml.so.1 with a kubelet double that
speaks the device plugin API v1beta1 over the agent's Unix sockets (tests/support/agent_harness.py)
and prints:

- Allocate latency, p50 and p99, over --allocations calls of one slot each (what the kubelet
  sends per container), measured at the client;
- the time from a changed sharing configuration (one GPU's ratio 10 -> 9 and back, written
  atomically as the module does) to the new list on the open ListAndWatch stream, p50 and max
  over --changes changes, with the agent's own polling (poll_seconds 1, its default) and with
  SIGHUP (what the role sends).

Targets (issue #12): Allocate p99 < 10 ms; config change to new list < 1 s.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/support"))

from agent_harness import AgentProcess, Kubelet  # noqa: E402

GPUS = 8
RATIO = 10
RESOURCE = "gpuaas.hosted.ai/pool-1"


def build_fake_nvml(out: Path) -> None:
    subprocess.run(["gcc", "-O2", "-Wall", "-Wno-format-truncation", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1",
                    "-o", str(out / "libnvidia-ml.so.1"), str(REPO / "tests/fleet/fake_nvml/fake_nvml.c")], check=True)


def percentile(values: list, fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def sharing(uuids: list, first_ratio: int) -> dict:
    return {uuid: {"pool_id": 1, "resource": RESOURCE, "sharing_ratio": ratio, "slots": ratio,
                   "time_quantum_in_sec": 30, "security_level": "low", "compute_mode": "DEFAULT"}
            for uuid, ratio in zip(uuids, [first_ratio] + [RATIO] * (len(uuids) - 1))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allocations", type=int, default=2000)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuaas-agent-bench-", dir="/tmp") as scratch:
        root = Path(scratch)
        build_fake_nvml(root)
        uuids = [f"GPU-be0c0000-0000-4000-8000-{index:012d}" for index in range(GPUS)]
        (root / "profile").write_text("driver_version=550.54.15\ncuda_version=12040\n" + "".join(
            f"gpu={uuid}|NVIDIA H100 80GB HBM3|81559|00000000:{0x18 + 0x10 * i:02X}:00.0|0\n"
            for i, uuid in enumerate(uuids)))
        (root / "state").mkdir()
        (root / "loaded").touch()
        nvml_env = {"LD_LIBRARY_PATH": str(root), "FAKE_NVML_PROFILE": str(root / "profile"),
                    "FAKE_NVML_STATE_DIR": str(root / "state"), "FAKE_NVML_LOADED_MARKER": str(root / "loaded")}
        kubelet = Kubelet(root / "device-plugins")
        kubelet.start()
        agent = AgentProcess(root, nvml_env, {"poll_seconds": 1.0})
        agent.write_sharing(1, sharing(uuids, RATIO))
        agent.start()
        try:
            plugin = kubelet.plugin(RESOURCE, GPUS * RATIO)
            ids = [device for device, unused_health in plugin.devices]
            for device in ids[:50]:  # warm the channel
                plugin.allocate([device])
            latencies = []
            for n in range(args.allocations):
                started = time.perf_counter()
                plugin.allocate([ids[n % len(ids)]])
                latencies.append((time.perf_counter() - started) * 1000)
            print(f"Allocate, {len(ids)} devices, {args.allocations} calls: p50 {percentile(latencies, 0.5):.2f} ms, "
                  f"p99 {percentile(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms")

            for how in ("file change (poll_seconds 1)", "file change + SIGHUP"):
                delays = []
                version = agent.status()["config"]["version"]
                for n in range(args.changes):
                    version += 1
                    target = GPUS * RATIO - (1 if n % 2 == 0 else 0)
                    seen = len(plugin.lists)
                    started = time.perf_counter()
                    agent.write_sharing(version, sharing(uuids, RATIO - 1 if n % 2 == 0 else RATIO))
                    if "SIGHUP" in how:
                        os.kill(agent.process.pid, signal.SIGHUP)
                    deadline = started + 10
                    while not (len(plugin.lists) > seen and len(plugin.devices) == target):
                        if time.perf_counter() > deadline:
                            raise SystemExit(f"no new list within 10 s ({how})")
                        time.sleep(0.001)
                    delays.append((time.perf_counter() - started) * 1000)
                    time.sleep(0.3)
                print(f"config change -> new ListAndWatch list, {how}, {args.changes} changes: "
                      f"p50 {statistics.median(delays):.0f} ms, max {max(delays):.0f} ms")
        finally:
            agent.stop()
            kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
