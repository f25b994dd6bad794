"""The kubelet stand-in's device manager (tests/fleet/packages/kubelet/usr/bin/kubelet) against a
device plugin served with the gpuaas agent's generated stubs (agent/src), over the real v1beta1 gRPC
API, without a fleet.

The kubelet script runs on this host under the venv's Python (grpcio and protobuf of
requirements/runtime.in), with a temporary --root-dir, talking to the fake kube-apiserver (as in
test_fake_apiserver.py); the Node and Pods are read back with the real kubectl.  The same script on
a node runs under Debian's python3-grpcio 1.51 and python3-protobuf 3.21: test_standin_packages.py
runs it there.
"""
from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "agent/src"))
from gpuaas_agent.deviceplugin.v1beta1 import api_pb2 as pb  # noqa: E402
from device_plugin_double import RESOURCE, Plugin  # noqa: E402
from waiting import wait_for  # noqa: E402
from kubelet_harness import (  # noqa: E402
    CLIENT_DIR, DEVICE_ROOT, GPU_A, GPU_B, GRACE, KUBELET, Kubelet, gpu_pod, node_tools, pod_status)


def pod(name: str, node: str, limits: dict, init: dict | None = None) -> dict:
    spec = {"nodeName": node, "containers": [{"name": "main", "image": "pause", "resources": {"limits": limits}}]}
    if init is not None:
        spec["initContainers"] = [{"name": "setup", "image": "pause", "resources": {"limits": init}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def failed(kubelet: Kubelet, name: str) -> dict:
    """The status of a Pod the kubelet rejected, once it is rejected."""
    status = wait_for(lambda: pod_status(kubelet, name).get("phase") == "Failed" and pod_status(kubelet, name))
    assert status, (pod_status(kubelet, name), kubelet.logs()[-3000:])
    return status


def test_kubelet_version_needs_no_grpc():
    # Debian's own Python with no site packages: no grpc, no protobuf.
    done = subprocess.run(["/usr/bin/python3", "-S", str(KUBELET), "--version"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(CLIENT_DIR)}, check=False)
    assert done.returncode == 0 and done.stdout == "Kubernetes v@KUBE_VERSION@\n", done.stderr


def test_registration_refusals_health_capacity_and_the_stop_grace_period(kubelet):
    # A kubelet that starts removes the sockets a former one's plugins left, and nothing else.
    kubelet.plugins_dir.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(kubelet.plugins_dir / "old-plugin.sock"))
    stale.close()
    (kubelet.plugins_dir / "notes.txt").write_text("not a socket\n")
    kubelet.start()
    assert not (kubelet.plugins_dir / "old-plugin.sock").exists()
    assert (kubelet.plugins_dir / "notes.txt").exists()
    assert wait_for(kubelet.node_object, what=lambda: f"the Node; the kubelet's log: {kubelet.logs()}")

    plugin = Plugin(kubelet.plugins_dir, "gpuaas-pool-7.sock", [("slot-0", "Healthy"), ("slot-1", "Healthy"),
                                                                ("slot-2", "Healthy")]).start()
    try:
        for version, resource, message in (
                ("v1alpha", RESOURCE, 'requested API version "v1alpha" is not supported by kubelet. '
                                      'Supported version is ["v1beta1"]'),
                ("v1beta1", "pool-7", 'the ResourceName "pool-7" is invalid'),
                ("v1beta1", "kubernetes.io/pool-7", 'the ResourceName "kubernetes.io/pool-7" is invalid'),
                ("v1beta1", "requests.gpuaas.hosted.ai/x", 'the ResourceName "requests.gpuaas.hosted.ai/x" is invalid'),
                ("v1beta1", "gpuaas.hosted.ai/Pool_7!", 'the ResourceName "gpuaas.hosted.ai/Pool_7!" is invalid')):
            with pytest.raises(grpc.RpcError) as refused:
                plugin.register(version, resource)
            assert refused.value.code() == grpc.StatusCode.UNKNOWN
            assert refused.value.details() == message
        assert kubelet.resource() == {}, "a refused plugin gets no endpoint"

        plugin.register()
        state = wait_for(lambda: kubelet.resource().get("list_and_watch_updates") and kubelet.resource())
        assert state["connected"] is True, kubelet.logs()
        assert state["endpoint"] == str(kubelet.plugins_dir / "gpuaas-pool-7.sock")
        assert state["options"] == {"pre_start_required": False, "get_preferred_allocation_available": True}
        assert state["devices"] == [{"ID": f"slot-{i}", "health": "Healthy"} for i in range(3)]
        # Counted per resource name: the refused v1alpha request and this one.
        assert (state["capacity"], state["allocatable"], state["registrations"]) == (3, 3, 2)
        registrations = kubelet.state()["registrations"]
        assert [r["accepted"] for r in registrations] == [False] * 5 + [True]
        assert registrations[0]["error"].startswith('requested API version "v1alpha"') and registrations[0]["time"]

        # The real kubectl reads the extended resource from the Node's status.
        assert wait_for(lambda: kubelet.node_resource() == ("3", "3"),
                        what=lambda: f"capacity and allocatable 3; the Node's status: {kubelet.node_object().get('status')}")
        status = kubelet.node_object()["status"]
        assert {"cpu", "memory", "pods", "ephemeral-storage"} <= set(status["capacity"]) <= set(status["allocatable"])

        plugin.updates.put([("slot-0", "Healthy"), ("slot-1", "Unhealthy"), ("slot-2", "Healthy")])
        assert wait_for(lambda: kubelet.node_resource() == ("3", "2"), what=lambda: f"('3', '2'), not {kubelet.node_resource()}")
        assert kubelet.resource()["list_and_watch_updates"] == 2
        assert kubelet.checkpoint()["Data"]["RegisteredDevices"] == {RESOURCE: ["slot-0", "slot-2"]}

        # The stream ends: every device unhealthy, capacity kept; after the grace period, 0.
        plugin.stop()
        state = wait_for(lambda: kubelet.resource().get("connected") is False and kubelet.resource())
        assert [d["health"] for d in state["devices"]] == ["Unhealthy"] * 3
        assert wait_for(lambda: kubelet.node_resource() == ("3", "0"), what=lambda: f"('3', '0'), not {kubelet.node_resource()}")
        # setters.go: a removed resource is set to 0, not removed from the Node.
        assert wait_for(lambda: kubelet.node_resource() == ("0", "0"), timeout=GRACE + 5,
                        what=lambda: f"('0', '0'), not {kubelet.node_resource()}")
        assert wait_for(lambda: RESOURCE not in kubelet.state()["resources"])
        assert kubelet.checkpoint()["Data"]["RegisteredDevices"] == {}
    finally:
        plugin.stop()


def test_a_second_registration_replaces_the_endpoint(kubelet):
    kubelet.start()
    first = Plugin(kubelet.plugins_dir, "first.sock", [("a", "Healthy")]).start()
    second = Plugin(kubelet.plugins_dir, "second.sock", [("a", "Healthy"), ("b", "Healthy")], preferred=False).start()
    try:
        first.register()
        assert wait_for(lambda: kubelet.resource().get("capacity") == 1)
        second.register()
        assert wait_for(lambda: kubelet.resource().get("capacity") == 2)
        state = kubelet.resource()
        assert state["endpoint"].endswith("/second.sock") and state["registrations"] == 2
        assert state["options"]["get_preferred_allocation_available"] is False
    finally:
        first.stop()
        second.stop()


def test_pods_get_preferred_devices_through_allocate_survive_a_restart_or_are_rejected(kubelet):
    kubelet.start()
    plugin = Plugin(kubelet.plugins_dir, "gpuaas-pool-7.sock", [(f"slot-{i}", "Healthy") for i in range(3)]).start()
    try:
        plugin.register()
        assert wait_for(lambda: kubelet.node_resource() == ("3", "3"),
                        what=lambda: f"capacity and allocatable 3; the kubelet's log: {kubelet.logs()}")
        created = kubelet.cluster.apply(pod("train", kubelet.node, {RESOURCE: "2"}),
                                        pod("other-cluster-resource", kubelet.node, {"example.com/licence": "1"}))
        assert created.returncode == 0, created.stderr
        assert wait_for(lambda: pod_status(kubelet, "train").get("phase") == "Running",
                        what=lambda: f"train Running; the kubelet's log: {kubelet.logs()}")
        # The preferred allocation was asked with every free healthy device, nothing to include.
        assert plugin.preferred_requests == [(["slot-0", "slot-1", "slot-2"], [], 2)]
        assert plugin.allocate_requests == [["slot-2", "slot-1"]]
        record = json.loads((kubelet.records / "allocations/default_train_main.json").read_text())
        assert record["resource"] == RESOURCE and record["device_ids"] == ["slot-2", "slot-1"]
        assert record["preferred"] == ["made-up", "slot-2", "slot-1"]
        assert record["response"] == {
            "envs": {"GPUAAS_SLOTS": "slot-2,slot-1"}, "annotations": {"gpuaas.hosted.ai/pool": "7"},
            "mounts": [{"container_path": "/run/gpuaas", "host_path": "/run/gpuaas/pool-7", "read_only": True}],
            "devices": [{"container_path": "/dev/nvidia0", "host_path": "/dev/nvidia0", "permissions": "rw"}],
            "cdi_devices": ["nvidia.com/gpu=0"]}
        # An extended resource no plugin registered is not the device manager's: the Pod runs.
        assert wait_for(lambda: pod_status(kubelet, "other-cluster-resource").get("phase") == "Running")

        entries = kubelet.checkpoint()["Data"]["PodDeviceEntries"]
        assert [(e["ContainerName"], e["ResourceName"], e["DeviceIDs"]) for e in entries] == [
            ("main", RESOURCE, {"-1": ["slot-2", "slot-1"]})]
        alloc = pb.ContainerAllocateResponse.FromString(base64.b64decode(entries[0]["AllocResp"]))
        assert dict(alloc.envs) == {"GPUAAS_SLOTS": "slot-2,slot-1"}
        assert kubelet.resource()["allocated"] == ["slot-1", "slot-2"]

        # Two more than are free: rejected with the real reason and message, no Allocate call.
        assert kubelet.cluster.apply(pod("too-big", kubelet.node, {RESOURCE: "2"})).returncode == 0
        rejected = failed(kubelet, "too-big")
        assert rejected["reason"] == "UnexpectedAdmissionError"
        assert rejected["message"] == (f"Pod was rejected: Allocate failed due to requested number of devices unavailable "
                                       f"for {RESOURCE}. Requested: 2, Available: 1, which is unexpected")
        assert len(plugin.allocate_requests) == 1

        # A deleted Pod's devices are freed at the next allocation, once its kubelet stopped its
        # containers and deleted it; never given twice. kubectl's own wait returned before that
        # once under CI's load (all-three then found 1 device free): the test waits for the
        # kubelet's deletion itself, the Pod gone from the API server.
        assert kubelet.cluster.kubectl("delete", "pod", "train", "-n", "default").returncode == 0
        assert wait_for(lambda: kubelet.cluster.kubectl("get", "pod", "train", "-n", "default").returncode != 0,
                        what=lambda: f"train deleted by its kubelet; the kubelet's log: {kubelet.logs()}")
        assert kubelet.cluster.apply(pod("all-three", kubelet.node, {RESOURCE: "3"})).returncode == 0
        assert wait_for(lambda: pod_status(kubelet, "all-three").get("phase") == "Running",
                        what=lambda: f"all-three Running; the kubelet's log: {kubelet.logs()}")
        assert sorted(plugin.allocate_requests[-1]) == ["slot-0", "slot-1", "slot-2"]
        assert not (kubelet.records / "allocations/default_train_main.json").exists()

        # A kubelet restart: kubelet.sock again, the plugin's socket removed, the allocations kept
        # from the checkpoint, the resource at 0 until its plugin registers again.
        kubelet.stop()
        plugin.stop()
        kubelet.start()
        assert not (kubelet.plugins_dir / "gpuaas-pool-7.sock").exists()
        state = wait_for(kubelet.resource)
        assert state["connected"] is False and state["capacity"] == 0 and state["devices"] == []
        assert state["allocated"] == ["slot-0", "slot-1", "slot-2"]
        plugin = Plugin(kubelet.plugins_dir, "gpuaas-pool-7.sock", [(f"slot-{i}", "Healthy") for i in range(3)]).start()
        plugin.register()
        assert wait_for(lambda: kubelet.node_resource() == ("3", "3"), what=lambda: f"('3', '3'), not {kubelet.node_resource()}")
        assert kubelet.cluster.apply(pod("after-restart", kubelet.node, {RESOURCE: "1"})).returncode == 0
        assert failed(kubelet, "after-restart")["message"].endswith(f"unavailable for {RESOURCE}. Requested: 1, Available: 0, which is unexpected")

        # No healthy device at all: the other real message.
        plugin.updates.put([(f"slot-{i}", "Unhealthy") for i in range(3)])
        assert wait_for(lambda: kubelet.resource().get("allocatable") == 0)
        assert kubelet.cluster.kubectl("delete", "pod", "all-three", "-n", "default").returncode == 0
        assert kubelet.cluster.apply(pod("unhealthy", kubelet.node, {RESOURCE: "1"})).returncode == 0
        assert failed(kubelet, "unhealthy")["message"] == (
            f"Pod was rejected: Allocate failed due to no healthy devices present; cannot "
            f"allocate unhealthy devices {RESOURCE}, which is unexpected")
    finally:
        plugin.stop()


def test_a_corrupted_checkpoint_is_ignored_and_rewritten(kubelet):
    kubelet.plugins_dir.mkdir(parents=True)
    (kubelet.plugins_dir / "kubelet_internal_checkpoint").write_text(json.dumps(
        {"Data": {"PodDeviceEntries": [], "RegisteredDevices": {RESOURCE: ["x"]}}, "Checksum": 1}))
    kubelet.start()
    assert "Continue after failing to read checkpoint file" in wait_for(kubelet.logs)
    assert kubelet.state()["resources"] == {}


# --------------------------------------------------------------------------- containers' inputs
class VolumeMountsPlugin(Plugin):
    """Allocate as the gpuaas agent answers by default (NVIDIA's volume-mounts strategy)."""

    def Allocate(self, request, context):
        ids = list(request.container_requests[0].devices_ids)
        self.allocate_requests.append(ids)
        gpus = sorted({device.split("::")[0] for device in ids})
        return pb.AllocateResponse(container_responses=[pb.ContainerAllocateResponse(
            envs={"NVIDIA_VISIBLE_DEVICES": DEVICE_ROOT},
            mounts=[pb.Mount(container_path=f"{DEVICE_ROOT}/{gpu}", host_path="/dev/null") for gpu in gpus])])


def test_each_container_sees_the_gpus_the_toolkit_would_give_it(kubelet):
    tools = node_tools(kubelet.root)
    kubelet.env.update(PATH=f"{tools}:{kubelet.env['PATH']}", FAKE_KUBELET_IMAGE_CONFIG_DIR=str(kubelet.root / "images"),
                       FAKE_NVIDIA_RUNTIME_CONFIG=str(kubelet.root / "toolkit.toml"))
    runtime_class = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"}, "handler": "nvidia"}
    kata = {**runtime_class, "metadata": {"name": "kata"}, "handler": "kata"}
    assert kubelet.cluster.apply(runtime_class, kata).returncode == 0
    kubelet.start()
    plugin = VolumeMountsPlugin(kubelet.plugins_dir, "gpuaas-pool-7.sock",
                                [(f"{gpu}::{slot}", "Healthy") for gpu in (GPU_A, GPU_B) for slot in (1, 2)]).start()
    pods = {  # name: (the Pod, the GPUs its container sees)
        # The Pod's own NVIDIA_VISIBLE_DEVICES=all wins over Allocate's in the env, but the toolkit reads the mounts.
        "tenant": (gpu_pod("tenant", kubelet.node, slots=1, env_all=True), "its own"),
        # An image whose ENV asks for all, and no GPU request: nothing.
        "image-env": (gpu_pod("image-env", kubelet.node, image="example.com/cuda-all:1"), []),
        # Positive control: a privileged container is given what its variable names.
        "privileged": (gpu_pod("privileged", kubelet.node, env_all=True, privileged=True), [GPU_A, GPU_B]),
        # runc reads no NVIDIA variable at all.
        "on-runc": (gpu_pod("on-runc", kubelet.node, env_all=True, privileged=True, runtime_class=None), []),
        # The bypass docs/gpu-sharing.md names: a hostPath /dev/null under the devices directory.
        "host-path": (gpu_pod("host-path", kubelet.node, host_dev_null=GPU_B), [GPU_B]),
    }
    try:
        plugin.register()
        assert wait_for(lambda: kubelet.node_resource() == ("4", "4"), what=lambda: f"4 devices; {kubelet.logs()}")
        assert kubelet.cluster.apply(*[entry[0] for entry in pods.values()]).returncode == 0
        for name, (_pod, gpus) in pods.items():
            record = kubelet.records / f"containers/default_{name}_main.json"
            assert wait_for(record.exists, what=lambda: f"{record}; the kubelet's log: {kubelet.logs()[-3000:]}")
            if gpus == "its own":
                allocated = json.loads((kubelet.records / f"allocations/default_{name}_main.json").read_text())
                gpus = [allocated["device_ids"][0].split("::")[0]]
            assert json.loads(record.read_text())["gpus"] == gpus, (name, record.read_text())
        bundle = json.loads((kubelet.records / "containers/bundles/default_tenant_main/config.json").read_text())
        # env: the image's, Allocate's, then the Pod's (the Pod's value wins); mounts: Allocate's.
        assert "NVIDIA_VISIBLE_DEVICES=all" in bundle["process"]["env"]
        assert [m["source"] for m in bundle["mounts"]] == ["/dev/null"]
        assert bundle["mounts"][0]["destination"].startswith(f"{DEVICE_ROOT}/GPU-")
        assert "CAP_SYS_ADMIN" not in bundle["process"]["capabilities"]["bounding"]
        image_env = json.loads((kubelet.records / "containers/bundles/default_image-env_main/config.json").read_text())
        assert "NVIDIA_VISIBLE_DEVICES=all" in image_env["process"]["env"]  # the image's ENV reached the runtime
        assert wait_for(lambda: pod_status(kubelet, "tenant").get("phase") == "Running")

        # A RuntimeClass that does not exist: the API server's RuntimeClass admission refuses the Pod.
        refused = kubelet.cluster.apply(gpu_pod("no-class", kubelet.node, runtime_class="missing"))
        assert refused.returncode != 0
        assert 'pods "no-class" is forbidden: pod rejected: RuntimeClass "missing" not found' in refused.stderr
        # A handler containerd does not have: the sandbox fails and the Pod stays Pending.
        assert kubelet.cluster.apply(gpu_pod("on-kata", kubelet.node, runtime_class="kata")).returncode == 0
        assert wait_for(lambda: 'no runtime for \\"kata\\" is configured' in kubelet.logs(), what=kubelet.logs)
        assert pod_status(kubelet, "on-kata")["phase"] == "Pending"
        assert not (kubelet.records / "containers/default_on-kata_main.json").exists()
    finally:
        plugin.stop()
        # The containers' /dev/null mount points, made on this host as on a node (its filesystem
        # is their root): empty files, removed.
        for gpu in (GPU_A, GPU_B):
            point = Path(DEVICE_ROOT, gpu)
            if point.is_file() and point.stat().st_size == 0:
                kubelet.stop()
                kubelet.remove_containers()
                point.unlink()
        if Path(DEVICE_ROOT).is_dir() and not any(Path(DEVICE_ROOT).iterdir()):
            Path(DEVICE_ROOT).rmdir()
