from __future__ import annotations

import pytest

from module_runner import run_module

H100 = ("GPU-0a1b2c3d-0000-4000-8000-000000000001", "NVIDIA H100 80GB HBM3", 81559, "00000000:18:00.0", 0)
A100_MIG = ("GPU-0a1b2c3d-0000-4000-8000-000000000002", "NVIDIA A100-SXM4-40GB", 40960, "00000000:07:00.0", 1)


def test_reports_each_gpu_and_the_driver(nvml_host):
    nvml_host.write_profile([H100, A100_MIG], driver="550.54.15", cuda=12040)

    result = run_module("gpu_info", {}, nvml_host.env)

    assert result["changed"] is False
    assert result["driver_state"] == "present"
    assert result["driver_version"] == "550.54.15"
    assert result["cuda_version"] == "12.4"
    assert result["gpu_count"] == 2
    first, second = result["gpus"]
    assert first == {
        "index": 0, "uuid": H100[0], "vendor": "NVIDIA", "model": "NVIDIA H100 80GB HBM3", "memory_mb": 81559,
        "pci_bus_id": "00000000:18:00.0", "compute_mode": "DEFAULT", "mig_mode": "disabled",
        "mig_mode_pending": "disabled", "status": "ok",
    }
    assert second["mig_mode"] == "enabled"
    assert second["memory_mb"] == 40960
    assert "metrics" not in first


def test_driver_with_no_gpus_is_distinct_from_no_driver(nvml_host):
    nvml_host.write_profile([])

    with_driver = run_module("gpu_info", {}, nvml_host.env)
    without_library = run_module("gpu_info", {})  # no libnvidia-ml.so.1 on this test host

    assert with_driver["driver_state"] == "present"
    assert with_driver["gpu_count"] == 0
    assert with_driver["msg"] == "NVIDIA driver 550.54.15 present, 0 GPUs"
    assert without_library["driver_state"] == "absent"
    assert without_library["gpu_count"] == 0
    assert without_library["gpus"] == []
    assert without_library["msg"] == "No NVIDIA driver or NVML library on this host"
    assert "failed" not in without_library and "exception" not in without_library


def test_require_driver_fails_in_one_sentence_without_a_traceback():
    result = run_module("gpu_info", {"require_driver": True})

    assert result["failed"] is True
    assert result["msg"] == "No NVIDIA driver or NVML library on this host"
    assert "exception" not in result


def test_driver_installed_but_not_loaded(nvml_host):
    # The fake library answers DRIVER_NOT_LOADED when its profile is missing, like a host without the module.
    result = run_module("gpu_info", {}, nvml_host.env)

    assert result["driver_state"] == "not_loaded"
    assert result["msg"] == "The NVIDIA driver is installed but not loaded on this host"


def test_driver_installed_since_the_last_boot_is_not_loaded(nvml_host):
    # The GPUs are there (a profile), the driver's files too, but its module loads at the next boot.
    nvml_host.write_profile([H100])
    nvml_host.loaded_marker.unlink()

    result = run_module("gpu_info", {}, nvml_host.env)

    assert result["driver_state"] == "not_loaded"
    assert result["gpu_count"] == 0


def test_lost_gpu_is_reported_without_failing_the_scan(nvml_host):
    nvml_host.write_profile([H100, A100_MIG])
    (nvml_host.state_dir / "lost-1").touch()

    result = run_module("gpu_info", {}, nvml_host.env)

    assert result["gpu_count"] == 2
    assert result["gpus"][0]["status"] == "ok"
    assert result["gpus"][1]["status"] == "lost"
    assert "GPU is lost" in result["gpus"][1]["error"]
    assert result["msg"] == "2 NVIDIA GPU(s), driver 550.54.15, 1 not answering"


def test_compute_mode_is_read_from_nvml(nvml_host):
    nvml_host.write_profile([H100])
    (nvml_host.state_dir / "compute-mode-0").write_text("3\n")

    result = run_module("gpu_info", {}, nvml_host.env)

    assert result["gpus"][0]["compute_mode"] == "EXCLUSIVE_PROCESS"


def test_metrics_are_sampled_when_asked(nvml_host):
    nvml_host.write_profile([H100])

    metrics = run_module("gpu_info", {"include_metrics": True}, nvml_host.env)["gpus"][0]["metrics"]

    assert set(metrics) == {"utilization_gpu_percent", "utilization_memory_percent", "memory_used_mb",
                            "temperature_c", "power_w"}
    assert 0 <= metrics["utilization_gpu_percent"] <= 100
    assert metrics["memory_used_mb"] == 512  # the fake's idle footprint for GPU 0
    assert 30 <= metrics["temperature_c"] <= 90
    assert metrics["power_w"] >= 60.0


def test_check_mode_reads_the_same(nvml_host):
    nvml_host.write_profile([H100])

    result = run_module("gpu_info", {"_ansible_check_mode": True}, nvml_host.env)

    assert result["changed"] is False
    assert result["gpu_count"] == 1


@pytest.mark.parametrize("args, word", [({"include_metrics": "often"}, "include_metrics"),
                                        ({"bogus": 1}, "bogus")])
def test_bad_parameter_is_named(args, word):
    result = run_module("gpu_info", args)

    assert result["failed"] is True
    assert word in result["msg"]
