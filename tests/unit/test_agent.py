"""The gpuaas agent as it runs on a node: the real program, the fake NVML library, and a kubelet
double speaking the device plugin API v1beta1 (tests/support/agent_harness.py)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from agent_harness import MPS_CONTROL, AgentProcess, Kubelet
from gpuaas_agent.devices import endpoint_for
from waiting import wait_for

MEMORY_MB = 81920


def gpu(n: int):
    return (f"GPU-a9e00000-0000-4000-8000-00000000000{n}", "NVIDIA H100 80GB HBM3", MEMORY_MB, f"00000000:2{n}:00.0", 0)


GPUS = [gpu(0), gpu(1), gpu(2), gpu(3)]
A, B, C, D = (g[0] for g in GPUS)
POOL1 = "gpuaas.hosted.ai/pool-1"
POOL2 = "gpuaas.hosted.ai/pool-2"
POOL3 = "gpuaas.hosted.ai/pool-3"


def share(pool_id: int, slots: int, level: str, mode: str):
    entry = {"pool_id": pool_id, "resource": f"gpuaas.hosted.ai/pool-{pool_id}", "sharing_ratio": slots, "slots": slots,
             "time_quantum_in_sec": 30, "security_level": level, "compute_mode": mode}
    if level == "medium":
        entry.update(memory_limit_mb=MEMORY_MB // slots, compute_share_percent=100 // slots)
    return entry


# Pool 1: A and B, 4 slots each, low. Pool 2: C, 2 slots, high. D is in no pool.
TWO_POOLS = {A: share(1, 4, "low", "DEFAULT"), B: share(1, 4, "low", "DEFAULT"),
             C: share(2, 2, "high", "EXCLUSIVE_PROCESS")}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mps_root():
    with tempfile.TemporaryDirectory(prefix="mps", dir="/tmp") as directory:
        yield Path(directory)
        # The daemons outlive the agent by design (KillMode=process); the test stops them, and
        # unmounts the tmpfs the agent gave each as its /dev/shm.
        for pipe in Path(directory).glob("*/pipe"):
            subprocess.run([sys.executable, str(MPS_CONTROL)], input="quit\n", text=True, env={"CUDA_MPS_PIPE_DIRECTORY": str(pipe)},
                           capture_output=True, check=False, timeout=30)
        for shm in Path(directory).glob("*/shm"):
            subprocess.run(["umount", "--lazy", str(shm)], capture_output=True, check=False)


@pytest.fixture
def node(nvml_host, tmp_path, mps_root):
    nvml_host.write_profile(GPUS)
    kubelet = Kubelet(tmp_path / "device-plugins")
    kubelet.start()
    agents = []

    class Node:
        env = nvml_host.env

        def agent(self, gpus=None, version=1, **settings) -> AgentProcess:
            agent = AgentProcess(tmp_path, nvml_host.env, settings, mps_root)
            agent.write_sharing(version, TWO_POOLS if gpus is None else gpus)
            agent.start()
            agents.append(agent)
            return agent

        def compute_mode(self, index: int) -> int:
            path = nvml_host.state_dir / f"compute-mode-{index}"
            return int(path.read_text()) if path.exists() else 0

        def persistence(self, index: int) -> bool:
            return (nvml_host.loaded_marker.parent / f"persistence-{index}").exists()

        def lose(self, index: int):
            (nvml_host.state_dir / f"lost-{index}").touch()

    yield Node(), kubelet
    for agent in agents:
        agent.stop()
    kubelet.stop()


def test_one_resource_per_pool_and_the_free_gpus_whole(node):
    node, kubelet = node
    node.agent()

    pool1, pool2 = kubelet.plugin(POOL1, 8), kubelet.plugin(POOL2, 2)
    whole = kubelet.plugin("nvidia.com/gpu", 1)
    assert [device for device, unused_health in pool1.devices] == [f"{A}::{n}" for n in range(1, 5)] + [f"{B}::{n}" for n in range(1, 5)]
    assert {health for unused_id, health in pool1.devices + pool2.devices + whole.devices} == {"Healthy"}
    assert whole.devices == [(D, "Healthy")]
    request = next(r for r in kubelet.registrations if r.resource_name == POOL1)
    assert request.version == "v1beta1" and request.endpoint == endpoint_for(POOL1)
    assert request.endpoint.startswith("gpuaas-pool-1-") and request.endpoint.endswith(".sock")
    assert request.options.get_preferred_allocation_available and not request.options.pre_start_required


def test_compute_and_persistence_modes_applied_at_start_unless_told_not_to(node, nvml_host):
    node, kubelet = node
    agent = node.agent()
    kubelet.plugin(POOL2, 2)
    assert [node.compute_mode(i) for i in range(4)] == [0, 0, 3, 0]  # high -> EXCLUSIVE_PROCESS; the others DEFAULT
    assert all(node.persistence(i) for i in range(4))
    agent.stop()

    # A reboot resets both (the fake driver's state is gone); an agent told not to touch modes
    # (a machine whose GPU settings must not change) leaves them as they are.
    for path in list(nvml_host.state_dir.glob("compute-mode-*")) + list(nvml_host.loaded_marker.parent.glob("persistence-*")):
        path.unlink()
    hands_off = node.agent(manage_gpu_modes=False)
    kubelet.plugin(POOL2, 2)
    assert hands_off.status()["manage_gpu_modes"] is False
    assert [node.compute_mode(i) for i in range(4)] == [0, 0, 0, 0]
    assert not any(node.persistence(i) for i in range(4))


def test_allocate_gives_each_level_its_isolation(node, mps_root):
    node, kubelet = node
    gpus = {A: share(1, 4, "low", "DEFAULT"), B: share(3, 2, "medium", "EXCLUSIVE_PROCESS"),
            C: share(2, 2, "high", "EXCLUSIVE_PROCESS")}
    # The variable spells each level's GPU plainly; the default volume-mounts is the next test's.
    agent = node.agent(gpus=gpus, device_list_strategy=["envvar"])

    low = kubelet.plugin(POOL1, 4).allocate([f"{A}::1"])
    assert low == {"envs": {"NVIDIA_VISIBLE_DEVICES": A, "GPUAAS_POOL_ID": "1", "GPUAAS_SECURITY_LEVEL": "low"},
                   "mounts": [], "cdi_devices": []}
    high = kubelet.plugin(POOL2, 2).allocate([f"{C}::2"])
    assert high["envs"] == {"NVIDIA_VISIBLE_DEVICES": C, "GPUAAS_POOL_ID": "2", "GPUAAS_SECURITY_LEVEL": "high"}
    assert high["mounts"] == []

    medium = kubelet.plugin(POOL3, 2).allocate([f"{B}::1"])
    pipe = f"{mps_root}/{B}/pipe"
    assert medium["envs"] == {"NVIDIA_VISIBLE_DEVICES": B, "GPUAAS_POOL_ID": "3", "GPUAAS_SECURITY_LEVEL": "medium",
                              "CUDA_MPS_PIPE_DIRECTORY": "/run/nvidia-mps",
                              "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"{B}={MEMORY_MB // 2}M",
                              "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"}
    # The daemon's pipe directory and its own tmpfs as /dev/shm, nothing else of the host.
    assert medium["mounts"] == [("/run/nvidia-mps", pipe, False), ("/dev/shm", f"{mps_root}/{B}/shm", False)]
    # Both slots of the GPU: twice the memory and the threads.
    both = kubelet.plugin(POOL3, 2).allocate([f"{B}::1", f"{B}::2"])
    assert both["envs"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"{B}={MEMORY_MB}M"
    assert both["envs"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "100"
    # The GPU's MPS control daemon runs, on its own pipe directory, limited to its GPU.
    status = agent.status()["gpus"][B]
    # The slot's share is also the daemon's default for clients that set no limit of their own.
    assert status["mps"] == {"pipe_directory": pipe, "shm_directory": f"{mps_root}/{B}/shm", "error": "",
                             "default_pinned_mem_limit_mb": MEMORY_MB // 2, "default_active_thread_percentage": 50,
                             "repairs": {"stopped": 0, "defaults_changed": 0}, "last_repair": None}
    answer = subprocess.run([sys.executable, str(MPS_CONTROL)], input="get_server_list\n", capture_output=True, text=True,
                            env={"CUDA_MPS_PIPE_DIRECTORY": pipe, "CUDA_MPS_LOG_DIRECTORY": f"{mps_root}/{B}/log"},
                            check=False)
    assert answer.returncode == 0, answer.stderr
    defaults = subprocess.run([sys.executable, str(MPS_CONTROL)], capture_output=True, text=True, check=False,
                              input=f"get_default_active_thread_percentage\nget_default_device_pinned_mem_limit 0\n"
                                    f"get_default_device_pinned_mem_limit {B}\n",
                              env={"CUDA_MPS_PIPE_DIRECTORY": pipe})
    # The memory limit under both of the GPU's names (the daemon does not translate between them).
    assert defaults.stdout.split() == ["50.0", f"{MEMORY_MB // 2 // 1024}G", f"{MEMORY_MB // 2 // 1024}G"]

    with pytest.raises(grpc.RpcError) as refused:
        kubelet.plugin(POOL1, 4).allocate(["GPU-not-here::1"])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown device GPU-not-here::1" in refused.value.details()


def mps_control(pipe: str, commands: str) -> subprocess.CompletedProcess:
    """A client of the daemon, as a tenant's process would be: anything that reaches the pipe."""
    return subprocess.run([sys.executable, str(MPS_CONTROL)], input=commands, text=True, capture_output=True,
                          env={"CUDA_MPS_PIPE_DIRECTORY": pipe}, check=False, timeout=30)


