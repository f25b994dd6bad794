#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: control_plane_info
short_description: Tell whether a kubeadm control plane runs here, was never made, or failed its init
version_added: "0.1.0"
description:
  - Asks the API server, with C(kubectl get node), whether the control plane answers with this node registered.
  - When it does not, reads what is on the host to tell a host with no control plane, a failed C(kubeadm init),
    and a control plane that is only unreachable.
  - Only a failed init may be reset - C(kubeadm init) left its kubeconfig or static Pod manifests, etcd's data
    directory holds nothing, and this cluster's API server never answered (the marker file the role writes once
    it has, naming the cluster CA).
  - A host with none of kubeadm's files and no etcd data is C(absent); init makes a cluster there, and destroys nothing.
  - Anything else (the API server restarting, a reboot, an expired C(admin.conf) client certificate, a node not
    registered) is reported as C(unavailable), with what was found, and must never lead to a reset, which
    deletes etcd's data.
  - Also works out the address the API server and etcd bind to (kubeadm's C(localAPIEndpoint.advertiseAddress)),
    which must be an IP address of this host.
author:
  - hosted·ai GPUaaS developers (@hostedai)
options:
  node_name:
    description: The control-plane node's Kubernetes name.
    type: str
    required: true
  kubectl_path:
    description: The kubectl binary.
    type: path
    default: kubectl
  kubeconfig:
    description: The admin kubeconfig kubeadm writes.
    type: path
    default: /etc/kubernetes/admin.conf
  manifests_dir:
    description: kubeadm's static Pod manifests.
    type: path
    default: /etc/kubernetes/manifests
  etcd_data_dir:
    description: etcd's data directory (kubeadm's C(etcd.local.dataDir)).
    type: path
    default: /var/lib/etcd
  answered_marker:
    description:
      - The file the role writes once the API server has answered, naming the cluster CA's SHA-256 (C(ca_sha256 HEX)).
      - While it names the CA in O(ca_cert) (or that CA is gone) the control plane is never reset. A marker that names
        another CA is an earlier cluster's, which an operator reset by hand.
    type: path
    required: true
  ca_cert:
    description: The cluster CA's certificate, which kubeadm's certs phase writes first.
    type: path
    default: /etc/kubernetes/pki/ca.crt
  advertise_address:
    description:
      - The address the API server and etcd bind to. It must be an IP address assigned on this host.
      - Empty to choose one, see O(host_address).
    type: str
    default: ""
  host_address:
    description:
      - The address Ansible reaches the host on (C(ansible_host)). When O(advertise_address) is empty it is
        used if it is an IP address of this host, else the source address of the host's default route is
        (a NAT or floating address is not on the host, and etcd can't bind to it).
    type: str
    default: ""
  request_timeout:
    description: Seconds kubectl waits for the API server.
    type: int
    default: 10
extends_documentation_fragment:
  - hostedai.gpuaas.read_only
"""

EXAMPLES = r"""
- name: Find what state the control plane is in
  hostedai.gpuaas.control_plane_info:
    node_name: ctrl-1
    answered_marker: /etc/gpuaas/control-plane-answered
  register: control_plane

- name: Stop unless it is safe to go on
  ansible.builtin.fail:
    msg: "{{ control_plane.msg }}"
  when: control_plane.state == 'unavailable'
"""

RETURN = r"""
state:
  description:
    - C(running) - the API server answers with this node registered.
    - C(absent) - no kubeadm files and no etcd data here; init destroys nothing.
    - C(failed_init) - a failed init's leftovers, and nothing that says a cluster existed; reset is safe.
    - C(unavailable) - anything else; leave it alone.
  returned: always
  type: str
  sample: unavailable
msg:
  description: One paragraph saying what was found and, for C(unavailable), what an operator does next.
  returned: always
  type: str
evidence:
  description: What the decision rests on.
  returned: always
  type: dict
  contains:
    probe:
      description: kubectl's exit code and the last line of what it printed on error (its verdict).
      type: dict
    leftovers:
      description: The kubeconfig and the static Pod manifests that exist.
      type: list
      elements: str
    etcd_data:
      description: Whether etcd's data directory holds anything.
      type: bool
    answered_before:
      description: Whether the answered marker exists for this cluster's CA.
      type: bool
    client_certificate_expired:
      description: The kubeconfig's client certificate's expiry (C(notAfter)) when it has passed, else null.
      type: str
advertise_address:
  description: The address to advertise; empty when none could be found (see RV(advertise_error)).
  returned: always
  type: str
  sample: 10.0.0.11
advertise_error:
  description: Why no usable advertise address was found; empty when one was.
  returned: always
  type: str
"""

import base64
import hashlib
import ipaddress
import os
import re
import socket

from ansible.module_utils.basic import AnsibleModule

# Components of a kubeadm control plane's static Pods (cmd/kubeadm/app/constants: Etcd, KubeAPIServer, ...).
MANIFESTS = ("etcd.yaml", "kube-apiserver.yaml", "kube-controller-manager.yaml", "kube-scheduler.yaml")
# Any routable address: connecting a UDP socket picks the route and source address and sends nothing.
ROUTE_PROBE = {socket.AF_INET: "203.0.113.1", socket.AF_INET6: "2001:db8::1"}


def probe_api_server(module, params):
    """kubectl's answer: rc 0 when the API server answers with the node registered."""
    rc, out, err = module.run_command(
        [params["kubectl_path"], "--kubeconfig=%s" % params["kubeconfig"], "--request-timeout=%ds" % params["request_timeout"],
         "get", "node", params["node_name"], "-o", "name"],
        environ_update={"LC_ALL": "C"})
    # kubectl's last line is its verdict; the lines before it are its discovery client's retries.
    lines = [line.strip() for line in (err or out).splitlines() if line.strip()]
    return {"rc": rc, "error": lines[-1] if rc != 0 and lines else ""}


def certificate_pem(kubeconfig):
    """The client certificate of a kubeconfig as kubeadm writes it (embedded data, or a file)."""
    try:
        with open(kubeconfig, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return None
    embedded = re.search(r"^\s*client-certificate-data:\s*(\S+)\s*$", text, re.M)
    if embedded:
        try:
            return base64.b64decode(embedded.group(1))
        except ValueError:
            return None
    named = re.search(r"^\s*client-certificate:\s*(\S+)\s*$", text, re.M)
    if named:
        try:
            with open(named.group(1).strip("'\""), "rb") as handle:
                return handle.read()
        except OSError:
            return None
    return None


def expired_on(module, kubeconfig):
    """notAfter of the kubeconfig's client certificate when it has passed; None when valid or unknown."""
    pem = certificate_pem(kubeconfig)
    openssl = module.get_bin_path("openssl")
    if not pem or not openssl:
        return None
    # `-checkend 0` exits 1 when the certificate has expired (openssl-x509(1)).
    rc, out, dummy = module.run_command([openssl, "x509", "-noout", "-enddate", "-checkend", "0"], data=pem,
                                        binary_data=True, environ_update={"LC_ALL": "C"})
    if rc != 1:
        return None
    match = re.search(r"notAfter=(.+)", out)
    return match.group(1).strip() if match else "an unknown date"


def leftovers(params):
    paths = [params["kubeconfig"]] + [os.path.join(params["manifests_dir"], name) for name in MANIFESTS]
    return [path for path in paths if os.path.exists(path)]


def answered_before(marker, ca_cert):
    """Whether this cluster's API server answered once: the marker names its CA (or the CA is gone)."""
    try:
        with open(marker, encoding="utf-8") as handle:
            recorded = re.search(r"^ca_sha256 ([0-9a-f]{64})$", handle.read(), re.M)
    except OSError:
        return False
    try:
        with open(ca_cert, "rb") as handle:
            current = hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return True
    return not recorded or recorded.group(1) == current


def holds_data(directory):
    try:
        return bool(os.listdir(directory))
    except OSError:
        return False


def is_local_address(address):
    """Whether the address is assigned on this host: binding to it works (EADDRNOTAVAIL otherwise)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    family = socket.AF_INET6 if parsed.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def default_route_source():
    """The source address of the default route (IPv4 first), or None without one."""
    for family, target in ROUTE_PROBE.items():
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((target, 9))
            except OSError:
                continue
            return probe.getsockname()[0]
    return None


def advertise_address(given, host_address):
    """(address, error): the given address if it is this host's, else a found one."""
    if given:
        if not is_local_address(given):
            return "", ("advertise_address %s is not an IP address of this host: kubeadm's advertiseAddress must be one, "
                        "and etcd binds to it. Use the node's own address; a NAT, floating or DNS address goes in "
                        "the API server address instead" % given)
        return given, ""
    if host_address and is_local_address(host_address):
        return host_address, ""
    found = default_route_source()
    if found:
        return found, ""
    return "", ("the host address %s is not an IP address of this host and the host has no default route: "
                "set the advertise address to the node's own address" % (host_address or "(none)"))


def decide(probe, found, etcd_data, answered_before, expired):
    """(state, msg) from the evidence; only positive evidence of a failed init allows a reset."""
    if probe["rc"] == 0:
        return "running", "the API server answers with this node registered"
    if not found and not etcd_data:
        return "absent", "no control plane here (no kubeadm files, no etcd data): kubeadm init will make one"
    if found and not etcd_data and not answered_before:
        return "failed_init", ("a failed kubeadm init left %s, etcd's data directory is empty and the API server never "
                               "answered: kubeadm reset, then init" % ", ".join(found))
    return "unavailable", unavailable_message(probe, found, etcd_data, answered_before, expired)


def unavailable_message(probe, found, etcd_data, answered_before, expired):
    why = []
    if etcd_data:
        why.append("etcd's data directory holds data")
    if answered_before:
        why.append("the API server answered before")
    if not found:
        why.append("kubeadm's kubeconfig and manifests are gone")
    hint = ("Bring the control plane back (systemctl status kubelet; crictl ps; journalctl -u kubelet), "
            "then run this again.")
    if expired:
        hint = ("The kubeconfig's client certificate expired on %s: renew it (kubeadm certs renew admin.conf, "
                "or kubeadm certs renew all), then run this again." % expired)
    elif "NotFound" in probe["error"] or "not found" in probe["error"]:
        hint = ("The API server answers, but this node is not registered: check the kubelet "
                "(systemctl status kubelet; journalctl -u kubelet), then run this again.")
    return ("The control plane does not answer as expected (kubectl: %s). It is not reset, because %s: a reset "
            "deletes etcd's data, and with it the cluster. %s" % (probe["error"] or "rc %d" % probe["rc"], " and ".join(why), hint))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            node_name=dict(type="str", required=True),
            kubectl_path=dict(type="path", default="kubectl"),
            kubeconfig=dict(type="path", default="/etc/kubernetes/admin.conf"),
            manifests_dir=dict(type="path", default="/etc/kubernetes/manifests"),
            etcd_data_dir=dict(type="path", default="/var/lib/etcd"),
            answered_marker=dict(type="path", required=True),
            ca_cert=dict(type="path", default="/etc/kubernetes/pki/ca.crt"),
            advertise_address=dict(type="str", default=""),
            host_address=dict(type="str", default=""),
            request_timeout=dict(type="int", default=10),
        ),
        supports_check_mode=True,
    )
    params = module.params
    probe = probe_api_server(module, params)
    found = leftovers(params) if probe["rc"] != 0 else []
    etcd_data = holds_data(params["etcd_data_dir"])
    answered = answered_before(params["answered_marker"], params["ca_cert"])
    expired = expired_on(module, params["kubeconfig"]) if probe["rc"] != 0 else None
    state, msg = decide(probe, found, etcd_data, answered, expired)
    address, address_error = advertise_address(params["advertise_address"], params["host_address"])
    module.exit_json(changed=False, state=state, msg=msg, advertise_address=address, advertise_error=address_error,
                     evidence={"probe": probe, "leftovers": found, "etcd_data": etcd_data,
                               "answered_before": answered, "client_certificate_expired": expired})


if __name__ == "__main__":
    main()
