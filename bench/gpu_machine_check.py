#!/usr/bin/env python3
"""Issues #12 and #32's check on a real GPU machine (prepared; it has not run on one yet: no GPU
machine has been lent to this work; on this machine, with the fake NVML and the MPS stand-in on
PATH and no PyTorch, its flow ran through to "NOT as expected"). It changes no GPU setting: the
agent runs with manage_gpu_modes false. Without an NVIDIA GPU (NVML does not answer), or not as
root (the client's namespaces need it), it says "skipped: ..." and exits 0.

1. Reports what the machine has: the GPUs (NVML), nvidia-cuda-mps-control, PyTorch with CUDA,
   and GPU 0's compute mode before and after.
2. Runs the real gpuaas agent on real NVML with one medium pool at ratio 2 on GPU 0, and the
   kubelet double of tests/support/agent_harness.py; asks Allocate for one slot. The agent starts
   the GPU's MPS control daemon in a mount namespace of its own, with a private tmpfs as /dev/shm.
3. Every CUDA process below runs as a container would: in an IPC and a mount namespace of its own
   (unshare --ipc --mount), with only Allocate's mounts (the daemon's pipe directory and its
   tmpfs at /dev/shm) and Allocate's environment.
   - attach (issue #32): a CUDA process holds a context while the daemon is asked for its servers
     and their clients; it attached through MPS if it is one of them (a CUDA process that cannot
     reach the daemon runs without MPS, silently: nvidia-cuda-mps-control(1)).
   - limits (issue #12): allocating vRAM / 2 + 1 GiB (expected to fail) and vRAM / 2 - 2 GiB
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


ATTACH = """
import sys, torch
block = torch.ones(1024, device="cuda")
torch.cuda.synchronize()
print("ready", flush=True)
sys.stdin.read()
"""
# The container's view: each of Allocate's mounts bound at its container path (made if missing:
# this leaves an empty /run/nvidia-mps on the host), then the program (exec: it keeps the PID the
# caller sees, which the daemon reports as its client).
AS_A_CONTAINER = 'while [ $# -gt 0 ] && [ "$1" != -- ]; do mkdir -p "$2" && mount --bind "$1" "$2" || exit 97; shift 2; done; ' \
                 'shift; exec "$@"'


def as_a_container(mounts: list, argv: list) -> list:
    """``argv`` in an IPC and a mount namespace of its own, with only Allocate's mounts."""
    pairs = [path for container_path, host_path, unused_read_only in mounts for path in (host_path, container_path)]
    return ["unshare", "--ipc", "--mount", "--propagation", "private", "--", "sh", "-c", AS_A_CONTAINER, "sh",
            *pairs, "--", *argv]


def control(mps_control: str, pipe: str, command: str) -> str:
    done = subprocess.run([mps_control], input=command + "\n", text=True, capture_output=True, check=False, timeout=30,
                          env={**os.environ, "CUDA_MPS_PIPE_DIRECTORY": pipe})
    return (done.stdout + done.stderr).strip()


def attach(report: dict, env: dict, mounts: list, pipe: str) -> dict:
    """Issue #32: a client in its own namespaces attaches to the daemon through the mounts."""
    client = subprocess.Popen(as_a_container(mounts, [sys.executable, "-c", ATTACH]), env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = client.stdout.readline().strip()  # "" when it failed before (no PyTorch, no CUDA)
        servers = control(report["mps_control"], pipe, "get_server_list").split()
        clients = {pid: control(report["mps_control"], pipe, f"get_client_list {pid}").split() for pid in servers
                   if pid.isdigit()}
    finally:
        client.stdin.close()
        rc = client.wait(timeout=120)
    attached = any(str(client.pid) in pids for pids in clients.values())
    return {"ready": ready, "rc": rc, "client_pid": client.pid, "servers": servers, "clients": clients,
            "stderr": client.stderr.read()[-600:], "attached": attached}


def skip_reason() -> str:
    if os.geteuid() != 0:
        return "not root: the client's IPC and mount namespaces need root"
    if not shutil.which("unshare"):
        return "no unshare (util-linux) on this machine"
    try:
        gpu0()
    except Exception as error:  # pylint: disable=broad-exception-caught  # any NVML failure: no GPU here
        return f"no NVIDIA GPU answers through NVML: {error}"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    skipped = skip_reason()
    if skipped:
        return finish({"result": f"skipped: {skipped}"}, args.out)
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
            # Allocate's environment, and Allocate's mounts in namespaces of its own (as_a_container).
            env = {**os.environ, **given["envs"], "CUDA_VISIBLE_DEVICES": gpu["uuid"]}
            pipe = str(root / "mps" / gpu["uuid"] / "pipe")
            report["attach"] = attach(report, env, given["mounts"], pipe)
            for name, megabytes in (("over_the_slot", limit + 1024), ("within_the_slot", limit - 2048)):
                done = subprocess.run(as_a_container(given["mounts"], [sys.executable, "-c", ALLOCATE, str(megabytes)]),
                                      env=env, capture_output=True, text=True, timeout=300, check=False)
                report[name] = {"megabytes": megabytes, "rc": done.returncode,
                                "output": (done.stdout + done.stderr).strip()[-600:]}
            # 3: CUDA refused the allocation (any other failure is not the limit at work).
            limits = report["over_the_slot"]["rc"] == 3 and report["within_the_slot"]["rc"] == 0
            report["result"] = ("attached through the mounted /dev/shm and pipe, limit enforced"
                                if limits and report["attach"]["attached"] else "NOT as expected")
        except (AssertionError, OSError, subprocess.SubprocessError) as error:
            report["result"] = f"the check could not finish: {error}"
        finally:
            report["agent_log"] = agent.log.read_text()[-4000:] if agent.log.exists() else ""
            agent.stop()
            kubelet.stop()
            subprocess.run([report["mps_control"]], input="quit\n", text=True, capture_output=True, check=False,
                           env={**os.environ, "CUDA_MPS_PIPE_DIRECTORY": str(root / "mps" / gpu["uuid"] / "pipe")},
                           timeout=60)
            # The agent's tmpfs for the daemon's /dev/shm, before the directory goes.
            subprocess.run(["umount", "--lazy", str(root / "mps" / gpu["uuid"] / "shm")], capture_output=True, check=False)
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
