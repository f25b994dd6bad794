# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Why an NVIDIA driver does not answer, read from the output of the commands that show it.

The test fleet can't show these failures (it has no kernel modules, no DKMS and no Secure
Boot), so each rule is pinned by tests/unit/test_nvidia_driver_diagnosis.py on captured output.
Pure Python with no Ansible import: node_init's filter (plugins/filter/nvidia_driver.py) calls it.

What each rule reads, and where the text comes from:
- Secure Boot refusing an unsigned module: modprobe (kmod, libkmod's insmod) prints
  "could not insert 'nvidia': <strerror>", and the kernel's module signature check
  (kernel/module/signing.c) fails with EKEYREJECTED, "Key was rejected by service", on current
  kernels, ENOKEY, "Required key not available", on older ones. `mokutil --sb-state` prints
  "SecureBoot enabled" or "SecureBoot disabled".
- A module DKMS could not build: dkms prints "Error! Bad return status for module build on
  kernel: <kernel> (<arch>)" and "Consult <make.log> for more information."; modprobe then finds
  no module: "FATAL: Module nvidia not found in directory /lib/modules/<kernel>".
- The fabric manager and the driver at different versions: nv-fabricmanager refuses to start
  with "fabric manager NVIDIA GPU driver interface version <fm> don't match with driver version
  <driver>" (NVIDIA/gpu-operator#544, siderolabs/pkgs#720).
- A driver installed over a loaded one: NVML's NVML_ERROR_LIB_RM_VERSION_MISMATCH, which
  nvidia-smi prints as "Failed to initialize NVML: Driver/library version mismatch".
- No module loaded at all: nvidia-smi's "couldn't communicate with the NVIDIA driver".
"""
from __future__ import annotations

import re

SECURE_BOOT_ON = re.compile(r"SecureBoot enabled")
MODULE_REJECTED = re.compile(r"could not insert '(nvidia[\w-]*)': (Key was rejected by service|Required key not available)")
DKMS_BUILD_FAILED = re.compile(r"Bad return status for module build on kernel: (\S+)")
DKMS_MAKE_LOG = re.compile(r"Consult (\S+make\.log)")
MODULE_MISSING = re.compile(r"Module (nvidia[\w-]*) not found in directory (\S+)")
FABRIC_MANAGER_MISMATCH = re.compile(r"fabric manager NVIDIA GPU driver interface version (\S+) don't match with "
                                     r"driver version (\S+?)\.?(?:\s|$)")
LIBRARY_MISMATCH = re.compile(r"Driver/library version mismatch")
NO_DRIVER = re.compile(r"couldn't communicate with the NVIDIA driver")


def _secure_boot(output: str) -> str | None:
    rejected = MODULE_REJECTED.search(output)
    if not rejected:
        return None
    state = "Secure Boot is on (mokutil --sb-state)" if SECURE_BOOT_ON.search(output) else "the kernel enforces module signatures"
    return (f"the {rejected.group(1)} kernel module was refused ({rejected.group(2)}): {state} and the module is not "
            "signed by an enrolled key; enrol DKMS's key (mokutil --import /var/lib/dkms/mok.pub, then confirm at the "
            "next boot), or install signed prebuilt modules, or turn Secure Boot off")


def _dkms(output: str) -> str | None:
    failed = DKMS_BUILD_FAILED.search(output)
    if not failed:
        return None
    log = DKMS_MAKE_LOG.search(output)
    where = f" (see {log.group(1)})" if log else ""
    return (f"DKMS could not build the NVIDIA module for kernel {failed.group(1)}{where}: install that kernel's "
            "headers, or a driver branch that supports the kernel, then reinstall the driver")


def _module_missing(output: str) -> str | None:
    missing = MODULE_MISSING.search(output)
    if not missing:
        return None
    return (f"there is no {missing.group(1)} module in {missing.group(2)}: DKMS built none for the running kernel "
            "(its headers were missing when the driver was installed, or the build failed: dkms status)")


def _fabric_manager(output: str) -> str | None:
    mismatch = FABRIC_MANAGER_MISMATCH.search(output)
    if not mismatch:
        return None
    return (f"the fabric manager ({mismatch.group(1)}) and the driver ({mismatch.group(2)}) are at different versions: "
            "install both at one version (cuda-drivers-fabricmanager-<branch>=<version>), hold them, and reboot")


def _library_mismatch(output: str) -> str | None:
    if not LIBRARY_MISMATCH.search(output):
        return None
    return ("the driver's libraries and the loaded kernel module are at different versions (a driver installed or "
            "upgraded over a loaded one): reboot to load the new module")


def _no_driver(output: str) -> str | None:
    if not NO_DRIVER.search(output):
        return None
    sb = " (Secure Boot is on: check that the module is signed)" if SECURE_BOOT_ON.search(output) else ""
    return f"no NVIDIA kernel module is loaded{sb}"


# Most specific first: a refused or missing module also makes nvidia-smi fail.
RULES = (_secure_boot, _dkms, _module_missing, _fabric_manager, _library_mismatch, _no_driver)


def diagnose(output: str) -> str:
    """One sentence naming why the driver does not answer, from the commands' combined output."""
    for rule in RULES:
        cause = rule(output or "")
        if cause:
            return f"The NVIDIA driver does not answer: {cause}."
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    return f"The NVIDIA driver does not answer: {lines[-1] if lines else 'no output'}."