def pool_limits_back(pipe: str, since: float, within: float) -> float:
    """Seconds until the daemon answers the pool's limits (slot of 2: 50 %, 40 GiB) again."""
    wanted = f"50.0\n{MEMORY_MB // 2 // 1024}G\n{MEMORY_MB // 2 // 1024}G\n"
    wait_for(lambda: mps_control(pipe, f"get_default_active_thread_percentage\nget_default_device_pinned_mem_limit 0\n"
                                       f"get_default_device_pinned_mem_limit {B}\n").stdout == wanted,
             timeout=within, interval=0.02, what="the pool's limits back")
    return time.monotonic() - since


@pytest.mark.parametrize("tampering, reason", [
    ("quit\n", "stopped"),
    ("set_default_active_thread_percentage 100\n", "defaults_changed"),
    ("set_default_device_pinned_mem_limit 0 80G\n", "defaults_changed"),
    # A limit under the GPU's UUID rather than its ordinal: the one set last wins (MPS v2 interface).
    (f"set_default_device_pinned_mem_limit {B} 80G\n", "defaults_changed"),
], ids=["quit", "thread-percentage", "memory-by-ordinal", "memory-by-uuid"])
def test_a_tenant_that_stops_the_daemon_or_changes_its_defaults_is_undone_within_a_poll(node, mps_root, tampering,
                                                                                        reason, tmp_path):
    node, kubelet = node
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    agent = node.agent(gpus={B: share(3, 2, "medium", "EXCLUSIVE_PROCESS")}, http_listen=f"127.0.0.1:{free_port()}",
                       http_token_file=str(token))
    kubelet.plugin(POOL3, 2)
    pipe = f"{mps_root}/{B}/pipe"
    assert agent.status()["gpus"][B]["mps"]["repairs"] == {"stopped": 0, "defaults_changed": 0}

    polls_before = agent.status()["polls"]  # the status of the poll before the tampering, or an earlier one
    assert mps_control(pipe, tampering).returncode == 0
    # Stated: within one poll (0.2 s here) plus the check's own commands (the stand-in's are Python
    # processes: seconds on a loaded machine). In polls: the one under way when the tenant struck, or the next.
    seconds = pool_limits_back(pipe, time.monotonic(), within=15)

    wait_for(lambda: agent.status()["gpus"][B]["mps"]["repairs"][reason] == 1, what="the repair in the status")
    mps = agent.status()["gpus"][B]["mps"]
    assert mps["last_repair"]["poll"] - polls_before <= 2, (mps["last_repair"], polls_before, seconds)
    assert mps["repairs"] == {"stopped": 0, "defaults_changed": 0, reason: 1} and mps["error"] == ""
    assert mps["last_repair"]["reason"] == reason and mps["default_active_thread_percentage"] == 50
    metrics = agent.http("/metrics", "t0ken")[2]
    assert f'gpuaas_agent_mps_repairs_total{{gpu="{B}",reason="{reason}"}} 1.0' in metrics
    assert f"MPS control daemon {reason.replace('_', ' ')}" in agent.log.read_text()


