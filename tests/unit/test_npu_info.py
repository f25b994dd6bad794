from __future__ import annotations

from pathlib import Path

from module_runner import REPO, run_module

NPU_SMI = REPO / "tests/fleet/node_files/npu-smi"


def test_parses_npu_smi(tmp_path, monkeypatch):
    # The stand-in reads /etc/fake-npu/profile; give it one through a copy with the path rewritten.
    profile = tmp_path / "profile"
    profile.write_text("0|910B3|65536|OK\n1|910B3|65536|Warning\n")
    tool = tmp_path / "npu-smi"
    tool.write_text(NPU_SMI.read_text().replace("/etc/fake-npu/profile", str(profile)))
    tool.chmod(0o755)

    result = run_module("npu_info", {"npu_smi_path": str(tool)})

    assert result["source"] == "npu-smi"
    assert result["npu_count"] == 2
    assert result["npus"] == [
        {"id": 0, "chip_name": "910B3", "memory_mb": 65536, "health": "OK"},
        {"id": 1, "chip_name": "910B3", "memory_mb": 65536, "health": "Warning"},
    ]
    assert result["msg"] == "2 Ascend NPU(s) found with npu-smi"


def test_npu_smi_failure_is_one_sentence(tmp_path):
    tool = tmp_path / "npu-smi"
    tool.write_text("#!/bin/sh\necho 'dcmi module initialize failed' >&2\nexit 8\n")
    tool.chmod(0o755)

    result = run_module("npu_info", {"npu_smi_path": str(tool)})

    assert result["failed"] is True
    assert result["msg"] == "npu-smi info -l failed (rc 8): dcmi module initialize failed"


def _pci_device(root: Path, address: str, vendor: str, device_class: str) -> None:
    device = root / address
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
    (device / "class").write_text(device_class + "\n")


def test_falls_back_to_huawei_accelerators_on_the_pci_bus(tmp_path):
    sysfs = tmp_path / "devices"
    _pci_device(sysfs, "0000:c1:00.0", "0x19e5", "0x120000")  # Ascend accelerator
    _pci_device(sysfs, "0000:81:00.0", "0x19e5", "0x020000")  # Huawei NIC: not an NPU
    _pci_device(sysfs, "0000:18:00.0", "0x10de", "0x030200")  # NVIDIA GPU

    result = run_module("npu_info", {"sysfs_pci_path": str(sysfs)}, {"PATH": "/usr/bin:/bin"})

    assert result["source"] == "pci"
    assert result["npus"] == [{"id": 0, "chip_name": None, "memory_mb": None, "health": "unknown",
                               "pci_address": "0000:c1:00.0"}]


def test_host_without_npus(tmp_path):
    result = run_module("npu_info", {"sysfs_pci_path": str(tmp_path / "none")}, {"PATH": "/usr/bin:/bin"})

    assert result["source"] == "none"
    assert result["npu_count"] == 0
    assert not result.get("failed")
    assert result["msg"].startswith("No Ascend NPU on this host")
