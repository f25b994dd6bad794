"""GPU readings pulled from the gpuaas agents over HTTP (issue #13, section 3), on the fleet.

The service runs with GPUAAS_AGENT_PORT and GPUAAS_AGENT_TOKEN_FILE: the roles start each GPU
node's agent with HTTP on the node's address and that port, and install the token; the
collector reads the agents every 3 s instead of running the collect_metrics playbook.

Two GPU nodes: node1 the controller, node2 a worker; one pool over GPUs of both. And node5, a
storage node registered as hosted·ai's admin client registers one: without a volume group (issue
#34), which init discovers (nodes 3 and 4 stay unused: the fleet's profiles give node5 the LVM).
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import ansible_runner
import pytest
import yaml
from sqlalchemy import create_engine, text

from fleet_service import FLEET, FLEET_STATE_DIR, REPO, Service, install_controller_key
from gpuaas_api import node_reports
from gpuaas_api.metrics.agent_http import status_from_bytes, tenant_section

FLEET_NODES = 5
AGENT_PORT = 9460
TOKEN = secrets.token_urlsafe(24)
GPU_METRICS = ("utilization_gpu_percent", "memory_used_mb", "temperature_c", "power_w")


@pytest.fixture(scope="module")
def service(running_fleet, tmp_path_factory):
    """The service with the agents' settings (this module's own, in place of conftest's)."""
    directory = tmp_path_factory.mktemp("gpuaas-agents")
    token_file = directory / "agent-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    svc = Service(directory / "var", env={"GPUAAS_AGENT_PORT": str(AGENT_PORT),
                                          "GPUAAS_AGENT_TOKEN_FILE": str(token_file),
                                          "GPUAAS_METRICS_INTERVAL_SECONDS": "3",
                                          # No storage collection job in this module's time: test_2
                                          # counts collect_metrics jobs.
                                          "GPUAAS_STORAGE_METRICS_INTERVAL_SECONDS": "3600",
                                          "GPUAAS_AGENT_READ_TIMEOUT_SECONDS": "2"})
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def pool(service, running_fleet):
    """Nodes added, initialised, the cluster enabled and node2 joined, both scanned, and a pool over
    node1's first GPU and node2's first two (the flow of test_api_on_fleet, without its checks)."""
    api = service.api
    region = api.call("POST", "/regions", {"region_name": "agents"}, expect=201)
    nodes = {}
    for name, roles in (("node1", {"is_controller_node": True}), ("node2", {"is_worker_node": True}),
                        ("node5", {"is_storage_service": True})):  # the client's body: no volume_group
        nodes[name] = api.call("POST", "/gpuaas/node/add", {
            "name": name, "region_id": region["id"], "node_ip": running_fleet["nodes"][name]["address"],
            "username": "root", "port": 22, **roles}, expect=201)
        install_controller_key(api, nodes[name]["id"], name)
    inits = [api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={node['id']}")["job_id"] for node in nodes.values()]
    storage = nodes.pop("node5")
    for job_id in inits:
        job = api.wait_job(job_id, timeout=600)
        assert job["status"] == "successful", job["explanation"]
    enabled = api.call("POST", f"/gpuaas/enable?controller_node_id={nodes['node1']['id']}")
    assert api.wait_job(enabled["job_id"])["status"] == "successful"
    joined = api.run("POST", "/gpuaas/node/join", {"gpuaas_id": enabled["gpuaas_id"],
                                                   "gpuaas_node_id": nodes["node2"]["id"]})
    assert joined["status"] == "successful", joined["explanation"]
    for node in nodes.values():
        scan = api.run("GET", f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}")
        assert scan["status"] == "successful", scan["explanation"]
    uuids = {name: [g["uuid"] for g in running_fleet["nodes"][name]["hardware"]["gpus"]] for name in nodes}
    members = [uuids["node1"][0], uuids["node2"][0], uuids["node2"][1]]
    created = api.call("POST", "/gpuaas/pool/create", {"gpuaas_id": enabled["gpuaas_id"], "pool": {
        "pool_name": "agents", "attach_gpu_ids": members, "sharing_ratio": 2, "time_quantum_in_sec": 30,
        "security_level": "low"}}, expect=201)
    job = api.wait_job(created["job_id"])
    assert job["status"] == "successful", job["explanation"]
    return {"id": created["id"], "nodes": nodes, "uuids": uuids, "members": members, "storage": storage,
            "addresses": {name: running_fleet["nodes"][name]["address"] for name in nodes}}


def agent_get(address: str, path: str, token: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{address}:{AGENT_PORT}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def node_exec(node: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*FLEET, "node-exec", node, "--", *command], capture_output=True, text=True, check=check,
                          timeout=120)


def usage(api, pool_id: int) -> dict:
    """uuid -> the pool GPU's latest stored reading and assignment."""
    metrics = api.call("GET", f"/gpuaas/pool/{pool_id}/metrics?time_grouping=1m")
    return {gpu["uuid"]: gpu for gpu in metrics["usage"]["gpus"]}


def sampled_after(gpu: dict, moment: dt.datetime) -> bool:
    if not gpu.get("sampled_at"):
        return False
    at = dt.datetime.fromisoformat(gpu["sampled_at"])
    return (at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)) > moment


