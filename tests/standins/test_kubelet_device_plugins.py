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
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/fleet"))
sys.path.insert(0, str(REPO / "agent/src"))
import package_repo  # noqa: E402
from gpuaas_agent.deviceplugin.v1beta1 import api_pb2 as pb  # noqa: E402
from device_plugin_double import RESOURCE, Plugin  # noqa: E402
from waiting import wait_for  # noqa: E402

KUBELET = REPO / "tests/fleet/packages/kubelet/usr/bin/kubelet"
CLIENT_DIR = REPO / "tests/fleet/packages/kubelet/usr/lib/fake-kubernetes"
GRACE = 2.0


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory) -> Path:
    """api.proto's descriptor set, built as the kubelet package's build builds it (and the
    PodResources API's beside it, podresources.binpb)."""
    directory = tmp_path_factory.mktemp("proto")
    package_repo.build_pod_resources_descriptors(directory / "podresources.binpb")
    return package_repo.build_device_plugin_descriptors(directory / "api.binpb")


class Kubelet:
    def __init__(self, root: Path, cluster, descriptors: Path, node: str = "gpu-node-1"):
        self.root, self.cluster, self.node = root, cluster, node
        self.plugins_dir = root / "var-lib-kubelet/device-plugins"
        self.records = root / "var-lib-kubelet/fake-device-manager"
        self.process: subprocess.Popen | None = None
        (root / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
        (root / "cni").mkdir(exist_ok=True)
        self.cri = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.cri.bind(str(root / "containerd.sock"))
        self.cri.listen(16)
        admin = json.loads((cluster.root / "admin.conf").read_text())
        server = admin["clusters"][0]["cluster"]
        user = admin["users"][0]["user"]
        (root / "kubelet.conf").write_text(
            "apiVersion: v1\nclusters:\n- cluster:\n"
            f"    certificate-authority-data: {server['certificate-authority-data']}\n    server: {server['server']}\n"
            "  name: kubernetes\nusers:\n- name: kubelet\n  user:\n"
            f"    client-certificate-data: {user['client-certificate-data']}\n"
            f"    client-key-data: {user['client-key-data']}\n")
        self.env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(CLIENT_DIR), "FAKE_PROC_SWAPS": str(root / "swaps"),
                    "FAKE_CNI_CONF_DIR": str(root / "cni"), "FAKE_KUBELET_HEARTBEAT_SECONDS": "0.3",
                    "FAKE_KUBELET_ENDPOINT_GRACE_SECONDS": str(GRACE),
                    "FAKE_KUBELET_DEVICEPLUGIN_DESCRIPTORS": str(descriptors),
                    "FAKE_KUBELET_PODRESOURCES_DESCRIPTORS": str(descriptors.parent / "podresources.binpb")}
        # The containers are real processes in real cgroups: this test's own cgroup root (the
        # kubelet's cgroupRoot) keeps them apart from any other run's, and its own log directory.
        self.cgroup_root = f"/gpuaas-test-{root.name}"
        self.pod_logs = root / "pods"
        self.config = {"cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root, "podLogsDir": str(self.pod_logs)}
        self.extra_args: list = []

    def socket_inode(self) -> tuple | None:
        try:
            info = (self.plugins_dir / "kubelet.sock").stat()
        except FileNotFoundError:
            return None
        return info.st_ino, info.st_ctime_ns

    def start(self) -> "Kubelet":
        before = self.socket_inode()
        # The record is the stand-in's, not the kubelet's: drop the last run's, so that what the
        # test reads next is this kubelet's (it rewrites it as it starts; reading the old one
        # before that made the restart check flaky).
        (self.records / "state.json").unlink(missing_ok=True)
        self.log = open(self.root / "kubelet.log", "a")  # noqa: SIM115  (closed in stop)
        (self.root / "config.yaml").write_text("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
                                               + "".join(f"{k}: {v}\n" for k, v in self.config.items()))
        self.process = subprocess.Popen(
            [sys.executable, str(KUBELET), f"--root-dir={self.root / 'var-lib-kubelet'}",
             f"--container-runtime-endpoint=unix://{self.root / 'containerd.sock'}", f"--config={self.root / 'config.yaml'}",
             f"--kubeconfig={self.root / 'kubelet.conf'}", f"--hostname-override={self.node}", *self.extra_args],
            stdout=self.log, stderr=self.log, env=self.env)
        # A new kubelet.sock (a former kubelet's stays when it is killed): another inode, or ctime.
        assert wait_for(lambda: self.socket_inode() not in (None, before) or self.process.poll() is not None,
                        what=lambda: f"kubelet.sock made again; the kubelet's log: {self.logs()}")
        assert self.process.poll() is None, self.logs()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process:
            self.log.close()

    def logs(self) -> str:
        return (self.root / "kubelet.log").read_text()

    def tasks(self) -> list:
        """The runtime's task records (task.json with state.json's and exit.json's fields)."""
        found = []
        for directory in sorted((self.records / "containers/tasks").glob("*")):
            record = {}
            for name in ("task.json", "state.json", "exit.json"):
                path = directory / name
                if path.exists():
                    try:
                        record.update(json.loads(path.read_text()))
                    except ValueError:
                        pass
            if record.get("id"):
                found.append(record)
        return found

    def remove_containers(self) -> None:
        """The containers outlive the kubelet (as real ones do): the test ends them and their cgroups."""
        for record in self.tasks():
            for key in ("pid", "shimPid"):
                if record.get(key):
                    try:
                        os.kill(record[key], 9)
                    except OSError:
                        pass
        top = Path("/sys/fs/cgroup/unified" if Path("/sys/fs/cgroup/unified/cgroup.controllers").exists()
                   else "/sys/fs/cgroup") / self.cgroup_root.lstrip("/")
        # And whatever else is in this test's cgroups (a process whose record a broken kubelet lost).
        for procs in top.rglob("cgroup.procs") if top.exists() else ():
            for pid in procs.read_text().split():
                try:
                    os.kill(int(pid), 9)
                except OSError:
                    pass
        for _attempt in range(50):
            for directory in sorted(top.rglob("*"), key=lambda p: -len(p.parts)) if top.exists() else []:
                if directory.is_dir():
                    try:
                        directory.rmdir()
                    except OSError:
                        pass
            try:
                if top.exists():
                    top.rmdir()
                break
            except OSError:
                time.sleep(0.05)

    def state(self) -> dict:
        path = self.records / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def resource(self) -> dict:
        return self.state().get("resources", {}).get(RESOURCE, {})

    def node_object(self) -> dict:
        got = self.cluster.kubectl("get", "node", self.node, "-o", "json")
        return json.loads(got.stdout) if got.returncode == 0 else {}

    def node_resource(self) -> tuple[str | None, str | None]:
        status = self.node_object().get("status", {})
        return status.get("capacity", {}).get(RESOURCE), status.get("allocatable", {}).get(RESOURCE)

    def checkpoint(self) -> dict:
        return json.loads((self.plugins_dir / "kubelet_internal_checkpoint").read_text())


def pod(name: str, node: str, limits: dict, init: dict | None = None) -> dict:
    spec = {"nodeName": node, "containers": [{"name": "main", "image": "pause", "resources": {"limits": limits}}]}
    if init is not None:
        spec["initContainers"] = [{"name": "setup", "image": "pause", "resources": {"limits": init}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def pod_status(kubelet: Kubelet, name: str) -> dict:
    got = kubelet.cluster.kubectl("get", "pod", name, "-n", "default", "-o", "json")
    return json.loads(got.stdout).get("status", {}) if got.returncode == 0 else {}


def failed(kubelet: Kubelet, name: str) -> dict:
    """The status of a Pod the kubelet rejected, once it is rejected."""
    status = wait_for(lambda: pod_status(kubelet, name).get("phase") == "Failed" and pod_status(kubelet, name))
    assert status, (pod_status(kubelet, name), kubelet.logs()[-3000:])
    return status


@pytest.fixture
def kubelet(request, cluster, descriptors):  # noqa: F811
    # A short root: a unix socket's path has at most 107 characters.
    root = Path(tempfile.mkdtemp(prefix="dm-", dir="/tmp"))
    instance = Kubelet(root, cluster, descriptors, node=f"gpu-{root.name[3:].lower().replace('_', '-')}")
    yield instance
    instance.stop()
    instance.remove_containers()
    instance.cri.close()
    shutil.rmtree(root, ignore_errors=True)


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
        # containers and deleted it (kubectl waits for that); never given twice.
        assert kubelet.cluster.kubectl("delete", "pod", "train", "-n", "default").returncode == 0
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
GPU_A, GPU_B = "GPU-aaaa", "GPU-bbbb"
DEVICE_ROOT = "/var/run/nvidia-container-devices"
RUNTIME = REPO / "tests/fleet/packages/nvidia-container-toolkit-base/usr/bin/nvidia-container-runtime"


class VolumeMountsPlugin(Plugin):
    """Allocate as the gpuaas agent answers by default (NVIDIA's volume-mounts strategy)."""

    def Allocate(self, request, context):
        ids = list(request.container_requests[0].devices_ids)
        self.allocate_requests.append(ids)
        gpus = sorted({device.split("::")[0] for device in ids})
        return pb.AllocateResponse(container_responses=[pb.ContainerAllocateResponse(
            envs={"NVIDIA_VISIBLE_DEVICES": DEVICE_ROOT},
            mounts=[pb.Mount(container_path=f"{DEVICE_ROOT}/{gpu}", host_path="/dev/null") for gpu in gpus])])


def node_tools(root: Path) -> Path:
    """A `containerd` whose `config dump` has the NVIDIA runtime (runc the default), a node's
    `nvidia-smi` with two GPUs, and an image whose config sets NVIDIA_VISIBLE_DEVICES=all."""
    tools = root / "bin"
    tools.mkdir()
    dump = ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  default_runtime_name = "runc"\n'
            '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n  runtime_type = "io.containerd.runc.v2"\n'
            '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]\n  runtime_type = "io.containerd.runc.v2"\n'
            f'[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.options]\n  BinaryName = "{RUNTIME}"\n')
    (tools / "containerd").write_text(f"#!/bin/sh\ncat <<'EOF'\n{dump}EOF\n")
    (tools / "nvidia-smi").write_text(f"#!/bin/sh\necho '0, {GPU_A}'\necho '1, {GPU_B}'\n")
    for tool in ("containerd", "nvidia-smi"):
        (tools / tool).chmod(0o755)
    images = root / "images"
    images.mkdir()
    (images / "example.com%2Fcuda-all%3A1.json").write_text(json.dumps({"config": {"Env": [
        "PATH=/usr/bin", "NVIDIA_VISIBLE_DEVICES=all"], "Entrypoint": ["sleep"], "Cmd": ["infinity"]}}))
    (root / "toolkit.toml").write_text("accept-nvidia-visible-devices-as-volume-mounts = true\n"
                                       "accept-nvidia-visible-devices-envvar-when-unprivileged = false\n")
    return tools


def gpu_pod(name: str, node: str, slots: int = 0, env_all: bool = False, image: str = "pause",
            runtime_class: str | None = "nvidia", privileged: bool = False, host_dev_null: str = "") -> dict:
    container = {"name": "main", "image": image}
    if slots:
        container["resources"] = {"limits": {RESOURCE: str(slots)}}
    if env_all:
        container["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
    if privileged:
        container["securityContext"] = {"privileged": True}
    spec = {"nodeName": node, "containers": [container]}
    if host_dev_null:
        spec["volumes"] = [{"name": "grab", "hostPath": {"path": "/dev/null"}}]
        container["volumeMounts"] = [{"name": "grab", "mountPath": f"{DEVICE_ROOT}/{host_dev_null}"}]
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


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
