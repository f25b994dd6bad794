"""Each slot's tenant (gpuaas_agent/tenants.py): the join of the kubelet's PodResources (a real
gRPC server on a Unix socket), the API server's Pod list (an HTTP double), the processes'
cgroups (a /proc stand-in) and NVML's processes (a double of gpus.Gpus.processes).
tests/support/tenant_doubles.py has the doubles."""
from __future__ import annotations

import json
import re
import socket
import time

import pytest
from gpuaas_agent.config import Settings
from gpuaas_agent.status_http import StatusCollector
from gpuaas_agent.tenants import Tenants
from prometheus_client import CollectorRegistry, generate_latest
from tenant_doubles import NODE, ApiServer, Gpus, PodResources, ProcRoot, kubelet_pki, pod_object, systemd_cgroup

A, B, M = "GPU-aaaa0000-0000-4000-8000-000000000001", "GPU-bbbb0000-0000-4000-8000-000000000002", \
    "GPU-cccc0000-0000-4000-8000-000000000003"
POOL1, POOL2 = "gpuaas.hosted.ai/pool-1", "gpuaas.hosted.ai/pool-2"
# Pool 1: A and B, 4 slots each (low); pool 2: M, 2 slots (medium, MPS).
SLOTS = {**{f"{gpu}::{n}": (POOL1, gpu) for gpu in (A, B) for n in range(1, 5)},
         **{f"{M}::{n}": (POOL2, M) for n in (1, 2)}}
UID1, UID2, UID3 = ("11111111-0000-4000-8000-00000000000" + str(n) for n in (1, 2, 3))
C1, C2, C3 = ("1" * 64, "2" * 64, "3" * 64)


@pytest.fixture
def node(tmp_path):
    directory = tmp_path / "s"
    directory.mkdir()
    kubelet = PodResources(directory / "kubelet.sock").start()
    api = ApiServer(tmp_path).start()
    proc = ProcRoot(tmp_path / "proc")
    gpus = Gpus()
    settings = Settings(pod_resources_socket=str(kubelet.socket_path), pod_resources_timeout=0.5,
                        kubeconfig=str(api.kubeconfig), node_name=NODE, proc_root=str(proc.root), api_relist_seconds=30)

    class Node:
        def __init__(self):
            self.kubelet, self.api, self.proc, self.gpus, self.settings = kubelet, api, proc, gpus, settings
            self.tenants = Tenants(settings, gpus)

        def poll(self, medium=(M,)) -> dict:
            self.tenants.refresh(SLOTS, set(medium), [A, B, M])
            return self.tenants.report

        def pod(self, uid, namespace, name, phase="Running", **containers):
            api.pods = [pod for pod in api.pods if pod["metadata"]["uid"] != uid]
            api.pods.append(pod_object(uid, namespace, name, phase=phase, containers=containers))

    yield Node()
    kubelet.stop()
    api.stop()


def two_tenants(node):
    """team-a/train holds A::1 and A::2 (one container), team-b/infer holds B::3."""
    node.kubelet.hold("team-a", "train", "main", POOL1, f"{A}::1", f"{A}::2")
    node.kubelet.hold("team-b", "infer", "server", POOL1, f"{B}::3")
    node.pod(UID1, "team-a", "train", main=C1)
    node.pod(UID2, "team-b", "infer", server=C2)
    node.proc.set(101, systemd_cgroup(UID1, C1))
    node.proc.set(102, systemd_cgroup(UID1, C1, ))
    node.proc.set(201, systemd_cgroup(UID2, C2, qos="guaranteed"))
    node.gpus.run(A, 101, mib=3000, percent=40)
    node.gpus.run(A, 102, mib=1000, percent=20)
    node.gpus.run(B, 201, mib=5000, percent=50)


