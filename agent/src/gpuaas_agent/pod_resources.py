"""The kubelet's PodResources API v1: which device IDs each Pod's containers hold.

``List`` (kubernetes/kubernetes, staging/src/k8s.io/kubelet/pkg/apis/podresources/v1/api.proto)
over the kubelet's socket, ``<root-dir>/pod-resources/kubelet.sock``. Every call has a deadline:
a socket that is missing or a kubelet that does not answer gives ``PodResourcesUnavailable``
with the reason, and never holds the agent's loop longer than the deadline.
"""
from __future__ import annotations

import dataclasses
import os

import grpc

from .podresources.v1 import api_pb2, api_pb2_grpc


class PodResourcesUnavailable(Exception):
    """The kubelet did not answer List; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class ContainerDevices:
    namespace: str
    pod: str
    container: str
    resource: str
    device_ids: tuple


class PodResourcesClient:
    """One channel, kept open between calls (a Unix socket: cheap to keep, and a new kubelet
    behind the same path is reached by gRPC's reconnect)."""

    def __init__(self, socket_path: str, timeout: float):
        self.socket_path = socket_path
        self.timeout = timeout
        self.channel = None
        self.stub = None
        self.last = (b"", [])  # the last answer's bytes, and what they were read into

    def list(self) -> list[ContainerDevices]:
        if not os.path.exists(self.socket_path):
            self.close()  # a kubelet that comes back later makes a new socket
            raise PodResourcesUnavailable(f"{self.socket_path} does not exist (is the kubelet running?)")
        if self.channel is None:
            self.channel = grpc.insecure_channel(f"unix://{self.socket_path}")
            self.stub = api_pb2_grpc.PodResourcesListerStub(self.channel)
        try:
            answer = self.stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise PodResourcesUnavailable(f"{self.socket_path}: List did not answer within {self.timeout:g} s") from error
            details = error.details() if hasattr(error, "details") else str(error)
            raise PodResourcesUnavailable(f"{self.socket_path}: List failed: {code.name if code else ''} {details}") from error
        # An answer like the last one (most polls) gives the same list object, so that callers
        # can keep what they derived from it.
        raw = answer.SerializeToString(deterministic=True)
        if raw != self.last[0]:
            self.last = (raw, [ContainerDevices(pod.namespace, pod.name, container.name, devices.resource_name,
                                                tuple(devices.device_ids))
                               for pod in answer.pod_resources for container in pod.containers
                               for devices in container.devices])
        return self.last[1]

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = self.stub = None