def test_the_daemon_has_a_tmpfs_of_its_own_as_dev_shm_and_a_client_in_its_own_namespaces_reaches_it(node, mps_root):
    node, kubelet = node
    node.agent(gpus={B: share(3, 2, "medium", "EXCLUSIVE_PROCESS")}, mps_shm_size="64m")
    kubelet.plugin(POOL3, 2)
    shm, pipe = mps_root / B / "shm", mps_root / B / "pipe"
    pid = (pipe / "nvidia-cuda-mps-control.pid").read_text().strip()

    mount = subprocess.run(["findmnt", "--noheadings", "--output", "FSTYPE,OPTIONS", str(shm)], capture_output=True,
                           text=True, check=True).stdout
    assert mount.split()[0] == "tmpfs" and {"nosuid", "nodev", "noexec", "size=65536k"} <= set(mount.split()[1].split(","))
    # The daemon's /dev/shm is that tmpfs (the stand-in keeps a file in its /dev/shm), not the host's,
    # in a mount namespace of its own.
    assert (shm / f"gpuaas-standin-mps.{pid}").exists()
    assert not Path(f"/dev/shm/gpuaas-standin-mps.{pid}").exists()
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")

    # A container's view, as Allocate builds it: its own IPC and mount namespaces, the tmpfs at
    # /dev/shm and the pipe directory at /run/nvidia-mps (a real CUDA client: bench/gpu_machine_check.py).
    client = subprocess.run(
        ["unshare", "--ipc", "--mount", "--propagation", "private", "--", "sh", "-c",
         # (a tmpfs on /run first, so that the mount point is not made on the host)
         'mount --bind "$1" /dev/shm && mount -t tmpfs none /run && mkdir /run/nvidia-mps && mount --bind "$2" /run/nvidia-mps && '
         'ls /dev/shm && echo get_default_active_thread_percentage | CUDA_MPS_PIPE_DIRECTORY=/run/nvidia-mps "$3" "$4"',
         "sh", str(shm), str(pipe), sys.executable, str(MPS_CONTROL)], capture_output=True, text=True, check=False)
    assert client.returncode == 0, client.stderr
    assert client.stdout.split() == [f"gpuaas-standin-mps.{pid}", "50.0"]


