"""The kubelet stand-in's PodResources API v1 server (package kubelet).

As the real kubelet serves it (kubernetes/kubernetes pkg/kubelet/apis/podresources, read at the
1.35/1.37 release branches: server_v1.go, server.go; the API is k8s.io/kubelet
pkg/apis/podresources/v1/api.proto, whose descriptor set ships as
/usr/lib/fake-kubernetes/podresources-v1.binpb), on <root-dir>/pod-resources/kubelet.sock:

- List: the device manager's view is brought up to date first (devicesProvider
  UpdateAllocatedDevices: the devices of Pods no longer active are freed), then one PodResources
  per Pod, name and namespace (no UID), and per container of spec.containers (after the
  restartable init containers: sidecars; plain init containers are left out,
  podutil.IsRestartableInitContainer) its devices, one ContainerDevices per resource with the
  device IDs the plugin allocated (devicemanager GetDevices).  Which Pods: the active ones
  (GetActivePods: not Failed or Succeeded, and not a deleted Pod whose containers all stopped)
  while the feature gate KubeletPodResourcesListUseActivePods is on, its default from 1.34
  (kubernetes#132028, which fixed #119423); with the gate off, every Pod the kubelet knows,
  terminal ones included, as kubelets up to 1.33 listed them.
- GetAllocatableResources: each resource's healthy devices (devicemanager GetAllocatableDevices:
  allDevices filtered by healthyDevices); no CPU or memory manager is modelled, so no cpu_ids or
  memory (the real static policies are off by default, and with them off both are empty).
- Get: refused with "PodResources API Get method disabled" while KubeletPodResourcesGet is off
  (alpha 1.27, off; beta and on from 1.34); a Pod the kubelet does not know is "pod NAME in
  namespace NS not found" (GetPodByName: any Pod it knows, terminal or not).  A Go error returned
  by the handler reaches the client as gRPC code Unknown.
No rate limit (the real one allows 100 calls a second with a burst of 10: grpc/ratelimit.go).
"""
import os
from concurrent import futures

SOCKET_DIR = "pod-resources"  # podresources/constants.go: Socket = "kubelet"; the kubelet's <root-dir>/pod-resources
SOCKET = "kubelet.sock"


class Api:
    """The v1 messages from the descriptor set (as the device plugin's, see kubelet's PluginAPI)."""

    MESSAGES = ("ListPodResourcesRequest", "ListPodResourcesResponse", "PodResources", "ContainerResources",
                "ContainerDevices", "AllocatableResourcesRequest", "AllocatableResourcesResponse",
                "GetPodResourcesRequest", "GetPodResourcesResponse")

    def __init__(self, path: str):
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # pylint: disable=import-outside-toplevel
        with open(path, "rb") as handle:
            files = descriptor_pb2.FileDescriptorSet.FromString(handle.read())
        pool = descriptor_pool.DescriptorPool()
        for proto in files.file:
            pool.Add(proto)
        factory = None if hasattr(message_factory, "GetMessageClass") else message_factory.MessageFactory(pool)
        for name in self.MESSAGES:
            descriptor = pool.FindMessageTypeByName(f"v1.{name}")
            setattr(self, name, message_factory.GetMessageClass(descriptor) if factory is None
                    else factory.GetPrototype(descriptor))


def restartable_init(container: dict) -> bool:
    """podutil.IsRestartableInitContainer: an init container with restartPolicy Always (a sidecar)."""
    return container.get("restartPolicy") == "Always"


class Server:
    """`kubelet` is what the real server's providers stand for: known_pods() (the pod manager),
    active_pods(), devices_of(uid, container) -> {resource: [ids]}, allocatable() -> {resource: [ids]},
    update_allocated(), and feature_gates."""

    def __init__(self, grpc, descriptors: str, root_dir: str, kubelet):
        self.grpc, self.api, self.kubelet = grpc, Api(descriptors), kubelet
        self.directory = os.path.join(root_dir, SOCKET_DIR)
        self.server = None

    def start(self) -> str:
        """server.go ListenAndServePodResources: the socket made again (util.CreateListener removes
        a stale one) and served.  Returns an error, or ""."""
        grpc = self.grpc
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        path = os.path.join(self.directory, SOCKET)
        if os.path.exists(path):
            os.unlink(path)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "List": grpc.unary_unary_rpc_method_handler(self.list, request_deserializer=self.api.ListPodResourcesRequest.FromString,
                                                        response_serializer=self.api.ListPodResourcesResponse.SerializeToString),
            "GetAllocatableResources": grpc.unary_unary_rpc_method_handler(
                self.allocatable, request_deserializer=self.api.AllocatableResourcesRequest.FromString,
                response_serializer=self.api.AllocatableResourcesResponse.SerializeToString),
            "Get": grpc.unary_unary_rpc_method_handler(self.get, request_deserializer=self.api.GetPodResourcesRequest.FromString,
                                                       response_serializer=self.api.GetPodResourcesResponse.SerializeToString)}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("v1.PodResourcesLister", handlers),))
        try:
            bound = self.server.add_insecure_port(f"unix://{path}")
        except RuntimeError as error:
            return str(error)
        if not bound:
            return "bind failed"
        self.server.start()
        return ""

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0)

    def pod_resources(self, pod: dict):
        meta, spec = pod["metadata"], pod.get("spec", {})
        containers = [c for c in spec.get("initContainers", []) if restartable_init(c)] + spec.get("containers", [])
        answer = self.api.PodResources(name=meta["name"], namespace=meta.get("namespace", ""))
        for container in containers:
            resources = answer.containers.add(name=container["name"])
            for resource, ids in sorted(self.kubelet.devices_of(meta["uid"], container["name"]).items()):
                resources.devices.add(resource_name=resource, device_ids=ids)
        return answer

    def list(self, _request, _context):
        gates = self.kubelet.feature_gates
        pods = self.kubelet.active_pods() if gates["KubeletPodResourcesListUseActivePods"] else self.kubelet.known_pods()
        self.kubelet.update_allocated()
        return self.api.ListPodResourcesResponse(pod_resources=[self.pod_resources(p) for p in pods])

    def allocatable(self, _request, _context):
        answer = self.api.AllocatableResourcesResponse()
        for resource, ids in sorted(self.kubelet.allocatable().items()):
            answer.devices.add(resource_name=resource, device_ids=ids)
        return answer

    def get(self, request, context):
        if not self.kubelet.feature_gates["KubeletPodResourcesGet"]:
            return self.refuse(context, "PodResources API Get method disabled")
        for pod in self.kubelet.known_pods():
            if (pod["metadata"].get("namespace", ""), pod["metadata"]["name"]) == (request.pod_namespace, request.pod_name):
                return self.api.GetPodResourcesResponse(pod_resources=self.pod_resources(pod))
        return self.refuse(context, f"pod {request.pod_name} in namespace {request.pod_namespace} not found")

    def refuse(self, context, message: str):
        # A Go error from a gRPC handler: status code Unknown, its text as the details.
        context.set_code(self.grpc.StatusCode.UNKNOWN)
        context.set_details(message)
        return self.api.GetPodResourcesResponse()
