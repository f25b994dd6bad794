"""How Allocate hands a container its GPUs under each device-list strategy (NVIDIA
k8s-device-plugin, internal/plugin/server.go, getAllocateResponse), and the agent refusing a
strategy it does not know, at start, in one line."""
from __future__ import annotations

import subprocess
import sys

import pytest
from gpuaas_agent.config import DEVICE_LIST_STRATEGIES, ConfigError, Settings, load_settings
from gpuaas_agent.devices import ResourcePlan, Slot, container_allocation

A, B = "GPU-aaaaaaaa", "GPU-bbbbbbbb"
ROOT = "/var/run/nvidia-container-devices"
MOUNTS = [(f"{ROOT}/{A}", "/dev/null", False), (f"{ROOT}/{B}", "/dev/null", False)]

# id: (strategies, NVIDIA_VISIBLE_DEVICES or None, mounts, CDI device names)
CASES = {
    # updateResponseForDeviceMounts: the variable names the mount directory, one /dev/null per GPU.
    "volume-mounts": (["volume-mounts"], ROOT, MOUNTS, []),
    # updateResponseForDeviceListEnvVar: the UUIDs, and no mounts.
    "envvar": (["envvar"], f"{A},{B}", [], []),
    # Both: volume-mounts is applied after envvar in getAllocateResponse, so the variable is the directory.
    "envvar-and-volume-mounts": (["envvar", "volume-mounts"], ROOT, MOUNTS, []),
    # Only CDI: getAllocateResponse returns before the variable and the mounts (AllCDIEnabled).
    "cdi-cri": (["cdi-cri"], None, [], [f"nvidia.com/gpu={A}", f"nvidia.com/gpu={B}"]),
    "volume-mounts-and-cdi-cri": (["volume-mounts", "cdi-cri"], ROOT, MOUNTS,
                                  [f"nvidia.com/gpu={A}", f"nvidia.com/gpu={B}"]),
}


def whole_gpus() -> ResourcePlan:
    return ResourcePlan("nvidia.com/gpu", "x.sock", (Slot(A, A), Slot(B, B)), {})


def test_every_strategy_has_a_row():
    assert {s for case in CASES.values() for s in case[0]} == set(DEVICE_LIST_STRATEGIES)


@pytest.mark.parametrize("strategies, variable, mounts, cdi", CASES.values(), ids=CASES.keys())
def test_each_strategy_hands_over_the_gpus_as_nvidias_plugin_does(strategies, variable, mounts, cdi):
    given = container_allocation(whole_gpus(), [B, A], Settings(device_list_strategy=tuple(strategies)))
    assert given["envs"].get("NVIDIA_VISIBLE_DEVICES") == variable
    assert given["mounts"] == mounts
    assert given["cdi_devices"] == cdi


def test_volume_mounts_is_the_default():
    assert Settings().device_list_strategy == ("volume-mounts",)
    assert load_settings(None).device_list_strategy == ("volume-mounts",)


@pytest.mark.parametrize("value, named", [(["volume-mount"], "'volume-mount' is unknown;"),
                                          (["envvar", "cdi-annotations"], "'cdi-annotations' is unknown;"),
                                          ([], "")])
def test_an_unknown_strategy_is_refused(tmp_path, value, named):
    path = tmp_path / "agent.yaml"
    path.write_text(f"device_list_strategy: {value}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(str(path))
    assert str(refused.value) == (f"{path}: device_list_strategy{' ' + named if named else ''} it takes one or more of "
                                  "volume-mounts, envvar, cdi-cri")


def test_the_agent_refuses_an_unknown_strategy_at_start_in_one_line(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("device_list_strategy: [volume-mount]\n")
    started = subprocess.run([sys.executable, "-m", "gpuaas_agent.cli", "--config", str(path), "run"],
                             capture_output=True, text=True, timeout=30, check=False)
    assert started.returncode == 2
    assert started.stderr.splitlines() == [
        f"gpuaas-agent: {path}: device_list_strategy 'volume-mount' is unknown; it takes one or more of "
        "volume-mounts, envvar, cdi-cri"]


def test_the_roles_argument_spec_offers_the_agents_strategies_and_default():
    import yaml
    from module_runner import REPO
    spec = yaml.safe_load((REPO / "roles/gpu_sharing/meta/argument_specs.yml").read_text())
    option = spec["argument_specs"]["main"]["options"]["gpu_sharing_agent_device_list_strategy"]
    defaults = yaml.safe_load((REPO / "roles/gpu_sharing/defaults/main.yml").read_text())
    assert option["choices"] == list(DEVICE_LIST_STRATEGIES)
    assert option["default"] == defaults["gpu_sharing_agent_device_list_strategy"] == list(Settings().device_list_strategy)