def test_each_slot_names_its_pod_container_processes_and_vram(node):
    two_tenants(node)
    report = node.poll()
    assert report["state"] == "ok" and report["unknown"] == [] and report["flagged"] == []
    slot = report["slots"][f"{B}::3"]
    assert slot["tenant"] == {"namespace": "team-b", "pod": "infer", "container": "server", "uid": UID2}
    assert slot["state"] == "running" and [p["pid"] for p in slot["processes"]] == [201] and slot["vram_used_mb"] == 5000
    # Two slots of one container on one GPU: both list its processes, each carries half.
    for n, other in ((1, 2), (2, 1)):
        slot = report["slots"][f"{A}::{n}"]
        assert slot["tenant"]["pod"] == "train" and slot["shared_with"] == [f"{A}::{other}"]
        assert [p["pid"] for p in slot["processes"]] == [101, 102] and slot["vram_used_mb"] == 2000
    free = {"resource": POOL1, "gpu": A, "state": "free", "tenant": None, "processes": [], "vram_used_mb": 0.0,
            "gpu_seconds": 0.0, "shared_with": []}
    assert report["slots"][f"{A}::3"] == free
    assert {device: slot["state"] for device, slot in report["slots"].items() if slot["state"] != "free"} == \
        {f"{A}::1": "running", f"{A}::2": "running", f"{B}::3": "running"}


def test_gpu_time_is_a_counter_of_what_each_slot_received(node):
    two_tenants(node)
    node.poll()
    time.sleep(0.3)
    first = node.poll()
    between = time.monotonic()
    time.sleep(0.3)
    second = node.poll()
    between = time.monotonic() - between
    b1, b2 = first["slots"][f"{B}::3"]["gpu_seconds"], second["slots"][f"{B}::3"]["gpu_seconds"]
    # 50 % of the GPU for the time between two looks; the counter only grows.
    assert 0.1 < b1 < b2 and b2 - b1 == pytest.approx(0.5 * between, abs=0.02)
    # team-a's container: 40 % + 20 %, split over its two slots, which sum to the container's.
    a1, a2 = (second["slots"][f"{A}::{n}"]["gpu_seconds"] for n in (1, 2))
    processes = sum(p["gpu_seconds"] for p in second["slots"][f"{A}::1"]["processes"])
    assert a1 == a2 and a1 + a2 == pytest.approx(processes, rel=0.01) and a1 + a2 > b2


def test_gpu_time_before_the_pod_is_known_is_credited_once_it_is(node):
    """A container's process runs before PodResources lists its Pod (the kubelet reports after the
    start): what it received meanwhile is the tenant's, counted once, not lost."""
    two_tenants(node)
    node.pod(UID3, "team-c", "late", main=C3)
    node.proc.set(501, systemd_cgroup(UID3, C3))
    node.gpus.run(B, 501, mib=10, percent=30)
    node.poll()
    time.sleep(0.3)
    early = node.poll()
    assert [entry["pid"] for entry in early["flagged"]] == [501]  # a Pod's process on a GPU it holds no slot of
    before = next(entry["gpu_seconds"] for entry in early["flagged"] if entry["pid"] == 501)
    assert before > 0.05
    node.kubelet.hold("team-c", "late", "main", POOL1, f"{B}::4")
    held = node.poll()["slots"][f"{B}::4"]
    assert [p["pid"] for p in held["processes"]] == [501]
    assert held["gpu_seconds"] == pytest.approx(held["processes"][0]["gpu_seconds"], rel=0.01) and held["gpu_seconds"] >= before
    again = node.poll()["slots"][f"{B}::4"]  # and counted once: the counter follows the process's total
    assert again["gpu_seconds"] == pytest.approx(again["processes"][0]["gpu_seconds"], rel=0.01)


def test_an_idle_gpu_s_next_window_starts_at_the_last_look(node):
    """A process that appears on a GPU that was idle is integrated from the last poll, not from the
    GPU's last sample: NVML's smUtil is a whole percentage of the window, so a window spanning the
    idle time costs up to 0.5 % of all of it (this double's share stands for the whole window)."""
    node.kubelet.hold("team-c", "late", "main", POOL1, f"{B}::4")
    node.pod(UID3, "team-c", "late", main=C3)
    node.poll()
    time.sleep(1.0)  # idle: no process, no sample
    node.poll()
    node.proc.set(501, systemd_cgroup(UID3, C3))
    node.gpus.run(B, 501, mib=10, percent=30)
    started = time.monotonic()
    time.sleep(0.3)
    slot = node.poll()["slots"][f"{B}::4"]
    assert slot["gpu_seconds"] == pytest.approx(0.3 * (time.monotonic() - started), abs=0.03)


