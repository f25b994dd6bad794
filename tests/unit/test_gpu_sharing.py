"""gpu_sharing on a host whose driver is the fake libnvidia-ml.so.1: files, compute modes, check, diff."""
from __future__ import annotations

import pytest
import yaml

from conftest import run_module


def gpu(n: int, memory: int = 81920):
    return (f"GPU-5e1f0000-0000-4000-8000-00000000000{n}", "NVIDIA H100 80GB HBM3", memory, f"00000000:1{n}:00.0", 0)


GPUS = [gpu(0), gpu(1), gpu(2), gpu(3)]
A, B, C, D = (g[0] for g in GPUS)
TWO_POOLS_AND_MORE = [
    {"uuid": A, "pool_id": 1, "sharing_ratio": 4, "time_quantum_in_sec": 30, "security_level": "low"},
    {"uuid": B, "pool_id": 1, "sharing_ratio": 4, "time_quantum_in_sec": 30, "security_level": "low"},
    {"uuid": C, "pool_id": 2, "sharing_ratio": 1, "time_quantum_in_sec": 60, "security_level": "high"},
    {"uuid": D, "pool_id": 3, "sharing_ratio": 2, "time_quantum_in_sec": 120, "security_level": "medium"},
]


@pytest.fixture
def node(nvml_host, tmp_path):
    nvml_host.write_profile(GPUS)

    class Node:
        etc = tmp_path / "etc"
        paths = {"config_path": str(etc / "sharing.yaml"),
                 "device_plugin_config_path": str(etc / "device-plugin" / "config.yaml"),
                 "runtime_limits_dir": str(etc / "mps")}

        def run(self, gpus, state="present", check=False, diff=False):
            args = {"gpus": gpus, "state": state, "_ansible_check_mode": check, "_ansible_diff": diff, **self.paths}
            return run_module("gpu_sharing", args, nvml_host.env)

        def compute_mode(self, index: int) -> int:
            path = nvml_host.state_dir / f"compute-mode-{index}"
            return int(path.read_text()) if path.exists() else 0

        def files(self) -> dict:
            return {str(p.relative_to(self.etc)): p.read_text() for p in sorted(self.etc.rglob("*")) if p.is_file()}

    return Node()


