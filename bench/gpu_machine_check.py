#!/usr/bin/env python3
"""Issue #12's check on a real GPU machine (prepared; it has not run on one yet: no GPU machine
has been lent to this work; on this machine, with the fake NVML and the MPS stand-in on PATH and
no PyTorch, its flow ran through to "NOT as expected"). It changes no GPU setting: the agent runs
with manage_gpu_modes false.

1. Reports what the machine has: the GPUs (NVML), nvidia-cuda-mps-control, PyTorch with CUDA,
   and GPU 0's compute mode before and after.
2. Runs the real gpuaas agent on real NVML with one medium pool at ratio 2 on GPU 0, and the
   kubelet double of tests/support/agent_harness.py; asks Allocate for one slot.
3. Under the MPS daemon the agent started (DEFAULT mode), runs a CUDA process (PyTorch) with that
   slot's environment, allocating vRAM / 2 + 1 GiB (expected to fail) and vRAM / 2 - 2 GiB
   (expected to succeed).

Run from the repository root with the agent's dependencies importable, for example:
  python3 -m venv --system-site-packages /tmp/v && /tmp/v/bin/pip install --no-index --find-links WHEELS \\
      grpcio protobuf nvidia-ml-py pyyaml prometheus-client
  PYTHONPATH=agent/src /tmp/v/bin/python bench/gpu_machine_check.py --out "$OUT"
Prints one JSON document (also written to --out/gpu_machine_check.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/support"))

ALLOCATE = """
import sys, torch
size = int(sys.argv[1]) * 1024 * 1024
try:
    block = torch.empty(size, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    print("allocated", size)
except RuntimeError as error:
    print("refused", " ".join(str(error).split())[:300])
    sys.exit(3)
"""


def gpu0() -> dict:
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        return {"count": pynvml.nvmlDeviceGetCount(), "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid,
                "memory_mb": pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024),
                "compute_mode": pynvml.nvmlDeviceGetComputeMode(handle)}
    finally:
        pynvml.nvmlShutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    report: dict = {"mps_control": shutil.which("nvidia-cuda-mps-control")}
    try:
        import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        report["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError as error:
        report["torch_cuda"] = f"no PyTorch: {error}"
    report["gpu0_before"] = gpu = gpu0()
    if not report["mps_control"]:
        report["result"] = "no nvidia-cuda-mps-control on this machine: the MPS part cannot run"
        return finish(report, args.out)

    from agent_harness import AgentProcess, Kubelet  # noqa: E402  pylint: disable=import-outside-toplevel

    limit = gpu["memory_mb"] // 2
    with tempfile.TemporaryDirectory(prefix="gm", dir="/tmp") as scratch:
        root = Path(scratch)
        kubelet = Kubelet(root / "device-plugins")  # where AgentProcess points the agent
        kubelet.start()
        agent = AgentProcess(root, {}, {"manage_gpu_modes": False, "mps_control": report["mps_control"],
                                        "whole_gpu_resource": ""}, mps_root=root / "mps")
        agent.write_sharing(1, {gpu["uuid"]: {
            "pool_id": 1, "resource": "gpuaas.hosted.ai/pool-1", "sharing_ratio": 2, "slots": 2,
            "time_quantum_in_sec": 30, "security_level": "medium", "compute_mode": "DEFAULT",
            "memory_limit_mb": limit, "compute_share_percent": 50}})
        agent.start()
        try:
            plugin = kubelet.plugin("gpuaas.hosted.ai/pool-1", 2)
            report["devices"] = plugin.devices
            given = plugin.allocate([f"{gpu['uuid']}::1"])
            report["allocate"] = given
            report["agent_status_gpu0"] = agent.status()["gpus"][gpu["uuid"]]
            env = {**os.environ, **given["envs"], "CUDA_VISIBLE_DEVICES": gpu["uuid"],
                   # No container here: the client reaches the daemon's pipe where it is on the host.
                   "CUDA_MPS_PIPE_DIRECTORY": given["mounts"][0][1]}
            for name, megabytes in (("over_the_slot", limit + 1024), ("within_the_slot", limit - 2048)):
                done = subprocess.run([sys.executable, "-c", ALLOCATE, str(megabytes)], env=env, capture_output=True,
                                      text=True, timeout=300, check=False)
                report[name] = {"megabytes": megabytes, "rc": done.returncode,
                                "output": (done.stdout + done.stderr).strip()[-600:]}
            # 3: CUDA refused the allocation (any other failure is not the limit at work).
            report["result"] = ("limit enforced" if report["over_the_slot"]["rc"] == 3
                                and report["within_the_slot"]["rc"] == 0 else "NOT as expected")
        except (AssertionError, OSError, subprocess.SubprocessError) as error:
            report["result"] = f"the check could not finish: {error}"
        finally:
            report["agent_log"] = agent.log.read_text()[-4000:] if agent.log.exists() else ""
            agent.stop()
            kubelet.stop()
            pipe = root / "mps" / gpu["uuid"] / "pipe"
            subprocess.run([report["mps_control"]], input="quit\n", text=True, capture_output=True, check=False,
                           env={**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(pipe)}, timeout=60)
    report["gpu0_after"] = gpu0()
    return finish(report, args.out)


def finish(report: dict, out: str) -> int:
    text = json.dumps(report, indent=2, default=str)
    print(text)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "gpu_machine_check.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