def test_a_pod_in_a_terminal_phase_holds_nothing(node):
    # kubernetes#119423: some kubelets still list an ended Pod's devices in PodResources.
    two_tenants(node)
    node.pod(UID2, "team-b", "infer", phase="Succeeded", server=C2)
    report = node.poll()
    assert report["slots"][f"{B}::3"]["state"] == "free" and report["slots"][f"{B}::3"]["tenant"] is None
    # A process still in its cgroup is listed under it, flagged, and in no slot.
    assert [(f["pid"], f["pod"], f["flag"]) for f in report["flagged"]] == [(201, "infer", "terminal_pod")]
    node.pod(UID2, "team-b", "infer", phase="Running", server=C2)  # the positive control
    node.kubelet.hold("team-b", "infer", "server", POOL1, f"{B}::3", f"{B}::4")  # a change: the list is read again
    assert node.poll()["slots"][f"{B}::3"]["state"] == "running"


def test_a_process_outside_its_allocation_is_flagged_under_its_pod(node):
    # team-b's container holds B::3 only, but a process of it (a forged NVIDIA_VISIBLE_DEVICES)
    # opened GPU A: its cgroup says whose it is, and it is listed under that Pod, flagged.
    two_tenants(node)
    node.proc.set(202, systemd_cgroup(UID2, C2, qos="guaranteed"))
    node.gpus.run(A, 202, mib=700, percent=10)
    report = node.poll()
    assert report["flagged"][0].pop("gpu_seconds") >= 0  # it is counted too, from the first look on
    assert report["flagged"] == [{"pid": 202, "gpu": A, "vram_mb": 700.0, "namespace": "team-b",
                                  "pod": "infer", "container": "server", "uid": UID2, "flag": "outside_allocation",
                                  "slots": [f"{B}::3"]}]
    assert all(202 not in [p["pid"] for p in slot["processes"]] for slot in report["slots"].values())
    assert report["slots"][f"{A}::1"]["vram_used_mb"] == 2000  # not charged to team-a


def test_processes_of_no_known_pod_are_unknown_never_attributed(node):
    two_tenants(node)
    node.proc.set(301, "0::/system.slice/someone.service\n")  # a host process
    node.gpus.run(A, 301, mib=100)
    node.gpus.run(A, 302, mib=100)  # its cgroup cannot be read: no /proc/302
    node.proc.set(303, systemd_cgroup(UID3, C3))  # a Pod the API server does not list
    node.gpus.run(B, 303, mib=100)
    node.proc.set(304, systemd_cgroup(UID1, C3))  # a known Pod, a container not in its status
    node.gpus.run(B, 304, mib=100)
    report = node.poll()
    reasons = {entry["pid"]: entry["reason"] for entry in report["unknown"]}
    assert reasons[301] == "not in a Pod's cgroup" and "cannot be read" in reasons[302]
    assert reasons[303] == f"Pod {UID3} is not in this node's Pod list"
    assert reasons[304] == f"container {C3} is not in the status of Pod team-a/train"
    attributed = {p["pid"] for slot in report["slots"].values() for p in slot["processes"]}
    assert attributed == {101, 102, 201} and report["flagged"] == []
    # A cgroup that could not be read is read again (a parsed one is kept while the pid lives).
    node.proc.set(302, systemd_cgroup(UID1, C1))
    node.proc.set(301, systemd_cgroup(UID1, C1))
    report = node.poll()
    assert 302 in [p["pid"] for p in report["slots"][f"{A}::1"]["processes"]]
    assert [entry["pid"] for entry in report["unknown"] if entry["pid"] in (301, 302)] == [301]


def test_an_unseen_cgroup_lists_the_pods_again_once(node):
    two_tenants(node)
    node.poll()
    lists = len(node.api.requests)
    node.poll()
    node.poll()
    assert len(node.api.requests) == lists  # nothing changed: the cached list serves
    # A new container's process appears before the cached list has its ID: one list, then it is known.
    node.pod(UID3, "team-c", "new", main=C3)
    node.proc.set(401, systemd_cgroup(UID3, C3, qos="besteffort"))
    node.gpus.run(B, 401, mib=10)
    report = node.poll()
    assert len(node.api.requests) == lists + 1
    assert [(f["pid"], f["pod"]) for f in report["flagged"]] == [(401, "new")]  # holds no slot on B
    node.proc.set(402, systemd_cgroup("99999999-0000-4000-8000-000000000000", C3))  # a UID no list will have
    node.gpus.run(B, 402, mib=10)
    node.poll()
    node.poll()
    assert len(node.api.requests) == lists + 2  # one try for it, not one per poll


