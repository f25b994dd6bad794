"""What node_init says when the NVIDIA driver does not answer, from captured command output
(issue #31, part 6: the fleet has no kernel modules, DKMS or Secure Boot to show these).

Each case is what the commands print on a real host in that state (plugins/module_utils/_nvidia_driver.py
cites where each line comes from), combined as node_init's diagnostics task combines them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "plugins/module_utils/_nvidia_driver.py"
spec = importlib.util.spec_from_file_location("nvidia_driver_diagnosis", SOURCE)
driver = importlib.util.module_from_spec(spec)
spec.loader.exec_module(driver)

SMI_NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                 "Make sure that the latest NVIDIA driver is installed and running.")

CASES = {
    "Secure Boot rejects the unsigned DKMS module": (
        f"{SMI_NO_DRIVER}\n--- modprobe\nmodprobe: ERROR: could not insert 'nvidia': Key was rejected by service\n"
        "--- mokutil\nSecureBoot enabled\n--- dkms\nnvidia/580.95.05, 6.1.0-41-amd64, x86_64: installed\n",
        ["nvidia kernel module was refused (Key was rejected by service)", "Secure Boot is on (mokutil --sb-state)",
         "mokutil --import /var/lib/dkms/mok.pub"]),
    "an older kernel's ENOKEY, lockdown without mokutil": (
        f"{SMI_NO_DRIVER}\n--- modprobe\nmodprobe: ERROR: could not insert 'nvidia_drm': Required key not available\n"
        "--- mokutil\n/bin/sh: 1: mokutil: not found\n",
        ["nvidia_drm kernel module was refused (Required key not available)",
         "the kernel enforces module signatures"]),
    "DKMS could not build the module (apt's output)": (
        "Setting up nvidia-kernel-dkms (580.95.05-1) ...\nBuilding initial module for 6.1.0-41-amd64\n"
        "Error! Bad return status for module build on kernel: 6.1.0-41-amd64 (x86_64)\n"
        "Consult /var/lib/dkms/nvidia-current/580.95.05/build/make.log for more information.\n"
        "dpkg: error processing package nvidia-kernel-dkms (--configure):\n",
        ["DKMS could not build the NVIDIA module for kernel 6.1.0-41-amd64",
         "(see /var/lib/dkms/nvidia-current/580.95.05/build/make.log)"]),
    "no module for the running kernel": (
        f"{SMI_NO_DRIVER}\n--- modprobe\nmodprobe: FATAL: Module nvidia not found in directory /lib/modules/6.1.0-42-amd64\n"
        "--- mokutil\nSecureBoot disabled\n--- dkms\nnvidia/580.95.05, 6.1.0-41-amd64, x86_64: installed\n",
        ["there is no nvidia module in /lib/modules/6.1.0-42-amd64", "DKMS built none for the running kernel"]),
    "the fabric manager at another version than the driver": (
        "nvidia-fabricmanager.service: Control process exited, code=exited, status=1/FAILURE\n"
        "fabric manager NVIDIA GPU driver interface version 580.95.05 don't match with driver version 580.82.07. "
        "Please update with matching NVIDIA driver package.\n",
        ["the fabric manager (580.95.05) and the driver (580.82.07) are at different versions",
         "cuda-drivers-fabricmanager-<branch>"]),
    "a driver installed over a loaded one": (
        "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 580.95\n",
        ["reboot to load the new module"]),
    "no module loaded, Secure Boot on, nothing more said": (
        f"{SMI_NO_DRIVER}\n--- modprobe\n--- mokutil\nSecureBoot enabled\n",
        ["no NVIDIA kernel module is loaded (Secure Boot is on: check that the module is signed)"]),
}


@pytest.mark.parametrize("output, expected", CASES.values(), ids=CASES.keys())
def test_the_cause_is_named(output, expected):
    said = driver.diagnose(output)
    assert said.startswith("The NVIDIA driver does not answer: ") and said.endswith(".")
    assert "\n" not in said, "one line"
    for part in expected:
        assert part in said


def test_secure_boot_is_named_before_the_nvidia_smi_failure_it_causes():
    output = CASES["Secure Boot rejects the unsigned DKMS module"][0]
    assert "no NVIDIA kernel module is loaded" not in driver.diagnose(output)


def test_an_unknown_failure_says_its_last_line():
    assert driver.diagnose("something\nunexpected happened\n\n") == \
        "The NVIDIA driver does not answer: unexpected happened."
    assert driver.diagnose("") == "The NVIDIA driver does not answer: no output."


def test_secure_boot_disabled_is_not_taken_for_enabled():
    output = f"{SMI_NO_DRIVER}\n--- mokutil\nSecureBoot disabled\n"
    assert "Secure Boot" not in driver.diagnose(output)