def test_a_failing_step_is_logged_and_the_agent_keeps_serving(node, tmp_path):
    node, kubelet = node
    (tmp_path / "not-a-directory").write_text("")
    agent = AgentProcess(tmp_path, node.env, {"status_file": str(tmp_path / "not-a-directory/status.json")})
    agent.write_sharing(1, TWO_POOLS)
    agent.launch()
    try:
        plugin = kubelet.plugin(POOL1, 8)
        wait_for(lambda: "step failed" in agent.log.read_text(), what="the failure logged")
        time.sleep(1)
        assert agent.process.poll() is None and len(plugin.devices) == 8
    finally:
        agent.stop()


def test_cdi_device_names_when_configured(node):
    node, kubelet = node
    node.agent(device_list_strategy=["envvar", "cdi-cri"])

    given = kubelet.plugin(POOL1, 8).allocate([f"{A}::3", f"{B}::1"])

    assert given["cdi_devices"] == [f"nvidia.com/gpu={A}", f"nvidia.com/gpu={B}"]
    assert given["envs"]["NVIDIA_VISIBLE_DEVICES"] == f"{A},{B}"


def test_allocate_mounts_each_gpu_by_default(node):
    node, kubelet = node
    node.agent()

    given = kubelet.plugin(POOL1, 8).allocate([f"{A}::3", f"{B}::1"])

    # NVIDIA's volume-mounts form (k8s-device-plugin server.go, updateResponseForDeviceMounts).
    assert given["mounts"] == [(f"/var/run/nvidia-container-devices/{A}", "/dev/null", False),
                               (f"/var/run/nvidia-container-devices/{B}", "/dev/null", False)]
    assert given["envs"]["NVIDIA_VISIBLE_DEVICES"] == "/var/run/nvidia-container-devices"
    assert given["cdi_devices"] == []