def test_gpus_of_several_pools_on_one_node(node):
    result = node.run(TWO_POOLS_AND_MORE)

    assert result["changed"] is True and result["version"] == 1, result
    config = yaml.safe_load(node.files()["sharing.yaml"])
    assert config["version"] == 1
    assert config["gpus"][A] == {"pool_id": 1, "sharing_ratio": 4, "slots": 4, "time_quantum_in_sec": 30,
                                 "security_level": "low", "compute_mode": "DEFAULT"}
    assert config["gpus"][C]["compute_mode"] == "EXCLUSIVE_PROCESS"
    assert config["gpus"][D]["memory_limit_mb"] == 40960 and config["gpus"][D]["compute_share_percent"] == 50

    plugin = yaml.safe_load(node.files()["device-plugin/config.yaml"])
    assert plugin["version"] == "v1"
    assert plugin["sharing"]["timeSlicing"]["resources"] == [
        {"name": "nvidia.com/gpu", "rename": "gpu.pool-1", "devices": [A, B], "replicas": 4},
        {"name": "nvidia.com/gpu", "rename": "gpu.pool-3", "devices": [D], "replicas": 2},
    ]  # pool 2 has ratio 1: no sharing entry (the plugin rejects replicas: 1)
    assert f"# config name: {result['device_plugin_config_name']}" in node.files()["device-plugin/config.yaml"]

    assert [node.compute_mode(i) for i in range(4)] == [0, 0, 3, 0]  # high -> EXCLUSIVE_PROCESS
    limits = node.files()[f"mps/{D}.env"].splitlines()[1:]
    assert limits == [f"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={D}=40960M", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50"]
    assert f"mps/{A}.env" not in node.files()


def test_second_run_changes_nothing(node):
    node.run(TWO_POOLS_AND_MORE)
    before = node.files()

    again = node.run(TWO_POOLS_AND_MORE)

    assert again["changed"] is False and again["version"] == 1 and again["changed_files"] == []
    assert node.files() == before


def test_check_mode_reports_and_diffs_without_touching_anything(node):
    node.run(TWO_POOLS_AND_MORE)
    before = node.files()
    stricter = [dict(entry, security_level="high") if entry["uuid"] == A else entry for entry in TWO_POOLS_AND_MORE]

    result = node.run(stricter, check=True, diff=True)

    assert result["changed"] is True
    assert node.files() == before and node.compute_mode(0) == 0
    headers = [d["before_header"] for d in result["diff"]]
    assert headers == [node.paths["config_path"], "compute modes"]
    assert result["diff"][-1] == {"before_header": "compute modes", "after_header": "compute modes",
                                  "before": f"{A}: DEFAULT\n", "after": f"{A}: EXCLUSIVE_PROCESS\n"}
    assert yaml.safe_load(result["diff"][0]["after"])["version"] == 2


def test_absent_restores_the_defaults_and_keeps_the_other_pools(node):
    node.run(TWO_POOLS_AND_MORE)

    result = node.run([{"uuid": C}, {"uuid": D}], state="absent")

    assert result["changed"] is True and result["version"] == 2
    config = yaml.safe_load(node.files()["sharing.yaml"])
    assert sorted(config["gpus"]) == sorted([A, B])
    assert node.compute_mode(2) == 0
    assert f"mps/{D}.env" not in node.files()
    plugin = yaml.safe_load(node.files()["device-plugin/config.yaml"])
    assert [r["rename"] for r in plugin["sharing"]["timeSlicing"]["resources"]] == ["gpu.pool-1"]
    assert node.run([{"uuid": C}, {"uuid": D}], state="absent")["changed"] is False


def test_only_unshared_gpus_means_no_sharing_block(node):
    result = node.run([{"uuid": A, "pool_id": 7, "sharing_ratio": 1}])

    plugin = yaml.safe_load(node.files()["device-plugin/config.yaml"])
    assert "sharing" not in plugin and plugin["flags"] == {"migStrategy": "none"}
    assert result["gpus"][A]["security_level"] == "low" and result["gpus"][A]["time_quantum_in_sec"] == 30


@pytest.mark.parametrize("bad, message", [
    ({"sharing_ratio": 11}, "sharing_ratio must be between 1 and 10"),
    ({"sharing_ratio": 0}, "sharing_ratio must be between 1 and 10"),
    ({"time_quantum_in_sec": 9}, "time_quantum_in_sec must be between 10 and 120"),
    ({"time_quantum_in_sec": 121}, "time_quantum_in_sec must be between 10 and 120"),
    ({"security_level": "max"}, "value of security_level must be one of"),
    ({"uuid": "GPU-not-on-this-node"}, "GPU GPU-not-on-this-node is not usable on this node"),
    ({"pool_id": None}, "pool_id is required with state=present"),
])
def test_bad_input_changes_nothing(node, bad, message):
    node.run(TWO_POOLS_AND_MORE[:1])
    before, modes = node.files(), [node.compute_mode(i) for i in range(4)]
    gpus = [TWO_POOLS_AND_MORE[2], dict(TWO_POOLS_AND_MORE[3], **bad)]  # one good GPU beside the bad one

    result = node.run(gpus)

    assert result.get("failed") is True and message in result["msg"], result
    assert node.files() == before and [node.compute_mode(i) for i in range(4)] == modes


def test_a_gpu_listed_twice_is_refused(node):
    result = node.run([TWO_POOLS_AND_MORE[0], dict(TWO_POOLS_AND_MORE[0], pool_id=2)])
    assert result.get("failed") is True and "listed twice" in result["msg"]
    assert node.files() == {}
