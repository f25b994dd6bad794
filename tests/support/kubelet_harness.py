"""The kubelet stand-in (tests/fleet/packages/kubelet/usr/bin/kubelet) run on this host for the
stand-in tests: a temporary --root-dir, the fake kube-apiserver of the `cluster` fixture, the
venv's Python (grpcio and protobuf of requirements/runtime.in). The fixtures that make one are in
tests/standins/conftest.py (`descriptors`, `kubelet`)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from device_plugin_double import RESOURCE
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
KUBELET = REPO / "tests/fleet/packages/kubelet/usr/bin/kubelet"
CLIENT_DIR = REPO / "tests/fleet/packages/kubelet/usr/lib/fake-kubernetes"
GRACE = 2.0


GPU_A, GPU_B = "GPU-aaaa", "GPU-bbbb"
DEVICE_ROOT = "/var/run/nvidia-container-devices"
RUNTIME = REPO / "tests/fleet/packages/nvidia-container-toolkit-base/usr/bin/nvidia-container-runtime"


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


def pod_status(kubelet: Kubelet, name: str) -> dict:
    got = kubelet.cluster.kubectl("get", "pod", name, "-n", "default", "-o", "json")
    return json.loads(got.stdout).get("status", {}) if got.returncode == 0 else {}


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
