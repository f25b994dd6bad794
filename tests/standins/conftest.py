"""The stand-ins' fixtures: `cluster`, the fake kube-apiserver on loopback (tests/support/fake_apiserver.py)."""
from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fake_apiserver import SERVER, VERSION, Cluster, issue, kubeconfig, openssl
from kubelet_harness import Kubelet

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests/fleet"))
import package_repo  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("apiserver")
    pki = root / "pki"
    pki.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-subj", "/CN=kubernetes", "-days", "1", cwd=pki)
    issue(pki, "apiserver", "/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1")
    issue(pki, "admin", "/O=kubeadm:cluster-admins/CN=kubernetes-admin")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server_url = f"https://127.0.0.1:{port}"
    (root / "admin.conf").write_text(kubeconfig(pki, server_url, {
        "client-certificate-data": base64.b64encode((pki / "admin.crt").read_bytes()).decode(),
        "client-key-data": base64.b64encode((pki / "admin.key").read_bytes()).decode()}))
    (root / "stranger.conf").write_text(kubeconfig(pki, server_url, {"token": "ghijkl.0123456789abcdef"}))
    (root / "token.conf").write_text(kubeconfig(pki, server_url, {"token": "abcdef.0123456789abcdef"}))
    (root / "tokens.csv").write_text("abcdef.0123456789abcdef,kubelet-bootstrap,10001\n")
    script = root / "kube-apiserver"
    script.write_text(SERVER.read_text().replace("@KUBE_VERSION@", VERSION.lstrip("v")))
    log = open(root / "apiserver.log", "w")
    process = subprocess.Popen(
        [sys.executable, str(script), "--advertise-address=127.0.0.1", "--bind-address=127.0.0.1",
         f"--secure-port={port}", f"--tls-cert-file={pki / 'apiserver.crt'}",
         f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
         f"--token-auth-file={root / 'tokens.csv'}", f"--fake-storage-dir={root / 'storage'}",
         "--etcd-servers=https://127.0.0.1:2379"], stdout=log, stderr=log)
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as raw, context.wrap_socket(
                    raw, server_hostname="127.0.0.1"):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((root / "apiserver.log").read_text())
            time.sleep(0.1)
    yield Cluster(root)
    process.terminate()
    process.wait(5)
    log.close()


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory) -> Path:
    """api.proto's descriptor set, built as the kubelet package's build builds it (and the
    PodResources API's beside it, podresources.binpb)."""
    directory = tmp_path_factory.mktemp("proto")
    package_repo.build_pod_resources_descriptors(directory / "podresources.binpb")
    return package_repo.build_device_plugin_descriptors(directory / "api.binpb")


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
