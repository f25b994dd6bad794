"""The kubelet stand-in's Pods (tests/fleet/packages/kubelet): PodResources v1 over real gRPC, each
admitted Pod's containers as real processes with their env, in the cgroups the kubelet and
containerd lay out, their status, restarts, deletion and adoption by a restarted kubelet.

As in test_kubelet_device_plugins.py (whose Kubelet fixture this reuses), the kubelet runs on this
host, against the fake API server, with the cgroupfs driver under a cgroup root of the test's own
(cgroupRoot) in the host's unified hierarchy.  The systemd driver needs a node's systemd: its names
are checked here as a table, its placement on the fleet (molecule gpu_sharing).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/fleet/packages/kubelet/usr/lib/fake-kubernetes"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fakeruntime  # noqa: E402
import podresources  # noqa: E402
from device_plugin_double import RESOURCE, Plugin  # noqa: E402
from kubelet_harness import CLIENT_DIR, GPU_A, GPU_B, KUBELET, gpu_pod, node_tools, pod_status  # noqa: E402
from waiting import wait_for  # noqa: E402


def make_pod(name: str, node: str, command: list, **extra) -> dict:
    """A Pod of one container "main" running ``command``; ``extra`` goes to the container
    (resources, env) or, for restartPolicy and terminationGracePeriodSeconds, to the spec."""
    spec_keys = ("restartPolicy", "terminationGracePeriodSeconds", "runtimeClassName")
    container = {"name": "main", "image": "pause", "command": command,
                 **{k: v for k, v in extra.items() if k not in spec_keys}}
    spec = {"nodeName": node, "containers": [container], **{k: v for k, v in extra.items() if k in spec_keys}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def task_of(kubelet, name: str, container: str = "main") -> dict:
    """The running container's task record (the latest attempt)."""
    found = [t for t in kubelet.tasks() if t["podName"] == name and t["containerName"] == container and t.get("pid")]
    return max(found, key=lambda t: t["attempt"]) if found else {}


def running(kubelet, name: str) -> dict:
    """The Pod's status once its container runs."""
    status = wait_for(lambda: (s := pod_status(kubelet, name)).get("phase") == "Running"
                      and "running" in s["containerStatuses"][0]["state"] and s,
                      what=lambda: f"{name} Running: {pod_status(kubelet, name)}; {kubelet.logs()[-2000:]}")
    assert wait_for(lambda: task_of(kubelet, name))
    return status


def environ(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.decode().partition("=")[::2] for entry in raw.split(b"\0") if entry)


