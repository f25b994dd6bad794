"""The committed gRPC stubs (device plugin, PodResources) are what `make agent-stubs` makes from their protos."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gpuaas_agent.deviceplugin.v1beta1 import api_pb2
from gpuaas_agent.podresources.v1 import api_pb2 as podresources_pb2

REPO = Path(__file__).resolve().parents[2]
PROTOS = ("gpuaas_agent/deviceplugin/v1beta1/api.proto", "gpuaas_agent/podresources/v1/api.proto")


@pytest.mark.parametrize("proto", PROTOS)
def test_committed_stubs_match_the_proto(tmp_path, proto):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{REPO / 'agent/src'}", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", str(REPO / "agent/src" / proto)], check=True)
    package = Path(proto).parent
    for name in ("api_pb2.py", "api_pb2_grpc.py"):
        made = (tmp_path / package / name).read_text()
        assert made == (REPO / "agent/src" / package / name).read_text(), f"{package}/{name} is stale: run make agent-stubs"


def test_the_wire_names_are_the_kubelets():
    # Package, services and field numbers are the contract with the kubelet (kubernetes/kubelet
    # pkg/apis/deviceplugin/v1beta1/api.proto).
    services = {s.full_name: [m.name for m in s.methods] for s in api_pb2.DESCRIPTOR.services_by_name.values()}
    assert services == {"v1beta1.Registration": ["Register"],
                        "v1beta1.DevicePlugin": ["GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation",
                                                 "Allocate", "PreStartContainer"]}
    fields = {f.name: f.number for f in api_pb2.ContainerAllocateResponse.DESCRIPTOR.fields}
    assert fields == {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5}
    assert {f.name: f.number for f in api_pb2.RegisterRequest.DESCRIPTOR.fields} == \
        {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4}
    assert {f.name: f.number for f in api_pb2.ContainerPreferredAllocationRequest.DESCRIPTOR.fields} == \
        {"available_deviceIDs": 1, "must_include_deviceIDs": 2, "allocation_size": 3}


def test_the_pod_resources_wire_names_are_the_kubelets():
    # kubernetes/kubernetes staging/src/k8s.io/kubelet/pkg/apis/podresources/v1/api.proto: the
    # service's full name is the gRPC path the kubelet serves (/v1.PodResourcesLister/List).
    services = {s.full_name: [m.name for m in s.methods] for s in podresources_pb2.DESCRIPTOR.services_by_name.values()}
    assert services == {"v1.PodResourcesLister": ["List", "GetAllocatableResources", "Get"]}
    assert {f.name: f.number for f in podresources_pb2.ListPodResourcesResponse.DESCRIPTOR.fields} == {"pod_resources": 1}
    assert {f.name: f.number for f in podresources_pb2.PodResources.DESCRIPTOR.fields} == \
        {"name": 1, "namespace": 2, "containers": 3}
    assert {f.name: f.number for f in podresources_pb2.ContainerResources.DESCRIPTOR.fields} == \
        {"name": 1, "devices": 2, "cpu_ids": 3, "memory": 4, "dynamic_resources": 5}
    assert {f.name: f.number for f in podresources_pb2.ContainerDevices.DESCRIPTOR.fields} == \
        {"resource_name": 1, "device_ids": 2, "topology": 3}