def test_mps_clients_are_the_tenants_and_the_server_is_infrastructure(node):
    node.kubelet.hold("team-m", "mps", "main", POOL2, f"{M}::1")
    node.pod(UID3, "team-m", "mps", main=C3)
    node.proc.set(501, systemd_cgroup(UID3, C3))
    node.proc.set(500, "0::/system.slice/gpuaas-agent.service\n")  # the agent's cgroup: the daemon's server
    node.proc.set(502, "0::/system.slice/other.service\n")  # another host process on the GPU
    node.gpus.run(M, 500, mib=300)
    node.gpus.run(M, 501, mib=2000, percent=30, mps_client=True)
    node.gpus.run(M, 502, mib=50)
    report = node.poll()
    assert [(p["pid"], p["what"]) for p in report["infrastructure"]] == [(500, "MPS server")]
    assert [p["pid"] for p in report["slots"][f"{M}::1"]["processes"]] == [501]
    assert [entry["pid"] for entry in report["unknown"]] == [502]  # the control: not every host process is the server


def test_a_missing_socket_leaves_the_tenants_unknown_with_the_reason(node):
    two_tenants(node)
    node.kubelet.stop()
    node.kubelet.socket_path.unlink(missing_ok=True)
    report = node.poll()
    assert report["state"] == "unknown" and "does not exist" in report["reason"]
    assert {slot["state"] for slot in report["slots"].values()} == {"unknown"}
    assert {slot["tenant"] for slot in report["slots"].values()} == {None}
    assert {entry["pid"] for entry in report["unknown"]} == {101, 102, 201}  # listed, not attributed
    node.kubelet.start()  # the positive control: it answers again
    assert node.poll()["state"] == "ok"


def test_a_hanging_socket_is_cut_off_at_the_deadline(node, tmp_path):
    two_tenants(node)
    hanging = socket.socket(socket.AF_UNIX)
    hanging.bind(str(tmp_path / "hang.sock"))
    hanging.listen(8)  # accepts the connection in the kernel, never answers
    tenants = Tenants(node.settings.__class__(**{**node.settings.__dict__, "pod_resources_socket": str(tmp_path / "hang.sock")}),
                      node.gpus)
    started = time.monotonic()
    tenants.refresh(SLOTS, {M}, [A, B, M])
    took = time.monotonic() - started
    hanging.close()
    assert tenants.report["state"] == "unknown" and "did not answer within 0.5 s" in tenants.report["reason"]
    assert took < 2, took


def test_a_failing_api_server_keeps_slots_and_leaves_processes_unknown(node):
    two_tenants(node)
    node.api.status = 500
    report = node.poll()
    assert report["state"] == "ok" and "500" in report["api_server"]
    assert report["slots"][f"{B}::3"]["tenant"] == {"namespace": "team-b", "pod": "infer", "container": "server", "uid": None}
    assert {entry["pid"] for entry in report["unknown"]} == {101, 102, 201}
    assert all("Pod list is unavailable" in entry["reason"] for entry in report["unknown"])


