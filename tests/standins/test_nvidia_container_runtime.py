"""The nvidia-container-runtime stand-in decides which GPUs a container sees as the NVIDIA
container toolkit v1.17.8 does.  Each row cites the toolkit's behaviour; the decision is a pure
function of the OCI spec and config.toml (as allocate_test.go tables the device plugin's policy),
and one process-level test runs `create` on a bundle as containerd's shim would."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[1] / "fleet/packages/nvidia-container-toolkit-base/usr/bin/nvidia-container-runtime"
_loader = importlib.machinery.SourceFileLoader("fake_nvidia_container_runtime", str(RUNTIME))
_spec = importlib.util.spec_from_loader(_loader.name, _loader)
ncr = importlib.util.module_from_spec(_spec)
_loader.exec_module(ncr)

A, B = "GPU-aaaa", "GPU-bbbb"
ROOT = "/var/run/nvidia-container-devices"
# What node_init writes; and the toolkit's defaults (internal/config/config.go GetDefault).
LOCKED = "accept-nvidia-visible-devices-as-volume-mounts = true\naccept-nvidia-visible-devices-envvar-when-unprivileged = false\n"
DEFAULTS = None  # no config.toml
DEFAULT_CAPS = ("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE")


def spec(env=(), mounts=(), caps=DEFAULT_CAPS, annotations=None):
    return {"process": {"env": list(env), "capabilities": {"bounding": list(caps)}},
            "mounts": [{"destination": dest, "source": src, "type": "bind"} for dest, src in mounts],
            "annotations": annotations or {}}


MOUNT_A = (f"{ROOT}/{A}", "/dev/null")
ALL = f"NVIDIA_VISIBLE_DEVICES={ROOT}"

# id: (config.toml, spec, expected mode, expected devices, why)
CASES = {
    "mounts-accepted": (LOCKED, spec([ALL], [MOUNT_A]), "legacy", [A],
                        "container_config.go getDevices: the mounts first when accept-...-as-volume-mounts"),
    "pod-env-all-ignored-when-unprivileged": (LOCKED, spec(["NVIDIA_VISIBLE_DEVICES=all"], [MOUNT_A]), "legacy", [A],
                                              "getDevices returns the mounts; the variable is never read"),
    "env-all-without-mounts-refused": (LOCKED, spec(["NVIDIA_VISIBLE_DEVICES=all"]), "legacy", [],
                                       "getDevices: the variable only if privileged or accept-...-when-unprivileged"),
    # Positive controls: the variable IS honoured when the container is privileged or the toolkit accepts it.
    "env-all-privileged": (LOCKED, spec(["NVIDIA_VISIBLE_DEVICES=all"], caps=DEFAULT_CAPS + ("CAP_SYS_ADMIN",)),
                           "legacy", ["all"], "privileged.go IsPrivileged: CAP_SYS_ADMIN in the bounding set"),
    "env-all-toolkit-defaults": (DEFAULTS, spec(["NVIDIA_VISIBLE_DEVICES=all"], [MOUNT_A]), "legacy", ["all"],
                                 "GetDefault: envvar accepted, mounts not (so the mounts are ignored)"),
    "sys-admin-in-effective-only": (LOCKED, spec(["NVIDIA_VISIBLE_DEVICES=all"], caps=DEFAULT_CAPS) | {
        "process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"], "capabilities": {"effective": ["CAP_SYS_ADMIN"],
                                                                            "bounding": list(DEFAULT_CAPS)}}},
        "legacy", [], "IsPrivileged reads the bounding set only"),
    "mount-of-another-file-ignored": (LOCKED, spec([ALL], [(f"{ROOT}/{B}", "/etc/hostname"), MOUNT_A]), "legacy", [A],
                                      "cuda_image.go DevicesFromMounts: only mounts whose source is /dev/null"),
    "hostpath-dev-null-bypass": (LOCKED, spec([], [MOUNT_A, (f"{ROOT}/{B}", "/dev/null")]), "legacy", [A, B],
                                 "DevicesFromMounts cannot tell the device plugin's mount from a Pod's hostPath"),
    "void": (DEFAULTS, spec(["NVIDIA_VISIBLE_DEVICES=void"]), "legacy", [], "devices.go NewVisibleDevices: void"),
    "none-before-all": (DEFAULTS, spec(["NVIDIA_VISIBLE_DEVICES=none,all"]), "legacy", [],
                        "NewVisibleDevices: the first all/none decides"),
    "legacy-cuda-image": (DEFAULTS, spec(["CUDA_VERSION=11.0"]), "legacy", ["all"],
                          "DevicesFromEnvvars: unset with CUDA_VERSION and no NVIDIA_REQUIRE_CUDA means all"),
    "unset": (DEFAULTS, spec(), "legacy", [], "DevicesFromEnvvars: unset is void"),
    "cdi-annotations-first": (DEFAULTS, spec(["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=all"],
                                             annotations={"cdi.k8s.io/gpuaas": f"nvidia.com/gpu={B}"}),
                              "cdi", [f"nvidia.com/gpu={B}"], "auto.go: cdi when only qualified names; cdi.go: annotations first"),
    "a-plain-mount-means-legacy": (LOCKED, spec(["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=all"], [MOUNT_A],
                                                annotations={"cdi.k8s.io/gpuaas": f"nvidia.com/gpu={B}"}), "legacy", [A],
                                   "OnlyFullyQualifiedCDIDevices is false with a non-cdi/ mount; the hook ignores annotations"),
    "cdi-env-refused-when-unprivileged": (LOCKED, spec(["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=all"]), "cdi", [],
                                          "cdi.go getDevicesFromSpec: the variable only if accepted or privileged"),
    "cdi-env-accepted-by-default": (DEFAULTS, spec(["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=all"]), "cdi",
                                    ["nvidia.com/gpu=all"], "cdi.go: AcceptEnvvarUnprivileged (default true)"),
    "cdi-mounts": (LOCKED, spec([], [(f"{ROOT}/cdi/nvidia.com/gpu/{A}", "/dev/null")]), "cdi", [f"nvidia.com/gpu={A}"],
                   "cuda_image.go CDIDevicesFromMounts: cdi/<vendor>/<class>/<device>"),
    "mode-legacy-forced": ("[nvidia-container-runtime]\nmode = \"legacy\"\n",
                           spec(["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=all"]), "legacy", ["nvidia.com/gpu=all"],
                           "auto.go resolveMode: a mode other than auto is used as it is"),
}


@pytest.mark.parametrize("config, oci, mode, devices, why", CASES.values(), ids=CASES.keys())
def test_the_toolkit_decides_which_devices_a_container_gets(config, oci, mode, devices, why):
    assert ncr.requested_devices(oci, ncr.settings(config))[:2] == (mode, devices), why


def test_the_toolkits_defaults_when_config_toml_is_absent():
    assert ncr.settings(None) == {"accept-nvidia-visible-devices-envvar-when-unprivileged": True,
                                  "accept-nvidia-visible-devices-as-volume-mounts": False, "mode": "auto",
                                  "default-kind": "nvidia.com/gpu", "annotation-prefixes": ["cdi.k8s.io/"]}


@pytest.mark.parametrize("devices, gpus", [(["all"], [A, B]), (["1"], [B]), ([A], [A]), (["nvidia.com/gpu=all"], [A, B]),
                                           ([f"nvidia.com/gpu={B}"], [B]), ([], [])])
def test_devices_resolve_to_the_nodes_gpus(devices, gpus):
    assert ncr.visible_gpus(devices, [("0", A), ("1", B)]) == gpus


def test_create_records_what_the_container_would_see_and_refuses_a_broken_config(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(spec(["NVIDIA_VISIBLE_DEVICES=all"], [MOUNT_A])))
    config, records = tmp_path / "config.toml", tmp_path / "records"
    config.write_text(LOCKED)
    env = {**os.environ, "FAKE_NVIDIA_RUNTIME_CONFIG": str(config), "FAKE_NVIDIA_RUNTIME_RECORDS": str(records),
           "PATH": "/nonexistent"}  # no nvidia-smi: the GPUs are the named UUIDs
    done = subprocess.run([sys.executable, str(RUNTIME), "--root", "/run/x", "create", "--bundle", str(bundle), "ns_pod_c"],
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    record = json.loads((records / "ns_pod_c.json").read_text())
    assert (record["mode"], record["source"], record["devices"], record["gpus"]) == ("legacy", "mounts", [A], [A])
    config.write_text("accept-nvidia-visible-devices-as-volume-mounts = \n")
    broken = subprocess.run([sys.executable, str(RUNTIME), "create", "--bundle", str(bundle), "ns_pod_d"],
                            env=env, capture_output=True, text=True, check=False)
    assert broken.returncode == 1 and "error loading config" in broken.stderr
    assert not (records / "ns_pod_d.json").exists()