def wait_for_slots(api, pool_id: int, uuids: list, status: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        slots = api.call("GET", f"/gpuaas/pool/{pool_id}")["gpus"]
        seen = {uuid: {slot["assignment_status"] for slot in slots if slot["uuid"] == uuid} for uuid in uuids}
        if all(statuses == {status} for statuses in seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def ansible_readings(tmp_path: Path) -> dict:
    """The collect_metrics playbook's readings of both nodes' GPUs (the Ansible path), uuid -> metrics."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".build/collections"),
           "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
           "ANSIBLE_HOST_KEY_CHECKING": "False", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    report_dir = tmp_path / "reports"
    extra = {"collect_metrics_gpu_hosts": ["node1", "node2"], "collect_metrics_storage_hosts": [],
             "gpu_scan_report_dir": str(report_dir)}
    done = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", str(FLEET_STATE_DIR / "inventory.yml"),
                           "-e", json.dumps(extra), str(REPO / "playbooks/collect_metrics.yml")],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    found = {}
    for name in ("node1", "node2"):
        report = json.loads((report_dir / "gpuaas_gpu_scan" / f"{name}.json").read_text())
        found.update({gpu["uuid"]: gpu["metrics"] for gpu in report["gpus"] if gpu.get("status") == "ok"})
    return found


def ansible_tenants(tmp_path: Path) -> dict:
    """The default (Ansible) path's tenant reports: collect_metrics.yml through ansible-runner, as the
    service runs it, its `gpuaas_agent_status` parsed by the service's own checks; team -> slots held."""
    bin_dir = Path(sys.executable).parent
    env = {"ANSIBLE_COLLECTIONS_PATH": str(REPO / ".build/collections"), "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "ANSIBLE_HOST_KEY_CHECKING": "False",
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    (tmp_path / "runner").mkdir()
    run = ansible_runner.run(private_data_dir=str(tmp_path / "runner"), playbook=str(REPO / "playbooks/collect_metrics.yml"),
                             inventory=str(FLEET_STATE_DIR / "inventory.yml"), envvars=env, quiet=True,
                             extravars={"collect_metrics_gpu_hosts": ["node1", "node2"], "collect_metrics_storage_hosts": []})
    assert run.rc == 0, run.stdout.read()[-3000:]
    artifact = next(event for event in run.events if event["event"] == "playbook_on_stats")["event_data"]["artifact_data"]
    held: dict = {}
    for host in ("node1", "node2"):
        status = status_from_bytes(base64.b64decode(artifact["gpuaas_agent_status"][host]["content"]))
        for slot in node_reports.tenant_report(tenant_section(status)):
            if slot.team is not None and slot.slot:
                held[slot.team] = held.get(slot.team, 0) + 1
    return held


def test_1_the_agents_serve_on_the_node_address_with_the_token_only(service, pool):
    address = pool["addresses"]["node2"]
    assert agent_get(address, "/status", None)[0] == 401
    assert agent_get(address, "/status", "not-the-token")[0] == 401
    assert agent_get(address, "/metrics", None)[0] == 401
    status, body = agent_get(address, "/status", TOKEN)
    assert status == 200
    assert set(pool["uuids"]["node2"]) <= set(json.loads(body)["gpus"])
    status, body = agent_get(address, "/metrics", TOKEN)
    assert status == 200 and b"gpuaas_agent_gpu_utilization_percent" in body
    # Where the roles put them: the node's address (not every address), and the token readable by root only.
    settings = yaml.safe_load(node_exec("node2", "cat", "/etc/gpuaas/agent.yaml").stdout)
    assert settings["http_listen"] == f"{address}:{AGENT_PORT}"
    assert node_exec("node2", "stat", "-c", "%a %U", "/etc/gpuaas/agent-token").stdout.split() == ["600", "root"]
    assert node_exec("node2", "cat", "/etc/gpuaas/agent-token").stdout.strip() == TOKEN


def test_2_the_agents_readings_equal_the_ansible_paths(service, pool, tmp_path):
    """The fake NVML's readings change each minute (time(NULL)/60, per GPU index): both paths are
    read within one minute, or again."""
    api = service.api
    for _attempt in range(3):
        if time.time() % 60 > 30:  # room for the playbook and the next collection before the minute ends
            time.sleep(62 - time.time() % 60)
        minute = int(time.time() // 60)
        by_ansible = ansible_readings(tmp_path)
        after = dt.datetime.now(dt.timezone.utc)
        deadline = time.monotonic() + 20
        stored = usage(api, pool["id"])
        while not all(sampled_after(gpu, after) for gpu in stored.values()):
            assert time.monotonic() < deadline, stored
            time.sleep(0.5)
            stored = usage(api, pool["id"])
        status, body = agent_get(pool["addresses"]["node2"], "/status", TOKEN)
        if int(time.time() // 60) != minute:
            continue
        for uuid in pool["members"]:
            assert {name: float(stored[uuid][name]) for name in GPU_METRICS} == \
                {name: float(by_ansible[uuid][name]) for name in GPU_METRICS}, uuid
        agent_gpus = json.loads(body)["gpus"]
        for uuid in pool["uuids"]["node2"][:2]:
            assert {name: agent_gpus[uuid]["readings"][name] for name in GPU_METRICS} == \
                {name: by_ansible[uuid][name] for name in GPU_METRICS}
        break
    else:
        raise AssertionError("no attempt fitted in one minute")
    # The readings came from the agents: no collection job ran (no storage node: no storage job either).
    engine = create_engine(f"sqlite:///{service.data_dir / 'gpuaas.sqlite3'}")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM jobs WHERE operation = 'collect_metrics'")).scalar() == 0
    engine.dispose()


def test_3_a_node_whose_agent_is_down_is_unavailable_and_assigned_again_when_it_answers(service, pool):
    api = service.api
    node2_gpus = pool["members"][1:]
    node_exec("node2", "systemctl", "stop", "gpuaas-agent")
    try:
        assert wait_for_slots(api, pool["id"], node2_gpus, "UNAVAILABLE") == {uuid: {"UNAVAILABLE"} for uuid in node2_gpus}
        assert wait_for_slots(api, pool["id"], pool["members"][:1], "ASSIGNED", timeout=5) == {
            pool["members"][0]: {"ASSIGNED"}}  # node1's agent still answers
        log = service.log_path.read_text()
        assert f"node-{pool['nodes']['node2']['id']} ({pool['addresses']['node2']}:{AGENT_PORT}): connection refused" in log
    finally:
        node_exec("node2", "systemctl", "start", "gpuaas-agent")
    assert wait_for_slots(api, pool["id"], node2_gpus, "ASSIGNED") == {uuid: {"ASSIGNED"} for uuid in node2_gpus}


def test_4_the_token_reaches_no_log_job_or_file_of_the_service(service, pool):
    engine = create_engine(f"sqlite:///{service.data_dir / 'gpuaas.sqlite3'}")
    with engine.connect() as connection:
        logged = "\n".join(f"{stdout}{data}" for stdout, data in
                           connection.execute(text("SELECT stdout, data FROM job_events")).all())
        recorded = "\n".join(f"{row[0]}{row[1]}" for row in
                             connection.execute(text("SELECT extravars, result FROM jobs")).all())
    engine.dispose()
    assert logged and recorded
    assert TOKEN not in logged and TOKEN not in recorded
    assert TOKEN not in service.log_path.read_text()
    assert list((service.data_dir / "jobs").iterdir()) == []  # the inventories that held it are gone


def pod_manifest(namespace: str, name: str, node: str, resource: str, slots: int) -> dict:
    """A tenant's Pod: the fake GPU's workload on ``slots`` of the pool's resource, pinned to ``node``."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeName": node, "restartPolicy": "Never", "runtimeClassName": "nvidia",
                     "terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "main", "image": "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04",
                                     "command": ["/usr/bin/fake-gpu-workload", "--memory-mib", "256", "--kernel-ms", "20"],
                                     "resources": {"limits": {resource: slots}}}]}}


def kubectl(*args: str, manifest: dict | None = None) -> str:
    """kubectl on the controller with the admin's kubeconfig (a manifest goes through base64: no quoting)."""
    command = "kubectl --kubeconfig=/etc/kubernetes/admin.conf " + " ".join(args)
    if manifest is not None:
        encoded = base64.b64encode(json.dumps(manifest).encode()).decode()
        command = f"echo {encoded} | base64 -d | {command} -f -"
    return node_exec("node1", "sh", "-c", command).stdout


def wait_for_teams(api, pool_id: int, predicate, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        reply = api.call("GET", f"/gpuaas/pool/{pool_id}/subscribed_teams?sort_least_consumed=1&from_time_seconds=0"
                                "&page=0&limit=100")
        if predicate(reply) or time.monotonic() > deadline:
            return reply
        time.sleep(1)


def diagnosis(service, pool) -> str:
    """What a failure needs: the Pods, each agent's tenants, and the service's log about them."""
    tenants = {name: json.loads(agent_get(address, "/status", TOKEN)[1]).get("tenants")
               for name, address in pool["addresses"].items()}
    log = [line for line in service.log_path.read_text().splitlines() if "tenant" in line or "refused" in line]
    return (f"pods: {kubectl('get', 'pods', '-A', '-o', 'wide')}\ntenants: {json.dumps(tenants)[:6000]}\n"
            f"log: {log[-20:]}")


def test_5_subscribed_teams_lists_the_pods_namespaces_and_a_deleted_pods_team_leaves(service, pool, tmp_path):
    """Pods of two namespaces in the pool (ratio 2: node1 holds 2 slots, node2 4): the client's
    subscribed_teams request lists both with their slots and RAM; a deleted Pod's team leaves."""
    api = service.api
    names = {name: api.call("GET", f"/gpuaas/node/{node['id']}")["kubernetes_name"] for name, node in pool["nodes"].items()}
    described = api.call("GET", f"/gpuaas/pool/{pool['id']}")
    resource = described["resource_name"]
    slot_mb = {name: next(slot["memory_in_mb"] for slot in described["gpus"] if slot["gpuaas_node_id"] == node["id"])
               for name, node in pool["nodes"].items()}  # node1 an H100, node2 an A100: a slot each is GPU ÷ 2
    pods = {("team-a", "train"): pod_manifest("team-a", "train", names["node2"], resource, 2),
            ("team-b", "infer"): pod_manifest("team-b", "infer", names["node1"], resource, 1)}
    try:
        for manifest in pods.values():
            kubectl("create", "--validate=false", manifest=manifest)
        reply = wait_for_teams(api, pool["id"], lambda reply: reply["total"] == 3 and {
            team["status"] for team in reply["data"]} == {"running"})
        found = {team["team_id"]: team for team in reply["data"]}
        assert set(found) == {"team-a", "team-b"} and reply["total"] == 3, (reply, diagnosis(service, pool))
        assert (found["team-a"]["slots"], found["team-a"]["total_ram_mb"]) == (2, 2 * slot_mb["node2"])
        assert (found["team-b"]["slots"], found["team-b"]["total_ram_mb"]) == (1, slot_mb["node1"])
        assert found["team-a"]["total_tflops"] == 312.0 and found["team-b"]["total_tflops"] == 494.75  # A100, H100 ÷ 2
        assert found["team-a"]["vram_used_mb"] > 0 and found["team-b"]["vram_used_mb"] > 0
        capacity = api.call("GET", f"/gpuaas/pool/{pool['id']}")
        assert (capacity["total_gpus"], capacity["allocated_gpus"], capacity["available_gpus"]) == (6, 3, 3)
        # The default path carries the same report: the agents' status files, read by the playbook.
        assert ansible_tenants(tmp_path) == {"team-a": 2, "team-b": 1}

        kubectl("delete", "pod", "-n", "team-b", "infer", "--wait=false")
        reply = wait_for_teams(api, pool["id"], lambda reply: {team["team_id"] for team in reply["data"]} == {"team-a"})
        assert [team["team_id"] for team in reply["data"]] == ["team-a"] and reply["total"] == 2, reply
        assert api.call("GET", f"/gpuaas/pool/{pool['id']}")["allocated_gpus"] == 2
    finally:
        for namespace, name in pods:
            kubectl("delete", "pod", "-n", namespace, name, "--ignore-not-found", "--wait=false")


def test_6_a_storage_node_registered_without_a_volume_group_gets_its_largest_at_init(service, pool):
    """The client never sends volume_group: init found the node's one (the fleet's vgs stand-in
    reports `gpuaas`), recorded it, and the node's next job reads it."""
    api = service.api
    node = api.call("GET", f"/gpuaas/node/{pool['storage']['id']}")
    assert (node["volume_group"], node["initialize_state_status_code"]) == ("gpuaas", 2), node
    refresh = api.call("GET", f"/gpuaas/node/{node['id']}/storage_metrics")["refresh_job_id"]
    assert api.wait_job(refresh)["status"] == "successful"
    reading = api.call("GET", f"/gpuaas/node/{node['id']}/storage_metrics")["metrics"]
    assert reading["volume_group"]["name"] == "gpuaas", reading
