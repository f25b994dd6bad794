"""The kubelet device plugin API v1beta1: one DevicePlugin server per resource, and registration.

The kubelet (pkg/kubelet/cm/devicemanager) dials each plugin on the socket it registered,
keeps one ListAndWatch stream open, and calls GetPreferredAllocation and Allocate when it
admits a Pod that requests the resource.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures

import grpc

from .config import Settings
from .deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from .devices import HEALTHY, UNHEALTHY, AllocationRefused, ResourcePlan, container_allocation, preferred

log = logging.getLogger("gpuaas_agent.plugin")
API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
REGISTER_TIMEOUT_SECONDS = 5
# How often an open ListAndWatch stream checks that the kubelet is still there.
STREAM_POLL_SECONDS = 1.0


class ResourceServer(api_pb2_grpc.DevicePluginServicer):
    """One resource's devices and health, served on its own socket."""

    def __init__(self, plan: ResourcePlan, settings: Settings):
        self.settings = settings
        self.changed = threading.Condition()
        self.plan, self.health, self.generation = plan, {}, 0
        self.stopping = False
        self.server = None
        self.registered_at = None
        self.last_error = ""
        self.allocations = 0

    # ---------------------------------------------------------------- state
    def update(self, plan: ResourcePlan, health: dict) -> bool:
        """New devices or health (device id -> Healthy/Unhealthy); wakes the streams if it changed."""
        with self.changed:
            if plan == self.plan and health == self.health:
                return False
            self.plan, self.health = plan, dict(health)
            self.generation += 1
            self.changed.notify_all()
            return True

    def devices(self) -> list:
        return [{"id": slot.id, "gpu": slot.gpu, "health": self.health.get(slot.id, UNHEALTHY)}
                for slot in self.plan.slots]

    # ---------------------------------------------------------------- the service
    def GetDevicePluginOptions(self, request, context):
        return self.options()

    @staticmethod
    def options():
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def ListAndWatch(self, request, context):
        seen = -1
        while context.is_active():
            with self.changed:
                if self.generation == seen and not self.stopping:
                    self.changed.wait(STREAM_POLL_SECONDS)
                if self.stopping:
                    return
                if self.generation == seen:
                    continue
                seen = self.generation
                answer = api_pb2.ListAndWatchResponse(devices=[
                    api_pb2.Device(ID=device["id"], health=device["health"]) for device in self.devices()])
            yield answer

    def GetPreferredAllocation(self, request, context):
        with self.changed:
            plan = self.plan
        answer = api_pb2.PreferredAllocationResponse()
        for container in request.container_requests:
            chosen = preferred(plan, list(container.available_deviceIDs), list(container.must_include_deviceIDs),
                               container.allocation_size, self.settings.allocation_policy)
            answer.container_responses.add(deviceIDs=chosen)
        return answer

    def Allocate(self, request, context):
        with self.changed:
            plan, health = self.plan, dict(self.health)
        answer = api_pb2.AllocateResponse()
        for container in request.container_requests:
            ids = list(container.devices_ids)
            sick = [device for device in ids if health.get(device) == UNHEALTHY]
            try:
                if sick:
                    raise AllocationRefused(f"device {sick[0]} of {plan.name} is unhealthy")
                given = container_allocation(plan, ids, self.settings)
            except AllocationRefused as refused:
                log.warning("Allocate refused: %s", refused)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(refused))
            response = answer.container_responses.add()
            response.envs.update(given["envs"])
            for container_path, host_path, read_only in given["mounts"]:
                response.mounts.add(container_path=container_path, host_path=host_path, read_only=read_only)
            for name in given["cdi_devices"]:
                response.cdi_devices.add(name=name)
        self.allocations += 1
        return answer

    def PreStartContainer(self, request, context):
        return api_pb2.PreStartContainerResponse()

    # ---------------------------------------------------------------- the socket
    @property
    def socket_path(self) -> str:
        return os.path.join(self.settings.device_plugin_dir, self.plan.endpoint)

    def serving(self) -> bool:
        return self.server is not None and os.path.exists(self.socket_path)

    def start(self) -> None:
        self.stop()
        os.makedirs(self.settings.device_plugin_dir, exist_ok=True)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        # A thread per open stream, plus room for the kubelet's unary calls.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix=self.plan.endpoint))
        api_pb2_grpc.add_DevicePluginServicer_to_server(self, server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        with self.changed:
            self.stopping = False
        server.start()
        self.server, self.registered_at = server, None

    def stop(self, grace: float = 0.5) -> None:
        if self.server is None:
            return
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        self.server.stop(grace).wait()
        self.server = None
        self.registered_at = None
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def register(self) -> None:
        """Register with the kubelet; raises grpc.RpcError when it refuses or is not there."""
        kubelet = os.path.join(self.settings.device_plugin_dir, KUBELET_SOCKET)
        with grpc.insecure_channel(f"unix://{kubelet}") as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(api_pb2.RegisterRequest(
                version=API_VERSION, endpoint=self.plan.endpoint, resource_name=self.plan.name,
                options=self.options()), timeout=REGISTER_TIMEOUT_SECONDS)
        self.registered_at = time.time()
        log.info("registered %s with the kubelet (%d devices, socket %s)", self.plan.name, len(self.plan.slots),
                 self.plan.endpoint)


def health_of(plan: ResourcePlan, healthy_gpus: set) -> dict:
    return {slot.id: HEALTHY if slot.gpu in healthy_gpus else UNHEALTHY for slot in plan.slots}