def test_metrics_carry_the_pods_namespace_and_name(node):
    two_tenants(node)
    node.proc.set(202, systemd_cgroup(UID2, C2, qos="guaranteed"))
    node.gpus.run(A, 202, mib=700)
    node.gpus.run(A, 301, mib=1)
    node.poll()
    time.sleep(0.2)
    status = {"gpus": {}, "resources": {}, "config": {"version": 1}, "tenants": node.poll()}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    text = generate_latest(registry).decode()
    labels = f'container="server",gpu="{B}",namespace="team-b",pod="infer",resource="{POOL1}",slot="{B}::3"'
    assert f"gpuaas_agent_slot_memory_used_megabytes{{{labels}}} 5000.0" in text
    assert f"gpuaas_agent_slot_processes{{{labels}}} 1.0" in text
    assert re.search(rf"gpuaas_agent_slot_gpu_seconds_total{{{re.escape(labels)}}} 0\.[0-9]+", text)
    assert f'gpuaas_agent_slot_state{{{labels},state="running"}} 1.0' in text
    free = f'container="",gpu="{A}",namespace="",pod="",resource="{POOL1}",slot="{A}::3",state="free"'
    assert f"gpuaas_agent_slot_state{{{free}}} 1.0" in text
    assert f'gpuaas_agent_flagged_processes{{container="server",flag="outside_allocation",gpu="{A}",namespace="team-b",pod="infer"}} 1.0' in text
    assert f'gpuaas_agent_unknown_processes{{gpu="{A}"}} 1.0' in text
    assert "gpuaas_agent_tenants_known 1.0" in text
    names = set(re.findall(r"^(?:# (?:HELP|TYPE) )?([a-zA-Z_:][a-zA-Z0-9_:]*)", text, re.MULTILINE))
    assert names and all(name.startswith("gpuaas_agent_") for name in names)


def test_the_api_server_is_read_with_the_kubelets_client_certificate_for_its_node(node, tmp_path):
    # TLS that requires a client certificate, as the API server does; the node's name is the
    # certificate's (system:node:node-a), since the setting is empty; a Pod of another node is
    # never asked for (the field selector) nor attributed.
    pki = kubelet_pki(tmp_path / "pki")
    (tmp_path / "tls").mkdir()
    api = ApiServer(tmp_path / "tls", pki).start()
    try:
        two_tenants(node)
        api.pods = node.api.pods + [pod_object(UID3, "team-c", "elsewhere", node="node-b", containers={"main": C3})]
        node.proc.set(601, systemd_cgroup(UID3, C3))
        node.gpus.run(B, 601, mib=10)
        settings = Settings(**{**node.settings.__dict__, "kubeconfig": str(api.kubeconfig), "node_name": ""})
        tenants = Tenants(settings, node.gpus)
        tenants.refresh(SLOTS, {M}, [A, B, M])
        report = tenants.report
        assert report["api_server"] == "ok" and report["node_name"] == NODE
        assert api.requests[0] == f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}"
        assert report["slots"][f"{B}::3"]["tenant"]["uid"] == UID2
        assert [(e["pid"], e["reason"]) for e in report["unknown"]] == [(601, f"Pod {UID3} is not in this node's Pod list")]
        # Without the client certificate the server refuses the handshake: the reason is reported.
        config = json.loads(api.kubeconfig.read_text())
        config["users"][0]["user"] = {}
        api.kubeconfig.write_text(json.dumps(config))
        tenants = Tenants(settings, node.gpus)
        tenants.refresh(SLOTS, {M}, [A, B, M])
        assert tenants.report["api_server"].startswith("https://127.0.0.1:") and len(api.requests) == 1
        assert {e["pid"] for e in tenants.report["unknown"]} == {101, 102, 201, 601}
    finally:
        api.stop()


@pytest.mark.parametrize("samples, integrated_to, expected", [
    # One sample over [lastSeen, timeStamp], as the fleet's fake NVML gives: 50 % of 2 s.
    ([(7, 3_000_000, 50)], {}, {7: 1.0}),
    # Several per process, as real NVML keeps them (~1/6 s apart): each over the time since the last.
    ([(7, 2_000_000, 100), (7, 1_500_000, 20), (8, 3_000_000, 10)], {}, {7: 0.1 + 0.5, 8: 0.2}),
    # Time already counted is not counted again.
    ([(7, 3_000_000, 50)], {7: 2_000_000}, {7: 0.5}),
    ([(7, 2_000_000, 50)], {7: 2_000_000}, {}),
], ids=["one-sample", "several-samples", "from-the-last-counted", "nothing-new"])
def test_gpu_time_integrates_sm_utilisation_over_each_interval(samples, integrated_to, expected):
    from gpuaas_agent.tenants import integrate  # pylint: disable=import-outside-toplevel
    got = integrate(samples, 1_000_000, integrated_to)
    assert got.keys() == expected.keys() and all(got[pid] == pytest.approx(expected[pid]) for pid in expected)
