"""control_plane_info: a control plane is reset only on positive evidence of a failed init.

Run as Ansible runs it, against a kubectl stand-in that answers as the real one does in each case
(its last line is the verdict: `Error from server (NotFound): nodes "x" not found`, `The connection
to the server 198.18.0.11:6443 was refused - did you specify the right host or port?`, `error: You
must be logged in to the server (...)`), and files laid out as kubeadm leaves them.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import subprocess
import textwrap

import pytest
from module_runner import run_module

REFUSED = "The connection to the server 198.18.0.11:6443 was refused - did you specify the right host or port?"
UNAUTHORIZED = ("error: You must be logged in to the server "
                "(the server has asked for the client to provide credentials)")


@pytest.fixture
def host(tmp_path):
    """A host's kubeadm paths under tmp_path, and a kubectl that answers RC and prints LINES."""

    class Host:
        kubeconfig = tmp_path / "etc/kubernetes/admin.conf"
        manifests = tmp_path / "etc/kubernetes/manifests"
        etcd = tmp_path / "var/lib/etcd"
        marker = tmp_path / "etc/gpuaas/control-plane-answered"
        ca = tmp_path / "etc/kubernetes/pki/ca.crt"
        kubectl = tmp_path / "kubectl"

        def answer(self, rc, *lines):
            body = "".join(f"echo {line!r} >&2\n" for line in lines)
            self.kubectl.write_text(f"#!/bin/sh\n{body}exit {rc}\n")
            self.kubectl.chmod(0o755)

        def failed_init(self):
            """What kubeadm init leaves when it fails at wait-control-plane (tests/standins shows the same)."""
            self.manifests.mkdir(parents=True)
            for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
                (self.manifests / f"{name}.yaml").write_text("apiVersion: v1\nkind: Pod\n")
            self.kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
            self.ca.parent.mkdir(parents=True)
            self.ca.write_text(f"a CA made by the init at {self.manifests}\n")
            self.etcd.mkdir(parents=True, mode=0o700)

        def mark_answered(self, ca_text=None):
            """The role's marker, naming the CA whose API server answered (this one by default)."""
            digest = hashlib.sha256(ca_text.encode() if ca_text else self.ca.read_bytes()).hexdigest()
            self.marker.write_text(f"The API server answered.\nca_sha256 {digest}\n")

        def state(self, **extra):
            return run_module("control_plane_info", {
                "node_name": "ctrl-1", "kubectl_path": str(self.kubectl), "kubeconfig": str(self.kubeconfig),
                "manifests_dir": str(self.manifests), "etcd_data_dir": str(self.etcd),
                "answered_marker": str(self.marker), "ca_cert": str(self.ca), **extra})

    (tmp_path / "etc/kubernetes").mkdir(parents=True)
    (tmp_path / "etc/gpuaas").mkdir(parents=True)
    made = Host()
    made.answer(1, REFUSED)
    return made


def test_a_control_plane_that_answers_is_running(host):
    host.failed_init()
    (host.etcd / "member").mkdir()
    host.answer(0)
    result = host.state()
    assert (result["state"], result["changed"]) == ("running", False)


def test_a_host_that_never_had_a_control_plane_is_absent(host):
    result = host.state()
    assert result["state"] == "absent"
    assert result["evidence"] == {"probe": {"rc": 1, "error": REFUSED}, "leftovers": [], "etcd_data": False,
                                  "answered_before": False, "client_certificate_expired": None}


