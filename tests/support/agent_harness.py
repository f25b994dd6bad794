"""Running the real `gpuaas-agent run` on this host, against the fake libnvidia-ml.so.1 and a
kubelet double that speaks the device plugin API v1beta1 (the agent's own generated stubs).

The double serves Registration on kubelet.sock as the kubelet does, and then, as the kubelet
does, dials the plugin's socket, keeps ListAndWatch open and calls GetPreferredAllocation and
Allocate when asked.  The fleet's kubelet stand-in (tests/fleet/packages/kubelet) does the same
on the nodes; this one lets the agent's behaviour be checked in seconds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import yaml
from gpuaas_agent.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
MPS_CONTROL = REPO / "tests/fleet/packages/cuda-drivers-580/usr/bin/nvidia-cuda-mps-control"


class Plugin:
    """What the kubelet holds for one registered resource."""

    def __init__(self, directory: Path, request):
        self.request = request
        self.channel = grpc.insecure_channel(f"unix://{directory / request.endpoint}")
        self.stub = api_pb2_grpc.DevicePluginStub(self.channel)
        self.lists: list = []
        self.stream = self.stub.ListAndWatch(api_pb2.Empty())
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        try:
            for answer in self.stream:
                self.lists.append([(device.ID, device.health) for device in answer.devices])
        except grpc.RpcError:
            pass

    @property
    def devices(self) -> list:
        return self.lists[-1] if self.lists else []

    def preferred(self, available, size, must_include=()):
        answer = self.stub.GetPreferredAllocation(api_pb2.PreferredAllocationRequest(container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=available, must_include_deviceIDs=must_include,
                                                        allocation_size=size)]), timeout=5)
        return list(answer.container_responses[0].deviceIDs)

    def allocate(self, device_ids) -> dict:
        answer = self.stub.Allocate(api_pb2.AllocateRequest(container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=device_ids)]), timeout=5)
        container = answer.container_responses[0]
        return {"envs": dict(container.envs),
                "mounts": [(m.container_path, m.host_path, m.read_only) for m in container.mounts],
                "cdi_devices": [d.name for d in container.cdi_devices]}

    def close(self):
        self.stream.cancel()
        self.channel.close()


class Kubelet(api_pb2_grpc.RegistrationServicer):
    def __init__(self, directory: Path):
        self.directory = directory
        self.registrations: list = []
        self.plugins: dict = {}
        self.server = None

    def Register(self, request, context):
        self.registrations.append(request)
        old = self.plugins.pop(request.resource_name, None)
        if old:
            old.close()
        self.plugins[request.resource_name] = Plugin(self.directory, request)
        return api_pb2.Empty()

    def start(self):
        """As the kubelet's device manager starts: the directory emptied, then kubelet.sock served."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for entry in self.directory.iterdir():
            entry.unlink()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{self.directory / 'kubelet.sock'}")
        self.server.start()

    def stop(self):
        for plugin in self.plugins.values():
            plugin.close()
        self.plugins = {}
        if self.server:
            self.server.stop(0).wait()
            self.server = None

    def restart(self):
        self.stop()
        self.start()

    def plugin(self, resource: str, devices: int | None = None) -> Plugin:
        """The plugin registered for ``resource``, once its list (of ``devices`` devices) arrived."""
        def ready():
            plugin = self.plugins.get(resource)
            if plugin and plugin.lists and (devices is None or len(plugin.devices) == devices):
                return plugin
            return None
        return wait_for(ready, what=f"{resource} with {devices} devices")


class AgentProcess:
    def __init__(self, root: Path, nvml_env: dict, settings: dict | None = None, mps_root: Path | None = None):
        self.root = root
        self.settings_path = root / "agent.yaml"
        self.sharing_path = root / "sharing.yaml"
        self.settings = {"sharing_config": str(self.sharing_path), "device_plugin_dir": str(root / "device-plugins"),
                         "status_file": str(root / "run/status.json"), "state_dir": str(root / "state"),
                         # A Unix socket's path has at most 107 bytes: MPS's control socket is
                         # <mps_root>/<uuid>/pipe/control, too long under pytest's directory.
                         "mps_root": str(mps_root or root / "mps"), "mps_control": str(MPS_CONTROL), "poll_seconds": 0.2,
                         **(settings or {})}
        self.settings_path.write_text(yaml.safe_dump(self.settings))
        self.env = {**os.environ, **nvml_env}
        self.process = None
        self.log = root / "agent.log"

    def write_sharing(self, version: int, gpus: dict) -> None:
        partial = self.sharing_path.with_suffix(".tmp")
        partial.write_text("# written by the test\n" + json.dumps({"version": version, "gpus": gpus}))
        os.replace(partial, self.sharing_path)

    def launch(self):
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "gpuaas_agent.cli", "--config", str(self.settings_path),
                                             "run"], env=self.env, stdout=log, stderr=log)

    def start(self):
        """Launch, and wait for the first status (the agent removes an earlier run's at start)."""
        Path(self.settings["status_file"]).unlink(missing_ok=True)
        self.launch()
        wait_for(lambda: Path(self.settings["status_file"]).exists() or self.process.poll() is not None,
                 what="the agent's status file")
        assert self.process.poll() is None, self.log.read_text()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)

    def status(self) -> dict:
        return json.loads(Path(self.settings["status_file"]).read_text())

    def http(self, path: str, token: str | None):
        request = urllib.request.Request(f"http://{self.settings['http_listen']}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.headers, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read().decode()
