"""This node's Pods from the Kubernetes API server, through the kubelet's own kubeconfig.

The kubelet's credentials (``/etc/kubernetes/kubelet.conf`` on a kubeadm node: a client
certificate for ``system:node:<name>``) are what the node authoriser limits to the Pods bound
to this node, so the agent needs no credentials of its own and can read no other node's Pods
(kubernetes.io "Using Node Authorization"). One request per list:
``GET /api/v1/pods?fieldSelector=spec.nodeName=<node>``, which gives each Pod's UID (the
PodResources API gives none), its phase, and its containers' IDs (``containerd://<id>``) with
their names.
"""
from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import ssl
import tempfile
import urllib.parse

import yaml

# Pods in these phases have ended; their devices are free again even where a kubelet still
# lists them in PodResources (kubernetes#119423).
TERMINAL_PHASES = ("Succeeded", "Failed")


class ApiUnavailable(Exception):
    """The Pod list could not be read; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class Pod:
    uid: str
    namespace: str
    name: str
    phase: str
    containers: dict  # container ID (no runtime prefix) -> container name

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


@dataclasses.dataclass(frozen=True)
class Kubeconfig:
    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    cert_data: bytes | None = None
    key_file: str | None = None
    key_data: bytes | None = None
    token: str | None = None


def load_kubeconfig(path: str) -> Kubeconfig:
    """The current context's server and credentials (relative file names are relative to the
    kubeconfig's directory, as client-go resolves them)."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except OSError as error:
        raise ApiUnavailable(f"{path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ApiUnavailable(f"{path}: not YAML") from error
    if not isinstance(raw, dict):
        raise ApiUnavailable(f"{path}: not a kubeconfig")

    def named(section, name):
        for entry in raw.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                return entry.get(section[:-1]) or {}
        raise ApiUnavailable(f"{path}: no {section[:-1]} {name!r}")
    context = named("contexts", raw.get("current-context"))
    cluster, user = named("clusters", context.get("cluster")), named("users", context.get("user"))
    if not cluster.get("server"):
        raise ApiUnavailable(f"{path}: the cluster has no server")
    base = os.path.dirname(os.path.abspath(path))

    def file(value):
        return os.path.join(base, value) if value else None

    def data(value):
        return base64.b64decode(value) if value else None
    return Kubeconfig(server=cluster["server"], ca_file=file(cluster.get("certificate-authority")),
                      ca_data=data(cluster.get("certificate-authority-data")),
                      cert_file=file(user.get("client-certificate")), cert_data=data(user.get("client-certificate-data")),
                      key_file=file(user.get("client-key")), key_data=data(user.get("client-key-data")),
                      token=user.get("token"))


def tls_context(config: Kubeconfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.ca_file,
                                         cadata=config.ca_data.decode() if config.ca_data else None)
    if config.cert_file or config.cert_data:
        # ssl loads a client certificate from files only: inline data goes through a private
        # temporary directory for the moment it takes to load.
        with tempfile.TemporaryDirectory(prefix="gpuaas-agent-kubeconfig-") as private:
            cert = config.cert_file or _write(private, "cert.pem", config.cert_data)
            key = config.key_file or (_write(private, "key.pem", config.key_data) if config.key_data else None)
            context.load_cert_chain(cert, key)
    return context


def _write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(data)
    return path


NODE_USER_PREFIX = "system:node:"  # the node authoriser's user name for a kubelet (its certificate's CN)


def certificate_node_name(config: Kubeconfig) -> str | None:
    """The node a kubelet's client certificate is for: its subject's CN, ``system:node:<name>``.
    That is the name the node authoriser lets it read Pods of, whatever the host is called
    (kubeadm join --node-name). None when there is no such certificate."""
    try:
        with tempfile.TemporaryDirectory(prefix="gpuaas-agent-kubeconfig-") as private:
            path = config.cert_file or (_write(private, "cert.pem", config.cert_data) if config.cert_data else None)
            if path is None:
                return None
            # The standard library's only certificate decoder (CPython's ssl module, private but
            # present in every release since 2.7); the agent needs no cryptography package for one field.
            decoded = ssl._ssl._test_decode_cert(path)  # pylint: disable=protected-access
    except (OSError, ssl.SSLError, AttributeError, ValueError):
        return None
    for entry in decoded.get("subject", ()):
        for key, value in entry:
            if key == "commonName" and value.startswith(NODE_USER_PREFIX):
                return value[len(NODE_USER_PREFIX):]
    return None


class ApiServerClient:
    """Lists this node's Pods. The kubeconfig is read again when it changes (the kubelet rotates
    its client certificate into the same file names). The node's name: the setting, else the
    client certificate's (system:node:<name>), else the kubelet's default, the host name."""

    def __init__(self, kubeconfig_path: str, node_name: str, timeout: float, fallback_node_name: str = ""):
        self.kubeconfig_path = kubeconfig_path
        self.node_name = node_name
        self.fallback_node_name = fallback_node_name
        self.timeout = timeout
        self.loaded = None  # (the file's identity, Kubeconfig, SSLContext, node name)

    def _config(self):
        try:
            info = os.stat(self.kubeconfig_path)
        except OSError as error:
            raise ApiUnavailable(f"{self.kubeconfig_path}: {error.strerror}") from error
        identity = (info.st_ino, info.st_mtime_ns, info.st_size)
        if self.loaded is None or self.loaded[0] != identity:
            config = load_kubeconfig(self.kubeconfig_path)
            try:
                context = tls_context(config) if config.server.startswith("https:") else None
            except (OSError, ssl.SSLError, ValueError) as error:
                raise ApiUnavailable(f"{self.kubeconfig_path}: its credentials cannot be loaded: {error}") from error
            node = self.node_name or certificate_node_name(config) or self.fallback_node_name
            self.loaded = (identity, config, context, node)
        return self.loaded[1:]

    @property
    def node(self) -> str:
        return self.loaded[3] if self.loaded else self.node_name

    def pods(self) -> list[Pod]:
        config, context, node = self._config()
        url = urllib.parse.urlsplit(config.server)
        query = urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={node}"})
        path = f"{url.path.rstrip('/')}/api/v1/pods?{query}"
        if url.scheme == "https":
            connection = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=self.timeout, context=context)
        else:
            connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=self.timeout)
        headers = {"Accept": "application/json"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        try:
            connection.request("GET", path, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as error:
            raise ApiUnavailable(f"{config.server}: {error}") from error
        finally:
            connection.close()
        if answer.status != 200:
            raise ApiUnavailable(f"{config.server}: GET /api/v1/pods answered {answer.status} {answer.reason}")
        try:
            return parse_pod_list(json.loads(body))
        except (ValueError, TypeError, AttributeError, KeyError) as error:
            raise ApiUnavailable(f"{config.server}: the Pod list is not a PodList: {error}") from error


def parse_pod_list(document: dict) -> list[Pod]:
    pods = []
    for item in document.get("items") or []:
        meta, status = item.get("metadata") or {}, item.get("status") or {}
        containers = {}
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            for container in status.get(key) or []:
                # "<runtime>://<id>" (core/v1 ContainerStatus.containerID); not set until it started
                runtime_id = container.get("containerID") or ""
                if "://" in runtime_id:
                    containers[runtime_id.split("://", 1)[1]] = container.get("name", "")
        pods.append(Pod(uid=meta["uid"], namespace=meta["namespace"], name=meta["name"],
                        phase=status.get("phase", ""), containers=containers))
    return pods
