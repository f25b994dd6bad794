"""Doubles for the agent's three tenant sources, for tests/unit/test_agent_tenants*.py and
bench/agent_tenants.py:

- ``PodResources``: a real gRPC server of the kubelet's PodResources v1 ``List`` on a Unix socket
  (the agent's own generated stubs), answering what the test says each container holds;
- ``ApiServer``: ``GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`` over HTTP on loopback,
  answering a PodList of the Pods the test put there (only Pods of that node: the field selector
  is checked), with a kubeconfig that points at it;
- ``ProcRoot``: a directory standing for /proc, with each process's ``cgroup`` file;
- ``Gpus``: NVML's process lists and utilisation samples, as gpus.Gpus.processes gives them.
"""
from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import time
import urllib.parse
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from gpuaas_agent.gpus import GpuProcesses
from gpuaas_agent.podresources.v1 import api_pb2, api_pb2_grpc

NODE = "node-a"


class PodResources(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self.pods: dict = {}  # (namespace, name) -> {container: {resource: [ids]}}
        self.calls = 0
        self.delay = 0.0
        self.server = None

    def hold(self, namespace: str, pod: str, container: str, resource: str, *device_ids: str) -> None:
        self.pods.setdefault((namespace, pod), {}).setdefault(container, {})[resource] = list(device_ids)

    def release(self, namespace: str, pod: str) -> None:
        self.pods.pop((namespace, pod), None)

    def List(self, request, context):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        answer = api_pb2.ListPodResourcesResponse()
        for (namespace, name), containers in sorted(self.pods.items()):
            pod = answer.pod_resources.add(name=name, namespace=namespace)
            for container, devices in sorted(containers.items()):
                entry = pod.containers.add(name=container)
                for resource, ids in sorted(devices.items()):
                    entry.devices.add(resource_name=resource, device_ids=ids)
        return answer

    def start(self):
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{self.socket_path}")
        self.server.start()
        return self

    def stop(self):
        if self.server:
            self.server.stop(0).wait()
            self.server = None


def pod_object(uid: str, namespace: str, name: str, node: str = NODE, phase: str = "Running",
               containers: dict | None = None) -> dict:
    """A core/v1 Pod as the API server returns it, reduced to what the agent reads;
    ``containers``: name -> 64-hex container ID."""
    return {"metadata": {"uid": uid, "namespace": namespace, "name": name},
            "spec": {"nodeName": node},
            "status": {"phase": phase, "containerStatuses": [
                {"name": container, "containerID": f"containerd://{cid}"} for container, cid in (containers or {}).items()]}}


def kubelet_pki(root: Path, node: str = NODE) -> dict:
    """A CA, a server certificate for 127.0.0.1, and a kubelet's client certificate and key in one
    file (CN system:node:<node>, O system:nodes), as kubeadm and the kubelet's TLS bootstrap
    make them (/var/lib/kubelet/pki/kubelet-client-current.pem holds both)."""
    root.mkdir(parents=True, exist_ok=True)

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=kubernetes")
    for name, subject, extension in (("server", "/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1"),
                                     ("client", f"/O=system:nodes/CN=system:node:{node}", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        (root / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    (root / "kubelet-client-current.pem").write_text((root / "client.crt").read_text() + (root / "client.key").read_text())
    return {"ca": root / "ca.crt", "server_cert": root / "server.crt", "server_key": root / "server.key",
            "client": root / "kubelet-client-current.pem"}


class ApiServer:
    def __init__(self, root: Path, pki: dict | None = None):
        self.root = root
        self.pods: list = []
        self.requests: list = []
        self.status = 200
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # pylint: disable=invalid-name
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                double.requests.append(self.path)
                selector = query.get("fieldSelector", [""])[0]
                if url.path != "/api/v1/pods" or not selector.startswith("spec.nodeName="):
                    body, status = b'{"kind":"Status","code":403}', 403  # the node authoriser's answer
                else:
                    node = selector.split("=", 1)[1]
                    items = [pod for pod in double.pods if pod["spec"]["nodeName"] == node]
                    body, status = json.dumps({"kind": "PodList", "apiVersion": "v1", "items": items}).encode(), double.status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        cluster, user, scheme = {}, {}, "http"
        if pki:  # TLS that requires the kubelet's client certificate, as the API server does
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_cert_chain(str(pki["server_cert"]), str(pki["server_key"]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
            # As kubeadm writes kubelet.conf: the CA inline, the rotated client pair in one file.
            cluster = {"certificate-authority-data": base64.b64encode(pki["ca"].read_bytes()).decode()}
            user = {"client-certificate": str(pki["client"]), "client-key": str(pki["client"])}
        self.kubeconfig = root / "kubelet.conf"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "default-context",
            "clusters": [{"name": "default-cluster",
                          "cluster": {"server": f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}", **cluster}}],
            "contexts": [{"name": "default-context", "context": {"cluster": "default-cluster", "user": "default-auth"}}],
            "users": [{"name": "default-auth", "user": user}]}))

    def start(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def systemd_cgroup(uid: str, container_id: str, qos: str = "burstable") -> str:
    """The cgroup v2 line the kubelet's systemd driver and containerd give a container's process."""
    escaped = uid.replace("-", "_")
    if qos == "guaranteed":
        return f"0::/kubepods.slice/kubepods-pod{escaped}.slice/cri-containerd-{container_id}.scope\n"
    return (f"0::/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{escaped}.slice/"
            f"cri-containerd-{container_id}.scope\n")


class ProcRoot:
    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.set("self", "0::/system.slice/gpuaas-agent.service\n")

    def set(self, pid, text: str) -> None:
        (self.root / str(pid)).mkdir(exist_ok=True)
        (self.root / str(pid) / "cgroup").write_text(text)


class Gpus:
    """NVML's view: per GPU, pid -> (bytes, MPS client); and per pid the GPU share it receives
    (0..100 %), turned into one utilisation sample per pid over [lastSeen, now] as the fleet's
    fake NVML gives them."""

    def __init__(self):
        self.procs: dict = {}  # uuid -> {pid: (bytes, mps_client)}
        self.share: dict = {}  # (uuid, pid) -> percent
        self.calls = 0

    def run(self, uuid: str, pid: int, mib: int, percent: int = 0, mps_client: bool = False) -> None:
        self.procs.setdefault(uuid, {})[pid] = (mib * 1024 * 1024, mps_client)
        self.share[(uuid, pid)] = percent

    def end(self, uuid: str, pid: int) -> None:
        self.procs.get(uuid, {}).pop(pid, None)

    def processes(self, uuid: str, medium: bool, last_seen_us: int) -> GpuProcesses:
        self.calls += 1
        now = int(time.time() * 1e6)
        procs = {pid: entry for pid, entry in self.procs.get(uuid, {}).items() if medium or not entry[1]}
        samples = [(pid, now, self.share[(uuid, pid)]) for pid in procs if self.share.get((uuid, pid))]
        return GpuProcesses(processes=procs, samples=samples)
