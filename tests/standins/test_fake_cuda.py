"""The fake GPU (tests/fleet/fake_cuda): libcuda.so.1, the test workload and the MPS server, built
with this machine's C compiler exactly as the driver stand-in package builds them
(package_repo.build_fake_cuda*), run as real processes over GPUs described by a profile in a
scratch directory; NVML read through pynvml, from the fake libnvidia-ml.so.1 that shares their state.

Each check that could pass vacuously has a positive control beside it (the same call succeeding,
the same list holding the process before it should leave it).
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pynvml
import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(CHECKOUT / "tests/fleet"))
import package_repo  # noqa: E402

MPS_CONTROL = CHECKOUT / "tests/fleet/packages/cuda-drivers-580/usr/bin/nvidia-cuda-mps-control"
NVIDIA_SMI = CHECKOUT / "tests/fleet/packages/cuda-drivers-580/usr/bin/nvidia-smi"
GPUS = ("GPU-11111111-0000-4000-8000-000000000000", "GPU-22222222-0000-4000-8000-000000000000",
        "GPU-33333333-0000-4000-8000-000000000000")
GPU_MIB = 4096  # GPU 0 leaves 4096 - 512 (the driver's footprint, fake_gpu.h) MiB to allocate
TOLERANCE = 0.05

pytestmark = pytest.mark.skipif(not any((Path(d) / "gcc").exists() for d in os.environ["PATH"].split(":")),
                                reason="needs the system C compiler")


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """The built libraries and programs, a node with three GPUs, and the environment that points
    every process at them."""
    root = tmp_path_factory.mktemp("fake-gpu")
    lib = root / "lib"
    package_repo.build_fake_cuda(lib / "libcuda.so.1")
    package_repo.build_fake_nvml(lib / "libnvidia-ml.so.1")
    workload = package_repo.build_fake_cuda_program("workload.c", root / "bin/fake-gpu-workload", lib)
    server = package_repo.build_fake_cuda_program("mps_server.c", root / "bin/nvidia-cuda-mps-server", lib)
    profile = root / "profile"
    profile.write_text("driver_version=580.95.05\ncuda_version=12080\n" + "".join(
        f"gpu={uuid}|NVIDIA H100 80GB HBM3|{GPU_MIB}|00000000:{17 + i:02x}:00.0|0\n" for i, uuid in enumerate(GPUS)))
    (root / "loaded").touch()
    (root / "nvml-state").mkdir()
    env = {"PATH": os.environ["PATH"], "LD_LIBRARY_PATH": str(lib), "FAKE_NVML_PROFILE": str(profile),
           "FAKE_NVML_LOADED_MARKER": str(root / "loaded"), "FAKE_NVML_STATE_DIR": str(root / "nvml-state"),
           "FAKE_NVIDIA_VERSION_FILE": str(root / "no-version-file"), "FAKE_NVIDIA_GPU_STATE_DIR": str(root / "gpus"),
           # No MPS daemon unless a test starts one (the default pipe directory is /tmp/nvidia-mps).
           "CUDA_MPS_PIPE_DIRECTORY": str(root / "no-mps")}

    class Fake:
        def __init__(self):
            self.root, self.lib, self.workload, self.server, self.env = root, lib, workload, server, env

        def start(self, *args: str, **extra: str) -> subprocess.Popen:
            return subprocess.Popen([str(workload), *args], env={**env, **extra}, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)

        def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(workload), *args], env={**env, **extra}, capture_output=True, text=True,
                                  timeout=30, check=False)

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the fake NVML, loaded in this process, reads them at each call
    pynvml.nvmlLib = ctypes.CDLL(str(lib / "libnvidia-ml.so.1"))
    pynvml.nvmlInit()
    yield Fake()
    pynvml.nvmlShutdown()
    pynvml.nvmlLib = None
    pynvml._nvmlGetFunctionPointer_cache.clear()  # pylint: disable=protected-access
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def last_report(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def handle(index: int):
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def compute_pids(index: int) -> dict:
    return {p.pid: p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle(index))}


def mps_pids(index: int) -> dict:
    return {p.pid: p.usedGpuMemory for p in pynvml.nvmlDeviceGetMPSComputeRunningProcesses_v3(handle(index))}


def wait_until(check, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# A CUDA program written with ctypes: each call's CUresult, in order, as JSON.
PROBE = r"""
import ctypes, json, sys
cuda = ctypes.CDLL(sys.argv[1])
i, p, n, s = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_char_p()
out = {}
out["driver_version"] = (cuda.cuDriverGetVersion(ctypes.byref(i)), i.value)  # works before cuInit
out["count_before_init"] = cuda.cuDeviceGetCount(ctypes.byref(i))
out["malloc_before_init"] = cuda.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(1 << 20))
out["init_flags_1"] = cuda.cuInit(1)
out["init"] = cuda.cuInit(0)
out["count"] = (cuda.cuDeviceGetCount(ctypes.byref(i)), i.value)
out["get_device_9"] = cuda.cuDeviceGet(ctypes.byref(i), 9)
out["get_device_0"] = cuda.cuDeviceGet(ctypes.byref(i), 0)
name, uuid = ctypes.create_string_buffer(96), ctypes.create_string_buffer(16)
out["name"] = (cuda.cuDeviceGetName(name, 96, 0), name.value.decode())
out["name_short"] = (cuda.cuDeviceGetName(name, 5, 0), name.value.decode())
out["name_no_room"] = cuda.cuDeviceGetName(name, 0, 0)
out["uuid"] = (cuda.cuDeviceGetUuid_v2(uuid, 0), uuid.raw.hex())
out["total"] = (cuda.cuDeviceTotalMem_v2(ctypes.byref(n), 0), n.value)
out["total_device_9"] = cuda.cuDeviceTotalMem_v2(ctypes.byref(n), 9)
out["malloc_without_context"] = cuda.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(1 << 20))
out["sync_without_context"] = cuda.cuCtxSynchronize()
out["context_on_device_9"] = cuda.cuCtxCreate_v2(ctypes.byref(p), 0, 9)
ctx = ctypes.c_void_p()
out["context"] = cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, 0)
out["malloc_0_bytes"] = cuda.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(0))
out["malloc_too_much"] = cuda.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(8 << 30))
out["malloc"] = cuda.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(1 << 20))
out["free_unknown"] = cuda.cuMemFree_v2(ctypes.c_ulonglong(12345))
out["free"] = cuda.cuMemFree_v2(p)
mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
out["module_bad_image"] = cuda.cuModuleLoadData(ctypes.byref(mod), b"not a module")
out["module"] = cuda.cuModuleLoadData(ctypes.byref(mod), b"fake-cuda-module:fake_gpu_busy")
out["function_unknown"] = cuda.cuModuleGetFunction(ctypes.byref(fn), mod, b"other")
out["function"] = cuda.cuModuleGetFunction(ctypes.byref(fn), mod, b"fake_gpu_busy")
ms = ctypes.c_uint(5)
params = (ctypes.c_void_p * 1)(ctypes.cast(ctypes.pointer(ms), ctypes.c_void_p))
u = ctypes.c_uint
out["launch_without_params"] = cuda.cuLaunchKernel(fn, u(1), u(1), u(1), u(1), u(1), u(1), u(0), None, None, None)
out["launch_bad_stream"] = cuda.cuLaunchKernel(fn, u(1), u(1), u(1), u(1), u(1), u(1), u(0), ctypes.c_void_p(99), params, None)
out["launch"] = cuda.cuLaunchKernel(fn, u(1), u(1), u(1), u(1), u(1), u(1), u(0), None, params, None)
out["stream_sync"] = cuda.cuStreamSynchronize(None)
ev = ctypes.c_void_p()
out["event_bad_flags"] = cuda.cuEventCreate(ctypes.byref(ev), 8)
out["event"] = cuda.cuEventCreate(ctypes.byref(ev), 0)
out["event_query_unrecorded"] = cuda.cuEventQuery(ev)
ms.value = 300
cuda.cuLaunchKernel(fn, u(1), u(1), u(1), u(1), u(1), u(1), u(0), None, params, None)
out["event_record"] = cuda.cuEventRecord(ev, None)
out["event_query_running"] = cuda.cuEventQuery(ev)
out["event_sync"] = cuda.cuEventSynchronize(ev)
out["event_query_done"] = cuda.cuEventQuery(ev)
out["error_name_2"] = (cuda.cuGetErrorName(2, ctypes.byref(s)), s.value.decode())
out["error_string_2"] = (cuda.cuGetErrorString(2, ctypes.byref(s)), s.value.decode())
out["error_name_unknown"] = (cuda.cuGetErrorName(12345, ctypes.byref(s)), s.value)
out["destroy"] = cuda.cuCtxDestroy_v2(ctx)
out["destroy_again"] = cuda.cuCtxDestroy_v2(ctx)
out["sync_after_destroy"] = cuda.cuCtxSynchronize()
print(json.dumps(out))
"""


def probe(fake, **extra: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(fake.lib / "libcuda.so.1")], env={**fake.env, **extra},
                          capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def test_the_driver_api_answers_with_nvidias_error_codes(fake):
    out = probe(fake)
    # CUresult values from the driver API reference's cudaError_enum; successes are the controls.
    assert out["driver_version"] == [0, 12080]  # the profile's (no driver package's version file here)
    assert out["count_before_init"] == out["malloc_before_init"] == 3  # CUDA_ERROR_NOT_INITIALIZED
    assert out["init_flags_1"] == 1 and out["init"] == 0  # "Currently must be 0"
    assert out["count"] == [0, 3]
    assert out["get_device_9"] == out["context_on_device_9"] == 101 and out["get_device_0"] == 0  # INVALID_DEVICE
    assert out["name"] == [0, "NVIDIA H100 80GB HBM3"] and out["name_short"] == [0, "NVID"]
    assert out["name_no_room"] == 1 and out["total_device_9"] == 101
    assert out["uuid"] == [0, GPUS[0][4:].replace("-", "")] and out["total"] == [0, GPU_MIB << 20]
    assert out["malloc_without_context"] == out["sync_without_context"] == 201  # INVALID_CONTEXT
    assert out["context"] == 0
    assert out["malloc_0_bytes"] == 1 and out["malloc_too_much"] == 2 and out["malloc"] == 0  # INVALID_VALUE, OOM
    assert out["free_unknown"] == 1 and out["free"] == 0
    assert out["module_bad_image"] == 200 and out["module"] == 0  # INVALID_IMAGE
    assert out["function_unknown"] == 500 and out["function"] == 0  # NOT_FOUND
    assert out["launch_without_params"] == 1 and out["launch_bad_stream"] == 400  # INVALID_VALUE, INVALID_HANDLE
    assert out["launch"] == 0 and out["stream_sync"] == 0
    assert out["event_bad_flags"] == 1 and out["event"] == 0 and out["event_query_unrecorded"] == 0
    assert out["event_record"] == 0 and out["event_query_running"] == 600  # CUDA_ERROR_NOT_READY
    assert out["event_sync"] == 0 and out["event_query_done"] == 0
    assert out["error_name_2"] == [0, "CUDA_ERROR_OUT_OF_MEMORY"] and out["error_string_2"] == [0, "out of memory"]
    assert out["error_name_unknown"] == [1, None]
    assert out["destroy"] == 0 and out["destroy_again"] == 201 and out["sync_after_destroy"] == 201


def test_an_unloaded_driver_or_no_device_node_is_no_device(fake):
    assert probe(fake, FAKE_NVML_LOADED_MARKER=str(fake.root / "absent"))["init"] == 100  # CUDA_ERROR_NO_DEVICE
    assert probe(fake, FAKE_NVIDIA_CONTAINER_GPUS="")["init"] == 100
    assert probe(fake, FAKE_NVIDIA_CONTAINER_GPUS=GPUS[1])["count"] == [0, 1]


def test_only_the_containers_gpus_are_visible_and_cuda_visible_devices_renumbers_them(fake):
    def device(*args: str, **extra: str) -> str:
        done = fake.run("--seconds", "0.05", "--kernel-ms", "0", *args, **extra)
        return last_report(done.stdout)["device"] if done.returncode == 0 else done.stderr.strip()

    assert device() == GPUS[0] and device("--device", "2") == GPUS[2]  # on the host: every GPU
    two = ",".join((GPUS[0], GPUS[2]))
    assert device(FAKE_NVIDIA_CONTAINER_GPUS=GPUS[1]) == GPUS[1]
    assert device("--device", "1", FAKE_NVIDIA_CONTAINER_GPUS=GPUS[1]) == "CUDA_ERROR_INVALID_DEVICE"
    assert device("--device", "1", FAKE_NVIDIA_CONTAINER_GPUS=two) == GPUS[2]
    # CUDA_VISIBLE_DEVICES indexes what the container has, and cannot reach beyond it.
    assert device(FAKE_NVIDIA_CONTAINER_GPUS=two, CUDA_VISIBLE_DEVICES="1") == GPUS[2]
    assert device(FAKE_NVIDIA_CONTAINER_GPUS=two, CUDA_VISIBLE_DEVICES=GPUS[2][:12]) == GPUS[2]
    assert device(FAKE_NVIDIA_CONTAINER_GPUS=two, CUDA_VISIBLE_DEVICES=GPUS[1]) == "CUDA_ERROR_NO_DEVICE"
    assert device(CUDA_VISIBLE_DEVICES=GPUS[1]) == GPUS[1]  # control: the host can
    # The list ends at the first entry that names no device.
    assert device("--device", "1", CUDA_VISIBLE_DEVICES="2,7,0") == "CUDA_ERROR_INVALID_DEVICE"
    assert device("--device", "1", CUDA_VISIBLE_DEVICES="2,0") == GPUS[0]
    assert device(CUDA_VISIBLE_DEVICES="") == "CUDA_ERROR_NO_DEVICE"


def test_memory_is_one_pool_across_processes_and_a_killed_holder_gives_it_back(fake):
    holder = fake.start("--memory-mib", "2000", "--kernel-ms", "0", "--device", "1")
    try:
        # Listed from cuCtxCreate on, with its memory once cuMemAlloc returned.
        assert wait_until(lambda: compute_pids(1).get(holder.pid) == 2000 << 20), \
            holder.stderr.read() if holder.poll() else compute_pids(1)
        assert pynvml.nvmlDeviceGetMemoryInfo(handle(1)).used == (512 + 64 + 2000) << 20
        refused = fake.run("--memory-mib", "2000", "--device", "1", "--seconds", "0.05")
        assert (refused.returncode, refused.stderr) == (1, "CUDA_ERROR_OUT_OF_MEMORY\n")
        fits = fake.run("--memory-mib", "1400", "--device", "1", "--seconds", "0.05")  # 4096 - 576 - 2000 = 1520
        assert fits.returncode == 0, fits.stderr
        holder.kill()
        holder.wait()
        # A killed process never destroys its context: the next advance reaps it.
        assert wait_until(lambda: holder.pid not in compute_pids(1))
        assert pynvml.nvmlDeviceGetMemoryInfo(handle(1)).used == (512 + 64) << 20
        again = fake.run("--memory-mib", "2000", "--device", "1", "--seconds", "0.05")
        assert again.returncode == 0, again.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_lone_workload_gets_the_whole_gpu(fake):
    done = fake.run("--kernel-ms", "20", "--seconds", "2", "--device", "2")
    assert done.returncode == 0, done.stderr
    assert last_report(done.stdout)["gpu_ms_received"] == pytest.approx(2000, rel=TOLERANCE)


class ProcessUtilization:
    """The agent's way with nvmlDeviceGetProcessUtilization: each call from the last timeStamp it
    returned, smUtil x interval summed per pid (µs of GPU time)."""

    def __init__(self, index: int):
        self.index = index
        self.last_seen = int(time.time() * 1e6)  # NVML's timestamps are CPU time in µs
        self.received_us: dict = {}

    def poll(self) -> None:
        try:
            samples = pynvml.nvmlDeviceGetProcessUtilization(handle(self.index), self.last_seen)
        except pynvml.NVMLError_NotFound:
            return
        for sample in samples:
            self.received_us[sample.pid] = (self.received_us.get(sample.pid, 0)
                                            + sample.smUtil / 100 * (sample.timeStamp - self.last_seen))
        self.last_seen = max(sample.timeStamp for sample in samples)


def test_two_workloads_share_the_gpu_and_nvml_sees_what_each_received(fake):
    utilization = ProcessUtilization(0)
    first = fake.start("--memory-mib", "1000", "--kernel-ms", "20")
    second = fake.start("--memory-mib", "700", "--kernel-ms", "20")
    try:
        # NVML lists a context from cuCtxCreate, before its cuMemAlloc (CI caught the second at 0
        # bytes once): wait for both allocations, then check that nothing else is listed.
        assert wait_until(lambda: compute_pids(0) == {first.pid: 1000 << 20, second.pid: 700 << 20}), compute_pids(0)
        assert mps_pids(0) == {}
        for _poll in range(6):
            time.sleep(0.5)
            utilization.poll()
        assert pynvml.nvmlDeviceGetUtilizationRates(handle(0)).gpu >= 95
        # Stopped processes launch nothing more; once their queued kernels (two of 20 ms each, at
        # half the GPU) are done the counters hold.
        for workload in (first, second):
            workload.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        utilization.poll()
        for workload in (first, second):
            workload.send_signal(signal.SIGCONT)
            workload.send_signal(signal.SIGTERM)
        reports = {w.pid: last_report(w.communicate(timeout=10)[0])["gpu_ms_received"] for w in (first, second)}
        assert first.returncode == second.returncode == 0
    finally:
        for workload in (first, second):
            workload.kill()
            workload.wait()
    total = sum(reports.values())
    assert total > 2500  # over 3 s, the GPU was busy nearly all the time
    for pid, received_ms in reports.items():
        assert received_ms == pytest.approx(total / 2, rel=TOLERANCE)
        assert utilization.received_us[pid] / 1000 == pytest.approx(received_ms, rel=TOLERANCE)
    # Gone processes leave the lists.
    assert wait_until(lambda: not compute_pids(0))


def test_a_killed_workload_leaves_nvmls_lists(fake):
    workload = fake.start("--memory-mib", "100", "--kernel-ms", "5", "--device", "2")
    try:
        assert wait_until(lambda: workload.pid in compute_pids(2))  # the control
        time.sleep(0.3)
        samples = pynvml.nvmlDeviceGetProcessUtilization(handle(2), int(time.time() * 1e6) - 200000)
        assert [s.pid for s in samples] == [workload.pid] and samples[0].smUtil > 50
        workload.kill()
        workload.wait()
        assert wait_until(lambda: workload.pid not in compute_pids(2))
        time.sleep(0.1)
        with pytest.raises(pynvml.NVMLError_NotFound):
            pynvml.nvmlDeviceGetProcessUtilization(handle(2), int(time.time() * 1e6) - 50000)
    finally:
        workload.kill()
        workload.wait()


def test_exclusive_process_mode_refuses_a_second_process(fake):
    mode = fake.root / "nvml-state/compute-mode-1"
    mode.write_text("3\n")  # NVML_COMPUTEMODE_EXCLUSIVE_PROCESS, as nvmlDeviceSetComputeMode writes it
    holder = fake.start("--kernel-ms", "0", "--device", "1")
    try:
        assert wait_until(lambda: holder.pid in compute_pids(1))
        second = fake.run("--device", "1", "--seconds", "0.05")
        assert (second.returncode, second.stderr) == (1, "CUDA_ERROR_DEVICE_UNAVAILABLE\n")
        other_gpu = fake.run("--device", "2", "--seconds", "0.05")
        assert other_gpu.returncode == 0, other_gpu.stderr  # the control: the mode is the GPU's
    finally:
        holder.kill()
        holder.wait()
        mode.unlink()


def test_an_mps_client_is_listed_under_its_daemons_server(fake):
    pipe = Path(tempfile.mkdtemp(prefix="mps-", dir="/tmp"))  # a socket path has at most 107 characters
    env = {**fake.env, "CUDA_MPS_PIPE_DIRECTORY": str(pipe / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(pipe / "log"),
           "CUDA_VISIBLE_DEVICES": GPUS[0], "FAKE_NVIDIA_MPS_SERVER": str(fake.server)}

    def control(stdin: str = "", *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(MPS_CONTROL), *args], input=stdin, env=env, capture_output=True,
                              text=True, timeout=15, check=False)

    assert control("", "-d").returncode == 0
    client = ordinary = None
    try:
        assert control("get_server_list\n").stdout == ""  # no server before a client
        client = fake.start("--memory-mib", "300", "--kernel-ms", "5", CUDA_MPS_PIPE_DIRECTORY=str(pipe / "pipe"))
        ordinary = fake.start("--memory-mib", "200", "--kernel-ms", "5")  # no daemon in its pipe directory
        assert wait_until(lambda: client.pid in mps_pids(0)), client.stderr.read() if client.poll() else ""
        server = int(control("get_server_list\n").stdout)
        assert wait_until(lambda: set(compute_pids(0)) == {server, ordinary.pid})
        assert compute_pids(0) == {server: 0, ordinary.pid: 200 << 20}
        assert mps_pids(0) == {client.pid: 300 << 20}
        assert "New client" in (pipe / "log/control.log").read_text()
        smi = subprocess.run([sys.executable, str(NVIDIA_SMI)], env=fake.env, capture_output=True, text=True,
                             timeout=15, check=True).stdout
        rows = {tuple(line.split()[4:7]) for line in smi.splitlines() if line.startswith("|    0   N/A  N/A")}
        assert {(pid, kind, name.rsplit("/", 1)[-1]) for pid, kind, name in rows} == {
            (str(server), "C", "nvidia-cuda-mps-server"), (str(ordinary.pid), "C", "fake-gpu-workload"),
            (str(client.pid), "M+C", "fake-gpu-workload")}, smi
    finally:
        for workload in (client, ordinary):
            if workload:
                workload.kill()
                workload.wait()
        control("quit\n")
        subprocess.run(["rm", "-rf", str(pipe)], check=False)
    assert wait_until(lambda: not compute_pids(0))  # quit stops the server, and its context goes


def test_nvml_follows_a_state_directory_made_anew(fake):
    """A node's reboot empties /run; a long-lived NVML reader (the agent) must then read the new
    state files, not the ones it had mapped."""
    first = fake.start("--kernel-ms", "0", "--device", "2")
    try:
        assert wait_until(lambda: first.pid in compute_pids(2))  # the reader has the file mapped
    finally:
        first.kill()
        first.wait()
    subprocess.run(["rm", "-rf", str(fake.root / "gpus")], check=True)
    second = fake.start("--kernel-ms", "0", "--device", "2")
    try:
        assert wait_until(lambda: second.pid in compute_pids(2))
        assert first.pid not in compute_pids(2)
    finally:
        second.kill()
        second.wait()