def unified_cgroup(pid: int) -> str:
    return next(line[3:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.startswith("0::"))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class PodResourcesClient:
    """PodResources v1 over the kubelet's socket, with messages from the shipped descriptor set."""

    def __init__(self, kubelet, descriptors_path: Path):
        self.api = podresources.Api(str(descriptors_path.parent / "podresources.binpb"))
        self.channel = grpc.insecure_channel(f"unix://{kubelet.root / 'var-lib-kubelet/pod-resources/kubelet.sock'}")

    def call(self, method: str, request, answer):
        return self.channel.unary_unary(f"/v1.PodResourcesLister/{method}", request_serializer=request.SerializeToString,
                                        response_deserializer=answer.FromString)(request, timeout=5)

    def list(self) -> dict:
        """{(namespace, pod): {container: {resource: [ids]}}}"""
        answer = self.call("List", self.api.ListPodResourcesRequest(), self.api.ListPodResourcesResponse)
        return {(p.namespace, p.name): {c.name: {d.resource_name: list(d.device_ids) for d in c.devices} for c in p.containers}
                for p in answer.pod_resources}

    def get(self, name: str) -> dict:
        answer = self.call("Get", self.api.GetPodResourcesRequest(pod_name=name, pod_namespace="default"),
                           self.api.GetPodResourcesResponse).pod_resources
        return {c.name: {d.resource_name: list(d.device_ids) for d in c.devices} for c in answer.containers}

    def allocatable(self) -> dict:
        answer = self.call("GetAllocatableResources", self.api.AllocatableResourcesRequest(),
                           self.api.AllocatableResourcesResponse)
        return {d.resource_name: sorted(d.device_ids) for d in answer.devices}


# --------------------------------------------------------------------------- PodResources
def test_pod_resources_lists_each_pod_s_devices_and_get_follows_its_feature_gate(kubelet, descriptors):  # noqa: F811
    kubelet.start()
    plugin = Plugin(kubelet.plugins_dir, "gpuaas-pool-7.sock", [(f"slot-{i}", "Healthy") for i in range(3)]).start()
    client = PodResourcesClient(kubelet, descriptors)
    try:
        plugin.register()
        assert wait_for(lambda: kubelet.node_resource() == ("3", "3"), what=kubelet.logs)
        assert client.allocatable() == {RESOURCE: ["slot-0", "slot-1", "slot-2"]}
        assert kubelet.cluster.apply(make_pod("pr-tenant", kubelet.node, ["sleep", "60"], resources={"limits": {RESOURCE: "1"}}),
                                     make_pod("pr-plain", kubelet.node, ["sleep", "60"]),
                                     make_pod("pr-done", kubelet.node, ["true"], restartPolicy="Never")).returncode == 0
        running(kubelet, "pr-tenant")
        running(kubelet, "pr-plain")
        assert wait_for(lambda: pod_status(kubelet, "pr-done").get("phase") == "Succeeded")
        allocated = json.loads((kubelet.records / "allocations/default_pr-tenant_main.json").read_text())["device_ids"]
        listed = client.list()
        # The Pod with a plugin's device shows it (the positive control), the one without shows
        # none, and the Pod that ended is no longer active: not listed.
        assert listed == {("default", "pr-tenant"): {"main": {RESOURCE: allocated}}, ("default", "pr-plain"): {"main": {}}}
        assert client.get("pr-tenant") == {"main": {RESOURCE: allocated}}
        assert client.get("pr-done") == {"main": {}}  # Get reads every Pod the kubelet knows
        with pytest.raises(grpc.RpcError) as missing:
            client.get("pr-nope")
        assert (missing.value.code(), missing.value.details()) == (grpc.StatusCode.UNKNOWN, "pod pr-nope in namespace default not found")

        # The gates off: Get refused as the real one refuses, List with the terminal Pod (kubernetes#119423).
        kubelet.stop()
        kubelet.extra_args = ["--feature-gates=KubeletPodResourcesGet=false,KubeletPodResourcesListUseActivePods=false"]
        kubelet.start()
        assert wait_for(lambda: ("default", "pr-done") in client.list(), what=kubelet.logs)
        with pytest.raises(grpc.RpcError) as refused:
            client.get("pr-tenant")
        assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.UNKNOWN, "PodResources API Get method disabled")
    finally:
        plugin.stop()
        client.channel.close()


def test_an_unknown_feature_gate_stops_the_kubelet(tmp_path):
    done = subprocess.run([sys.executable, str(KUBELET), "--feature-gates=NoSuchGate=true"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(CLIENT_DIR), "PATH": os.environ["PATH"], "FAKE_PROC_SWAPS": "/nonexistent"},
                          check=False, timeout=30)
    assert done.returncode == 1
    assert "unrecognized feature gate: NoSuchGate" in done.stderr


