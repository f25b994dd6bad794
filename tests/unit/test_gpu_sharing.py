"""gpu_sharing on a host whose driver is the fake libnvidia-ml.so.1: the node configuration, check, diff.

The module writes the configuration only; the gpuaas agent applies it (tests/agent)."""
from __future__ import annotations

import pytest
import yaml

from module_runner import run_module


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
        paths = {"config_path": str(etc / "sharing.yaml")}

        def run(self, gpus, state="present", check=False, diff=False, **options):
            args = {"gpus": gpus, "state": state, "_ansible_check_mode": check, "_ansible_diff": diff, **self.paths,
                    **options}
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
    assert config["gpus"][A] == {"pool_id": 1, "resource": "gpuaas.hosted.ai/pool-1", "sharing_ratio": 4, "slots": 4,
                                 "time_quantum_in_sec": 30, "security_level": "low", "compute_mode": "DEFAULT"}
    assert config["gpus"][C]["compute_mode"] == "EXCLUSIVE_PROCESS"  # high
    # medium is MPS: EXCLUSIVE_PROCESS as NVIDIA recommends, and each slot's share of the GPU
    assert config["gpus"][D]["compute_mode"] == "EXCLUSIVE_PROCESS"
    assert config["gpus"][D]["memory_limit_mb"] == 40960 and config["gpus"][D]["compute_share_percent"] == 50
    assert result["resources"] == {"gpuaas.hosted.ai/pool-1": 8, "gpuaas.hosted.ai/pool-2": 1,
                                   "gpuaas.hosted.ai/pool-3": 2}
    assert list(node.files()) == ["sharing.yaml"]  # no device plugin config, no limits files: the agent does that
    # The module sets no GPU setting itself: the agent applies the compute modes.
    assert [node.compute_mode(i) for i in range(4)] == [0, 0, 0, 0]


def test_mps_in_default_mode_and_another_resource_prefix(node):
    result = node.run(TWO_POOLS_AND_MORE[3:], mps_compute_mode="DEFAULT", resource_prefix="example.com/tenant-pool-")

    assert result["gpus"][D]["compute_mode"] == "DEFAULT"
    assert result["gpus"][D]["resource"] == "example.com/tenant-pool-3"


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
    assert node.files() == before
    assert [d["before_header"] for d in result["diff"]] == [node.paths["config_path"]]
    after = yaml.safe_load(result["diff"][0]["after"])
    assert after["version"] == 2 and after["gpus"][A]["compute_mode"] == "EXCLUSIVE_PROCESS"
    assert yaml.safe_load(result["diff"][0]["before"])["gpus"][A]["compute_mode"] == "DEFAULT"


def test_absent_takes_gpus_out_and_keeps_the_other_pools(node):
    node.run(TWO_POOLS_AND_MORE)

    result = node.run([{"uuid": C}, {"uuid": D}], state="absent")

    assert result["changed"] is True and result["version"] == 2
    config = yaml.safe_load(node.files()["sharing.yaml"])
    assert sorted(config["gpus"]) == sorted([A, B])
    assert result["resources"] == {"gpuaas.hosted.ai/pool-1": 8}
    assert node.run([{"uuid": C}, {"uuid": D}], state="absent")["changed"] is False


def test_a_ratio_1_pool_is_one_device_per_gpu(node):
    result = node.run([{"uuid": A, "pool_id": 7, "sharing_ratio": 1}])

    assert result["resources"] == {"gpuaas.hosted.ai/pool-7": 1}
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
    before = node.files()
    gpus = [TWO_POOLS_AND_MORE[2], dict(TWO_POOLS_AND_MORE[3], **bad)]  # one good GPU beside the bad one

    result = node.run(gpus)

    assert result.get("failed") is True and message in result["msg"], result
    assert node.files() == before


def test_a_gpu_listed_twice_is_refused(node):
    result = node.run([TWO_POOLS_AND_MORE[0], dict(TWO_POOLS_AND_MORE[0], pool_id=2)])
    assert result.get("failed") is True and "listed twice" in result["msg"]
    assert node.files() == {}