def test_preferred_allocation_binpacks_by_default_and_spreads_when_asked(node):
    node, kubelet = node
    agent = node.agent()
    pool1 = kubelet.plugin(POOL1, 8)
    # A has one free slot left, B four: binpack fills A first, then goes on to B.
    available = [f"{A}::4"] + [f"{B}::{n}" for n in range(1, 5)]
    assert pool1.preferred(available, 2) == [f"{A}::4", f"{B}::1"]
    assert pool1.preferred([f"{A}::{n}" for n in range(1, 5)] + [f"{B}::{n}" for n in range(1, 5)], 3) == \
        [f"{A}::1", f"{A}::2", f"{A}::3"]
    assert pool1.preferred(available, 2, must_include=[f"{B}::3"]) == [f"{B}::3", f"{B}::1"]
    agent.stop()

    kubelet.restart()
    node.agent(allocation_policy="spread")
    spread = kubelet.plugin(POOL1, 8)
    assert spread.preferred([f"{A}::{n}" for n in range(1, 5)] + [f"{B}::{n}" for n in range(1, 5)], 2) == \
        [f"{A}::1", f"{B}::1"]


def test_a_lost_gpu_turns_its_slots_unhealthy(node):
    node, kubelet = node
    agent = node.agent()
    pool1 = kubelet.plugin(POOL1, 8)

    node.lose(1)  # B

    wait_for(lambda: [h for d, h in pool1.devices if d.startswith(B)] == ["Unhealthy"] * 4, what="B's slots unhealthy")
    assert [h for d, h in pool1.devices if d.startswith(A)] == ["Healthy"] * 4
    status = wait_for(lambda: agent.status()["resources"][POOL1]["healthy"] == 4 and agent.status())
    assert status["gpus"][B]["health"] == "Unhealthy"
    with pytest.raises(grpc.RpcError) as refused:
        pool1.allocate([f"{B}::1"])
    assert "unhealthy" in refused.value.details()


def test_a_gpu_lost_before_the_agent_started_is_learnt_when_it_answers(node, nvml_host):
    node, kubelet = node
    node.lose(1)  # B answers nothing: the agent cannot learn its UUID at start
    agent = node.agent()
    pool1 = kubelet.plugin(POOL1, 8)
    assert [h for d, h in pool1.devices if d.startswith(B)] == ["Unhealthy"] * 4

    (nvml_host.state_dir / "lost-1").unlink()

    wait_for(lambda: {h for unused_id, h in pool1.devices} == {"Healthy"}, what="B's slots healthy")
    assert wait_for(lambda: agent.status()["gpus"].get(B, {}).get("index") == 1, what="B in the status")


def test_a_new_configuration_is_advertised_without_a_restart(node):
    node, kubelet = node
    agent = node.agent()
    pool1, pool2 = kubelet.plugin(POOL1, 8), kubelet.plugin(POOL2, 2)
    pid = agent.process.pid

    # B leaves pool 1, pool 2 is deleted, D joins a new pool 3 at ratio 2.
    agent.write_sharing(2, {A: TWO_POOLS[A], D: share(3, 2, "low", "DEFAULT")})

    wait_for(lambda: len(pool1.devices) == 4, what="pool 1 shrunk to A's slots")
    wait_for(lambda: pool2.devices == [] and pool2.lists, what="pool 2 emptied")
    pool3 = kubelet.plugin(POOL3, 2)
    assert [d for d, unused_health in pool3.devices] == [f"{D}::1", f"{D}::2"]
    whole = wait_for(lambda: kubelet.plugins["nvidia.com/gpu"].devices == [(B, "Healthy"), (C, "Healthy")]
                     and kubelet.plugins["nvidia.com/gpu"], what="B and C advertised whole")
    assert whole and agent.process.pid == pid and agent.process.poll() is None
    status = wait_for(lambda: agent.status()["config"]["version"] == 2 and agent.status())
    assert sorted(status["resources"]) == sorted([POOL1, POOL3, "nvidia.com/gpu"])
    assert node.compute_mode(2) == 0  # C left the high pool: DEFAULT again