# --------------------------------------------------------------------------- processes and cgroups
@pytest.mark.parametrize(("resources", "qos", "level"), [
    ({}, "BestEffort", "besteffort/"),
    ({"requests": {"cpu": "100m"}}, "Burstable", "burstable/"),
    ({"limits": {"cpu": "200m", "memory": "64Mi"}, "requests": {"cpu": "0.2", "memory": "64Mi"}}, "Guaranteed", ""),
    ({"limits": {"cpu": "200m", "memory": "64Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}}, "Burstable", "burstable/"),
])
def test_qos_class_and_cgroup_names_as_the_kubelet_and_containerd_make_them(resources, qos, level):
    pod = {"metadata": {"uid": "0a1b-2c3d"}, "spec": {"containers": [{"name": "main", "resources": resources}]}}
    assert fakeruntime.qos_class(pod) == qos
    container_id = "f" * 64
    slice_level = f"kubepods-{level.rstrip('/')}" if level else "kubepods"
    slices = "/kubepods.slice" + (f"/{slice_level}.slice" if level else "")
    assert fakeruntime.expected_cgroup(pod, container_id, "cgroupfs") == f"/kubepods/{level}pod0a1b-2c3d/{container_id}"
    assert fakeruntime.expected_cgroup(pod, container_id, "systemd") == (
        f"{slices}/{slice_level}-pod0a1b_2c3d.slice/cri-containerd-{container_id}.scope")
    assert fakeruntime.container_cgroups_path(pod, container_id, "systemd") == (
        f"{slice_level}-pod0a1b_2c3d.slice:cri-containerd:{container_id}")


def test_each_container_runs_with_its_env_and_the_runtime_s_gpus_in_its_cgroup_and_logs(kubelet):  # noqa: F811
    tools = node_tools(kubelet.root)
    kubelet.env.update(PATH=f"{tools}:{kubelet.env['PATH']}", FAKE_KUBELET_IMAGE_CONFIG_DIR=str(kubelet.root / "images"),
                       FAKE_NVIDIA_RUNTIME_CONFIG=str(kubelet.root / "toolkit.toml"))
    assert kubelet.cluster.apply({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"},
                                  "handler": "nvidia"}).returncode == 0
    kubelet.start()
    script = 'echo "$GREETING gpus=[$FAKE_NVIDIA_CONTAINER_GPUS]"; echo oops >&2; exec sleep 60'
    forged = [{"name": "GREETING", "value": "hello"}, {"name": "FAKE_NVIDIA_CONTAINER_GPUS", "value": "GPU-forged"},
              {"name": "FAKE_NVIDIA_GPU_STATE_DIR", "value": "/tmp/hidden"}]  # would hide its GPU use from NVML
    # A privileged container on the nvidia runtime with NVIDIA_VISIBLE_DEVICES=all is given every GPU
    # (the positive control); the same on runc, none.
    given = gpu_pod("given", kubelet.node, env_all=True, privileged=True)
    given["spec"]["containers"][0].update(command=["sh", "-c", script], env=forged + given["spec"]["containers"][0]["env"],
                                          resources={"limits": {"cpu": "100m", "memory": "32Mi"}})
    plain = make_pod("plain", kubelet.node, ["sh", "-c", script], env=forged, resources={"requests": {"cpu": "50m"}})
    assert kubelet.cluster.apply(given, plain).returncode == 0
    for name, gpus, level in (("given", f"{GPU_A},{GPU_B}", "kubepods"), ("plain", "", "kubepods/burstable")):
        status = running(kubelet, name)
        task = task_of(kubelet, name)
        uid = json.loads(kubelet.cluster.kubectl("get", "pod", name, "-o", "json").stdout)["metadata"]["uid"]
        env = environ(task["pid"])
        assert env["GREETING"] == "hello" and env["FAKE_NVIDIA_CONTAINER_GPUS"] == gpus, (name, env)
        assert "FAKE_NVIDIA_GPU_STATE_DIR" not in env, env
        assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        assert len(task["id"]) == 64 and int(task["id"], 16) >= 0
        assert unified_cgroup(task["pid"]) == f"{kubelet.cgroup_root}/{level}/pod{uid}/{task['id']}"
        assert status["containerStatuses"][0]["containerID"] == f"containerd://{task['id']}"
        assert status["qosClass"] == ("Guaranteed" if name == "given" else "Burstable")
        log = kubelet.pod_logs / f"default_{name}_{uid}/main/0.log"
        lines = wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2 and log.read_text().splitlines())
        entries = sorted(line.split(" ", 3)[1:] for line in lines)
        assert entries == [["stderr", "F", "oops"], ["stdout", "F", f"hello gpus=[{gpus}]"]], lines


# --------------------------------------------------------------------------- restarts and phases
def test_a_pod_of_an_earlier_pod_s_name_gets_the_runtime_s_decision_for_itself(kubelet):  # noqa: F811
    """The runtime decides at every container's create: a Pod named as a deleted one that had every
    GPU (privileged, NVIDIA_VISIBLE_DEVICES=all) gets none when it is not privileged."""
    tools = node_tools(kubelet.root)
    kubelet.env.update(PATH=f"{tools}:{kubelet.env['PATH']}", FAKE_NVIDIA_RUNTIME_CONFIG=str(kubelet.root / "toolkit.toml"))
    made = kubelet.cluster.apply({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"},
                                  "handler": "nvidia"})
    assert made.returncode == 0 or "AlreadyExists" in made.stderr, made.stderr  # the module's API server: an earlier test's
    kubelet.start()
    gpus = []
    for privileged in (True, False):
        same = gpu_pod("same", kubelet.node, env_all=True, privileged=privileged)
        same["spec"]["containers"][0]["command"] = ["sleep", "60"]
        assert kubelet.cluster.apply(same).returncode == 0
        running(kubelet, "same")
        gpus.append(environ(task_of(kubelet, "same")["pid"])["FAKE_NVIDIA_CONTAINER_GPUS"])
        assert kubelet.cluster.kubectl("delete", "pod", "same", "--grace-period=1").returncode == 0
        assert wait_for(lambda: kubelet.cluster.kubectl("get", "pod", "same").returncode != 0, what=kubelet.logs)
    assert gpus == [f"{GPU_A},{GPU_B}", ""]


def test_restart_policy_decides_the_phase_and_restarts_with_back_off(kubelet):  # noqa: F811
    kubelet.env["FAKE_KUBELET_BACKOFF_SECONDS"] = "0.5"
    kubelet.start()
    assert kubelet.cluster.apply(make_pod("never-fails", kubelet.node, ["sh", "-c", "exit 3"], restartPolicy="Never"),
                                 make_pod("never-ok", kubelet.node, ["true"], restartPolicy="Never"),
                                 make_pod("on-failure", kubelet.node, ["sh", "-c", "exit 3"], restartPolicy="OnFailure"),
                                 make_pod("always-ok", kubelet.node, ["true"])).returncode == 0
    failed = wait_for(lambda: (s := pod_status(kubelet, "never-fails")).get("phase") == "Failed" and s, what=kubelet.logs)
    terminated = failed["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    assert wait_for(lambda: pod_status(kubelet, "never-ok").get("phase") == "Succeeded")
    for name, code in (("on-failure", 3), ("always-ok", 0)):
        status = wait_for(lambda n=name: (s := pod_status(kubelet, n)).get("containerStatuses")
                          and s["containerStatuses"][0]["restartCount"] >= 2 and s, timeout=20,
                          what=lambda n=name: f"{n} restarted twice: {pod_status(kubelet, n)}")
        assert status["phase"] == "Running"
        assert status["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == code
    assert pod_status(kubelet, "never-fails")["containerStatuses"][0]["restartCount"] == 0


# --------------------------------------------------------------------------- deletion and adoption
def test_a_deleted_pod_gets_sigterm_then_sigkill_after_its_grace_period_then_is_gone(kubelet):  # noqa: F811
    kubelet.start()
    polite = 'trap "echo got TERM; exit 0" TERM; while :; do sleep 0.1; done'
    stubborn = 'trap "echo ignored TERM" TERM; while :; do sleep 0.1; done'
    assert kubelet.cluster.apply(make_pod("polite", kubelet.node, ["sh", "-c", polite], terminationGracePeriodSeconds=30),
                                 make_pod("stubborn", kubelet.node, ["sh", "-c", stubborn],
                                          terminationGracePeriodSeconds=2)).returncode == 0
    tasks = {}
    for name in ("polite", "stubborn"):
        running(kubelet, name)
        tasks[name] = task_of(kubelet, name)
        assert alive(tasks[name]["pid"])
    cgroups = {name: Path("/sys/fs/cgroup/unified" if Path("/sys/fs/cgroup/unified/cgroup.controllers").exists()
                          else "/sys/fs/cgroup") / unified_cgroup(t["pid"]).lstrip("/") for name, t in tasks.items()}
    assert all(path.is_dir() for path in cgroups.values())
    deleted = time.monotonic()
    assert kubelet.cluster.kubectl("delete", "pod", "polite", "stubborn", "--wait=false").returncode == 0
    # The API server keeps a Pod bound to a node: marked, until its kubelet deletes it.
    marked = json.loads(kubelet.cluster.kubectl("get", "pod", "stubborn", "-o", "json").stdout)["metadata"]
    assert marked["deletionGracePeriodSeconds"] == 2 and marked["deletionTimestamp"]
    assert wait_for(lambda: not alive(tasks["polite"]["pid"]))
    assert alive(tasks["stubborn"]["pid"])  # it ignores SIGTERM ...
    assert wait_for(lambda: "ignored TERM" in "".join(p.read_text() for p in kubelet.pod_logs.glob("default_stubborn_*/main/0.log")))
    assert wait_for(lambda: not alive(tasks["stubborn"]["pid"]), timeout=10)  # ... until SIGKILL
    assert time.monotonic() - deleted >= 1.5
    assert "got TERM" in "".join(p.read_text() for p in kubelet.pod_logs.glob("default_polite_*/main/0.log"))
    for name in ("polite", "stubborn"):
        assert wait_for(lambda n=name: kubelet.cluster.kubectl("get", "pod", n).returncode != 0, what=kubelet.logs)
        assert not cgroups[name].exists() and not cgroups[name].parent.exists()
    assert kubelet.tasks() == []


def test_a_restarted_kubelet_adopts_the_running_containers(kubelet):  # noqa: F811
    kubelet.start()
    assert kubelet.cluster.apply(make_pod("long", kubelet.node, ["sleep", "120"])).returncode == 0
    before = running(kubelet, "long")["containerStatuses"][0]["containerID"]
    task = task_of(kubelet, "long")
    kubelet.stop()
    assert alive(task["pid"])  # the container outlives the kubelet, as a real one does
    kubelet.start()
    assert wait_for(lambda: "Adopted the Pod's running containers" in kubelet.logs(), what=kubelet.logs)
    time.sleep(1.5)  # a few sync rounds: none may start a second copy
    assert [t["id"] for t in kubelet.tasks()] == [task["id"]] and alive(task["pid"])
    assert pod_status(kubelet, "long")["containerStatuses"][0]["containerID"] == before
    # Still its kubelet's: deleting the Pod ends the adopted process.
    assert kubelet.cluster.kubectl("delete", "pod", "long").returncode == 0
    assert not alive(task["pid"])


def test_a_container_sees_its_bind_mounts_and_the_node_does_not(kubelet):  # noqa: F811
    kubelet.start()
    source = kubelet.root / "shared"
    source.mkdir()
    (source / "pipe-name").write_text("from the host\n")
    target = f"/run/gpuaas-test-{kubelet.root.name}/pipe"
    pod = make_pod("mounted", kubelet.node, ["sh", "-c", f"cat {target}/pipe-name; touch {target}/new || echo read-only; exec sleep 60"],
                   volumeMounts=[{"name": "pipe", "mountPath": target, "readOnly": True}])
    pod["spec"]["volumes"] = [{"name": "pipe", "hostPath": {"path": str(source)}}]
    try:
        assert kubelet.cluster.apply(pod).returncode == 0
        running(kubelet, "mounted")
        log = next(iter(kubelet.pod_logs.glob("default_mounted_*/main/0.log")), None)
        lines = wait_for(lambda: log and len(log.read_text().splitlines()) >= 2 and log.read_text().splitlines(),
                         what=lambda: f"two lines in {log}; {kubelet.logs()[-2000:]}")
        assert [line.split(" ", 3)[3] for line in lines if " stdout " in line] == ["from the host", "read-only"], lines
        assert not (source / "new").exists()
        # The mount is the container's own: the node's path holds only the empty mount point.
        assert not Path(target, "pipe-name").exists()
    finally:
        subprocess.run(["rm", "-rf", str(Path(target).parent)], check=False)