def test_a_failed_init_may_be_reset(host):
    host.failed_init()
    result = host.state()
    assert result["state"] == "failed_init"
    assert result["evidence"]["leftovers"] == [str(host.kubeconfig)] + [
        str(host.manifests / f"{name}.yaml") for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")]


def test_an_api_server_that_stopped_is_never_reset(host):
    """The API server restarting, or the node just rebooted: etcd holds the cluster."""
    host.failed_init()
    (host.etcd / "member/snap").mkdir(parents=True)
    result = host.state()
    assert result["state"] == "unavailable"
    assert result["msg"].startswith(f"The control plane does not answer as expected (kubectl: {REFUSED}). It is not reset, "
                                    "because etcd's data directory holds data: a reset deletes etcd's data")
    assert "systemctl status kubelet" in result["msg"]


def test_a_control_plane_that_answered_once_is_never_reset_even_with_etcd_empty(host):
    host.failed_init()
    host.mark_answered()
    result = host.state()
    assert result["state"] == "unavailable"
    assert "because the API server answered before" in result["msg"]


def test_a_marker_of_an_earlier_cluster_does_not_forbid_resetting_a_new_failed_init(host):
    """An operator reset the old cluster by hand, and the next init failed: its CA is a new one."""
    host.failed_init()
    host.mark_answered(ca_text="the CA of the cluster reset by hand\n")
    assert host.state()["state"] == "failed_init"
    host.ca.unlink()  # no CA to compare with: the marker counts
    assert host.state()["state"] == "unavailable"


def admin_conf(host, tmp_path, days):
    """admin.conf with an embedded client certificate valid for DAYS (-1: expired yesterday)."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, capture_output=True, check=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-subj",
            "/CN=kubernetes", "-days", "10")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "a.key", "-out", "a.csr", "-subj",
            "/O=kubeadm:cluster-admins/CN=kubernetes-admin")
    openssl("x509", "-req", "-in", "a.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", days,
            "-out", "a.crt")
    data = base64.b64encode((tmp_path / "a.crt").read_bytes()).decode()
    host.kubeconfig.write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        users:
        - name: kubernetes-admin
          user:
            client-certificate-data: {data}
            client-key-data: eA==
        """))


def test_an_expired_admin_conf_is_named_and_never_reset(host, tmp_path):
    host.failed_init()
    (host.etcd / "member").mkdir()
    admin_conf(host, tmp_path, "-1")
    host.answer(1, "E1207 memcache.go:265] couldn't get current server API group list", UNAUTHORIZED)
    result = host.state()
    assert result["state"] == "unavailable"
    assert result["evidence"]["probe"]["error"] == UNAUTHORIZED, "kubectl's verdict, not its retries"
    expired = result["evidence"]["client_certificate_expired"]
    assert expired and expired.endswith("GMT")
    assert f"The kubeconfig's client certificate expired on {expired}: renew it (kubeadm certs renew admin.conf" in result["msg"]
    # Positive control: the same kubeconfig with a valid certificate is not called expired.
    admin_conf(host, tmp_path, "1")
    assert host.state()["evidence"]["client_certificate_expired"] is None


def test_an_api_server_without_this_node_is_left_alone(host):
    host.failed_init()
    (host.etcd / "member").mkdir()
    host.answer(1, 'Error from server (NotFound): nodes "ctrl-1" not found')
    result = host.state()
    assert result["state"] == "unavailable" and "this node is not registered" in result["msg"]


@pytest.mark.parametrize("found,etcd_data,answered", list(itertools.product([False, True], repeat=3)))
def test_only_leftovers_with_no_data_and_no_answer_allow_a_reset(host, found, etcd_data, answered):
    """Every combination of the evidence: exactly one allows a reset."""
    if found:
        host.failed_init()
    if etcd_data:
        (host.etcd / "member").mkdir(parents=True)
    if answered:
        host.mark_answered(ca_text=None if found else "the CA\n")
    # Nothing of kubeadm and no data: init destroys nothing, whatever the marker says.
    expected = {(True, False, False): "failed_init", (False, False, False): "absent",
                (False, False, True): "absent"}.get((found, etcd_data, answered), "unavailable")
    assert host.state()["state"] == expected


def test_the_advertise_address_is_this_host_s(host):
    assert host.state(advertise_address="127.0.0.1")["advertise_address"] == "127.0.0.1"
    refused = host.state(advertise_address="203.0.113.7")
    assert refused["advertise_address"] == ""
    assert refused["advertise_error"].startswith("advertise_address 203.0.113.7 is not an IP address of this host")
    assert host.state(advertise_address="", host_address="127.0.0.1")["advertise_address"] == "127.0.0.1"


def test_a_nat_host_address_falls_back_to_the_default_route_s_source(host):
    """ansible_host a NAT address (not on the host): the address the host itself sends from."""
    result = host.state(host_address="203.0.113.7")
    address = result["advertise_address"]
    assert address and address != "203.0.113.7", result["advertise_error"]
    bound = subprocess.run(["python3", "-c", f"import socket; socket.socket(socket.AF_INET{'6' if ':' in address else ''}, "
                            f"socket.SOCK_DGRAM).bind(({address!r}, 0))"], check=False)
    assert bound.returncode == 0, f"{address} is an address of this host"