@pytest.mark.parametrize("text, reason", [
    ("version: 3\ngpus: [1, 2]\n", "gpus must be a mapping of GPU UUID to its pool"),
    ("{version: 3, gpus: {GPU-x: {pool_id: 1, resource: gpuaas.hosted.ai/pool-1, slots: 11, security_level: low,"
     " compute_mode: DEFAULT}}}", "GPU GPU-x: slots must be between 1 and 10"),
    ("version: 3\ngpus: {", "not YAML"),
])
def test_a_malformed_configuration_is_refused_and_the_last_good_one_stays(node, text, reason):
    node, kubelet = node
    agent = node.agent()
    pool1 = kubelet.plugin(POOL1, 8)

    agent.sharing_path.write_text(text)

    status = wait_for(lambda: agent.status()["config"]["error"] and agent.status(), what="the refusal")
    assert reason in status["config"]["error"] and "\n" not in status["config"]["error"]
    assert status["config"]["version"] == 1 and len(pool1.devices) == 8
    refusal = [line for line in agent.log.read_text().splitlines() if "refused" in line]
    assert len(refusal) == 1 and reason in refusal[0]
    # The same refusal from the CLI, in one line, exit status 1.
    check = subprocess.run([sys.executable, "-m", "gpuaas_agent.cli", "--config", str(agent.settings_path),
                            "check-config"], capture_output=True, text=True, check=False)
    assert check.returncode == 1 and reason in check.stderr and check.stderr.count("\n") == 1

    # Restarted over the bad file, the agent keeps advertising the last good configuration.
    agent.stop()
    agent.start()
    assert len(kubelet.plugin(POOL1, 8).devices) == 8


def test_device_ids_survive_an_agent_restart(node):
    node, kubelet = node
    agent = node.agent()
    before = {name: [d for d, unused_health in kubelet.plugin(name).devices] for name in (POOL1, POOL2, "nvidia.com/gpu")}

    agent.stop()
    count = len(kubelet.registrations)
    agent.start()

    wait_for(lambda: len(kubelet.registrations) >= count + 3, what="registered again")
    after = {name: [d for d, unused_health in kubelet.plugin(name, len(before[name])).devices] for name in before}
    assert after == before


def test_registers_again_when_the_kubelet_restarts(node, tmp_path):
    node, kubelet = node
    node.agent()
    kubelet.plugin(POOL1, 8)
    count = len(kubelet.registrations)

    kubelet.restart()  # removes the plugins' sockets and serves a new kubelet.sock

    wait_for(lambda: {r.resource_name for r in kubelet.registrations[count:]} >= {POOL1, POOL2, "nvidia.com/gpu"},
             what="every resource registered again")
    assert len(kubelet.plugin(POOL1, 8).devices) == 8
    assert (tmp_path / "device-plugins" / endpoint_for(POOL1)).is_socket()


def test_http_status_and_readings_need_the_token(node, tmp_path):
    node, kubelet = node
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    agent = node.agent(http_listen=f"127.0.0.1:{free_port()}", http_token_file=str(token_file))
    kubelet.plugin(POOL1, 8)

    code, headers, unused_body = agent.http("/status", None)
    assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert agent.http("/metrics", "wrong-token")[0] == 401

    code, unused_headers, body = agent.http("/status", "s3cret-token")
    status = json.loads(body)
    assert code == 200 and status["resources"][POOL1]["devices"] == 8
    readings = status["gpus"][A]["readings"]
    assert set(readings) == {"utilization_gpu_percent", "utilization_memory_percent", "memory_used_mb",
                             "temperature_c", "power_w"}
    assert status["gpus"][C]["compute_mode"] == "EXCLUSIVE_PROCESS" and status["gpus"][C]["security_level"] == "high"
    code, headers, metrics = agent.http("/metrics", "s3cret-token")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    assert f'gpuaas_agent_gpu_temperature_celsius{{gpu="{A}",index="0",pool_id="1",resource="{POOL1}"}}' in metrics
    assert f'gpuaas_agent_resource_devices{{health="Healthy",resource="{POOL1}"}} 8.0' in metrics
    # Every name is the agent's own: the REST service's /metrics has gpuaas_gpu_* with other labels.
    names = set(re.findall(r"^(?:# (?:HELP|TYPE) )?([a-zA-Z_:][a-zA-Z0-9_:]*)", metrics, re.MULTILINE))
    assert names and all(name.startswith("gpuaas_agent_") for name in names), sorted(names)


