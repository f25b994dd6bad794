"""A device plugin as the gpuaas agent serves one, on the agent's generated v1beta1 stubs: the other
end of the kubelet stand-in's device manager (tests/fleet/packages/kubelet), for tests/standins."""
from __future__ import annotations

import queue
import sys
from concurrent import futures
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "agent/src"))
from gpuaas_agent.deviceplugin.v1beta1 import api_pb2 as pb  # noqa: E402
from gpuaas_agent.deviceplugin.v1beta1 import api_pb2_grpc as pb_grpc  # noqa: E402

RESOURCE = "gpuaas.hosted.ai/pool-7"


class Plugin(pb_grpc.DevicePluginServicer):
    """A device plugin as the agent serves one: its own socket in the kubelet's directory."""

    def __init__(self, directory: Path, name: str, devices: list[tuple[str, str]], preferred: bool = True):
        self.directory, self.name, self.devices, self.preferred = directory, name, devices, preferred
        self.updates: queue.Queue = queue.Queue()
        self.preferred_requests: list = []
        self.allocate_requests: list = []
        self.server = None

    def GetDevicePluginOptions(self, request, context):
        return pb.DevicePluginOptions(get_preferred_allocation_available=self.preferred)

    def ListAndWatch(self, request, context):
        yield pb.ListAndWatchResponse(devices=[pb.Device(ID=i, health=h) for i, h in self.devices])
        while context.is_active():
            try:
                devices = self.updates.get(timeout=0.1)
            except queue.Empty:
                continue
            if devices is None:
                return
            self.devices = devices
            yield pb.ListAndWatchResponse(devices=[pb.Device(ID=i, health=h) for i, h in devices])

    def GetPreferredAllocation(self, request, context):
        ask = request.container_requests[0]
        self.preferred_requests.append((sorted(ask.available_deviceIDs), list(ask.must_include_deviceIDs),
                                        ask.allocation_size))
        # The highest IDs first, and one the kubelet never offered: it must be ignored.
        ids = ["made-up"] + sorted(ask.available_deviceIDs, reverse=True)[:ask.allocation_size]
        return pb.PreferredAllocationResponse(container_responses=[pb.ContainerPreferredAllocationResponse(deviceIDs=ids)])

    def Allocate(self, request, context):
        ids = list(request.container_requests[0].devices_ids)
        self.allocate_requests.append(ids)
        return pb.AllocateResponse(container_responses=[pb.ContainerAllocateResponse(
            envs={"GPUAAS_SLOTS": ",".join(ids)}, annotations={"gpuaas.hosted.ai/pool": "7"},
            mounts=[pb.Mount(container_path="/run/gpuaas", host_path="/run/gpuaas/pool-7", read_only=True)],
            devices=[pb.DeviceSpec(container_path="/dev/nvidia0", host_path="/dev/nvidia0", permissions="rw")],
            cdi_devices=[pb.CDIDevice(name="nvidia.com/gpu=0")])])

    def start(self) -> "Plugin":
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_DevicePluginServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{self.directory / self.name}")
        self.server.start()
        return self

    def register(self, version: str = "v1beta1", resource: str = RESOURCE):
        with grpc.insecure_channel(f"unix://{self.directory / 'kubelet.sock'}") as channel:
            return pb_grpc.RegistrationStub(channel).Register(pb.RegisterRequest(
                version=version, endpoint=self.name, resource_name=resource,
                options=pb.DevicePluginOptions(get_preferred_allocation_available=self.preferred)), timeout=20)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0)
            self.server = None