def test_http_without_a_token_does_not_start_and_reports_nothing(tmp_path):
    agent = AgentProcess(tmp_path, {}, {"http_listen": f"127.0.0.1:{free_port()}",
                                        "http_token_file": str(tmp_path / "missing")})
    status = tmp_path / "run/status.json"
    status.parent.mkdir(parents=True)
    status.write_text('{"config": {"version": 1}}')  # an earlier run's report
    run = subprocess.run([sys.executable, "-m", "gpuaas_agent.cli", "--config", str(agent.settings_path), "run"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 2 and "http_listen needs a token" in run.stderr
    assert not status.exists()  # the role's check cannot mistake it for this run's


def test_bad_settings_are_refused_in_one_line(tmp_path):
    settings = tmp_path / "agent.yaml"
    settings.write_text("allocation_policy: random\n")
    run = subprocess.run([sys.executable, "-m", "gpuaas_agent.cli", "--config", str(settings), "status"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2 and "allocation_policy must be one of binpack, spread" in run.stderr
    settings.write_text("mps_shm_size: half\n")
    run = subprocess.run([sys.executable, "-m", "gpuaas_agent.cli", "--config", str(settings), "status"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2 and "mps_shm_size must be a tmpfs size" in run.stderr
    settings.write_text("listen_everywhere: true\n")
    run = subprocess.run([sys.executable, "-m", "gpuaas_agent.cli", "--config", str(settings), "status"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 2 and "unknown setting 'listen_everywhere'" in run.stderr


def test_help_names_the_commands():
    run = subprocess.run([sys.executable, "-m", "gpuaas_agent.cli", "--help"], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "run" in run.stdout and "check-config" in run.stdout


# Tenants (the join itself: test_agent_tenants.py). A PodResources socket that hangs: the tenants
# are unknown with the reason in the status, and the device plugin keeps serving.
def test_a_hanging_pod_resources_socket_leaves_tenants_unknown_and_the_plugin_serving(node, tmp_path):
    node, kubelet = node
    hanging = socket.socket(socket.AF_UNIX)
    hanging.bind(str(tmp_path / "pod-resources.sock"))
    hanging.listen(64)  # connections complete in the kernel; nothing ever answers
    try:
        agent = node.agent(pod_resources_socket=str(tmp_path / "pod-resources.sock"), pod_resources_timeout=0.3,
                           kubeconfig=str(tmp_path / "no-kubeconfig"))
        plugin = kubelet.plugin(POOL1, 8)

        def unknown():
            status = agent.status()
            return status if "did not answer within 0.3 s" in status["tenants"]["reason"] else None
        status = wait_for(unknown, what="tenants unknown because the socket hangs")
        assert status["tenants"]["state"] == "unknown"
        assert {slot["state"] for slot in status["tenants"]["slots"].values()} == {"unknown"}
        assert len(status["tenants"]["slots"]) == 8 + 2 + 1  # pool 1, pool 2, the whole GPU
        # The plugin answers at once, and the loop goes on (polls keep counting).
        started = time.monotonic()
        given = plugin.allocate([f"{A}::1"])
        assert given["envs"]["GPUAAS_POOL_ID"] == "1" and time.monotonic() - started < 1
        polls = status["polls"]
        wait_for(lambda: agent.status()["polls"] >= polls + 3, what="three more polls")
        hanging.close()
        (tmp_path / "pod-resources.sock").unlink()
        wait_for(lambda: "does not exist" in agent.status()["tenants"]["reason"], what="the reason to follow the socket")
    finally:
        hanging.close()
