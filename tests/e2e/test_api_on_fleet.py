"""The guide's node lifecycle through the API, on the fleet, in order."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from fleet_service import ADMIN, CLI, FLEET, REPO, Service, install_controller_key
from waiting import wait_for


@pytest.fixture(scope="module")
def cluster(service, running_fleet):
    api = service.api
    region = api.call("POST", "/regions", {"region_name": "fleet"}, expect=201)
    nodes = {}
    for name, roles in (("node1", {"is_controller_node": True}), ("node2", {"is_worker_node": True}),
                        ("node3", {"is_worker_node": True})):
        nodes[name] = api.call("POST", "/gpuaas/node/add", {
            "name": DISPLAY[name], "region_id": region["id"], "node_ip": running_fleet["nodes"][name]["address"],
            "username": "root", "port": 22, **roles}, expect=201)
        install_controller_key(api, nodes[name]["id"], name)
    return {"region": region, "nodes": nodes}


# The names operators give nodes are not their hosts' hostnames (node1, node2, node3); the
# service names them in Kubernetes by their hostnames, read at the first contact.
# They are also hostile: display names are free text, and none of them may reach an inventory, a
# command line or a template (the inventory names hosts node-<id>). If one did, these would run
# on this machine: test_1 checks that no marker appeared.
MEM_TOTAL_MB = next(int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
MARKERS = (Path("/tmp/gpuaas-e2e-templated"), Path("/tmp/gpuaas-e2e-proxycommand"))
DISPLAY = {"node1": "Acme Corp.ctl-01; touch /tmp/gpuaas-e2e-shell",
           "node2": "{{ lookup('pipe', 'touch /tmp/gpuaas-e2e-templated') }}",
           "node3": "-oProxyCommand=touch /tmp/gpuaas-e2e-proxycommand"}


def test_1_test_conn_pins_each_host_key(service, cluster):
    api = service.api
    for marker in (*MARKERS, Path("/tmp/gpuaas-e2e-shell")):
        marker.unlink(missing_ok=True)
    known = dict(line.split(" ", 1) for line in
                 Path("/var/lib/hostedai-gpuaas-fleet/known_hosts").read_text().splitlines())
    for name, node in cluster["nodes"].items():
        job = api.run("GET", f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}")
        assert job["status"] == "successful", job["explanation"]
        assert job["result"]["gpuaas_conn_check"][f"node-{node['id']}"]["failed_step"] is None
        shown = api.call("GET", f"/gpuaas/node/{node['id']}")
        assert shown["kubernetes_name"] == name  # its hostname
        assert shown["name"] == DISPLAY[name] and shown["inventory_name"] == f"node-{node['id']}"
    assert not [marker for marker in (*MARKERS, Path("/tmp/gpuaas-e2e-shell")) if marker.exists()]
    engine = create_engine(f"sqlite:///{service.data_dir / 'gpuaas.sqlite3'}")
    with engine.connect() as connection:
        pinned = dict(connection.execute(text("SELECT node_ip, ssh_host_key FROM nodes")).all())
    engine.dispose()
    assert pinned == {cluster["nodes"][n]["node_ip"]: known[cluster["nodes"][n]["node_ip"]] for n in cluster["nodes"]}


def pinned_host_keys(database: Path) -> dict[int, str]:
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        pinned = dict(connection.execute(text("SELECT id, ssh_host_key FROM nodes")).all())
    engine.dispose()
    return pinned


def job_output(data_dir: Path, job_id: int) -> str:
    """What a job's run printed, from its service's database."""
    engine = create_engine(f"sqlite:///{data_dir / 'gpuaas.sqlite3'}")
    with engine.connect() as connection:
        lines = connection.execute(text("SELECT stdout FROM job_events WHERE job_id = :id ORDER BY counter"),
                                   {"id": job_id}).scalars()
        output = "\n".join(line or "" for line in lines)
    engine.dispose()
    return output


def shown_key(data_dir: Path) -> str:
    """`gpuaas-api ssh-key show` of a data directory: the public key its jobs authenticate with."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GPUAAS_")}
    return subprocess.run([str(CLI), "ssh-key", "show"], env={**env, "GPUAAS_DATA_DIR": str(data_dir)},
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def test_1b_a_backup_restored_into_a_fresh_service_reaches_the_nodes_with_the_same_identity(
        service, cluster, tmp_path_factory):
    """docs/operations.md's backup and restore, SQLite: the database saved online with SQLite's backup
    API (never `cp` of a WAL database), the SSH identity (neither GPUAAS_SECRET_KEY nor
    GPUAAS_SSH_KEY_FILE: the data dir's ssh/ directory) copied, both put in a new data dir."""
    database = service.data_dir / "gpuaas.sqlite3"
    pinned = pinned_host_keys(database)
    assert sorted(pinned) == sorted(node["id"] for node in cluster["nodes"].values()) and all(pinned.values())
    backup = tmp_path_factory.mktemp("backup")
    with contextlib.closing(sqlite3.connect(database)) as source, \
            contextlib.closing(sqlite3.connect(backup / "gpuaas.sqlite3")) as copy:
        source.backup(copy)  # what `sqlite3 DB ".backup FILE"` does, while the service runs
    shutil.copytree(service.data_dir / "ssh", backup / "ssh")

    def restored(name: str, identity: bool) -> Service:
        # Short: ssh's ControlPath, under the data dir, is a socket path (108 bytes at most).
        data_dir = tmp_path_factory.mktemp(name) / "var"
        data_dir.mkdir()
        shutil.copyfile(backup / "gpuaas.sqlite3", data_dir / "gpuaas.sqlite3")
        if identity:
            shutil.copytree(backup / "ssh", data_dir / "ssh")
        fresh = Service(data_dir)
        fresh.start()
        return fresh

    node = cluster["nodes"]["node2"]
    host = f"node-{node['id']}"
    fresh = restored("restored", identity=True)
    try:
        assert fresh.api.call("GET", "/gpuaas/node/list") == service.api.call("GET", "/gpuaas/node/list")
        assert pinned_host_keys(fresh.data_dir / "gpuaas.sqlite3") == pinned  # kept, before any job ran
        job = fresh.api.run("GET", f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}")
    finally:
        fresh.stop()
    assert job["status"] == "successful", (job["explanation"], job_output(fresh.data_dir, job["id"]))
    assert job["result"]["gpuaas_conn_check"][host]["failed_step"] is None
    # The same identity, and the same pinned host keys, which its job checked strictly (a pinned key means
    # StrictHostKeyChecking=yes): nothing was pinned anew.
    assert shown_key(fresh.data_dir) == shown_key(service.data_dir)
    assert pinned_host_keys(fresh.data_dir / "gpuaas.sqlite3") == pinned == pinned_host_keys(database)

    # Without the identity the same database reaches nothing: the service makes a key of its own, which
    # no node accepts. ssh checked the node's pinned key first, and it matched.
    bare = restored("bare", identity=False)
    try:
        assert bare.api.call("GET", "/gpuaas/node/list") == service.api.call("GET", "/gpuaas/node/list")
        job = bare.api.run("GET", f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}")
    finally:
        bare.stop()
    logs = job_output(bare.data_dir, job["id"])
    assert job["status"] == "failed" and job["explanation"] == f"{host}: step ssh failed", job
    assert "Permission denied" in logs and "Host key verification failed" not in logs, logs
    assert shown_key(bare.data_dir) != shown_key(service.data_dir)


def test_2_init_enable_join(service, cluster):
    api, nodes = service.api, cluster["nodes"]
    # As an operator brings a rack in: every node's init at once. Inits arriving together share
    # one playbook run (jobs/queue.py batch_of), each node finalised from its own host's result.
    started = [api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={node['id']}")["job_id"] for node in nodes.values()]
    inits = [api.wait_job(job_id, timeout=600) for job_id in started]
    for node, job in zip(nodes.values(), inits):
        assert job["status"] == "successful", job["explanation"]
        assert job["node_id"] == node["id"]
        shown = api.call("GET", f"/gpuaas/node/{node['id']}")
        assert shown["status"] == "initialized"
        # Init gathered the node's facts (roles/node_facts). The fleet's nodes share this machine's
        # kernel, so MemTotal is this machine's; the CPU count is what the node may use, at least one.
        assert shown["total_memory_in_mb"] == MEM_TOTAL_MB and shown["cores"] >= 1, shown
    assert max(job["started_at"] for job in inits) < min(job["finished_at"] for job in inits), "side by side"
    # Who asked: each job records its actor, and the audit trail has each init request with the job it
    # started, from the service's own address (the test talks to it over loopback).
    assert {job["actor"] for job in inits} == {ADMIN["username"]}
    trail = api.call("GET", f"/api/audit?actor={ADMIN['username']}&per_page=500")["items"]
    asked = [event for event in trail if event["action"] == "GET operations.NodeInit"]
    assert sorted(event["job_id"] for event in asked) == sorted(started)
    assert {(event["status"], event["address"], event["object_type"]) for event in asked} == {(200, "127.0.0.1", "node")}

    enabled = api.call("POST", f"/gpuaas/enable?controller_node_id={nodes['node1']['id']}")
    enable_job = api.wait_job(enabled["job_id"])
    assert enable_job["status"] == "successful", enable_job["explanation"]
    cluster_state = api.call("GET", f"/gpuaas/{enabled['gpuaas_id']}")
    assert cluster_state["status"] == "GPUAAS_ACTIVE" and cluster_state["k8s_api_server_port"] == 6443

    guide_body = api.run("POST", "/gpuaas/node/join",
                         {"joinee_node_id": nodes["node2"]["id"], "region_id": cluster["region"]["id"]})
    client_body = api.run("POST", "/gpuaas/node/join",
                          {"gpuaas_id": enabled["gpuaas_id"], "gpuaas_node_id": nodes["node3"]["id"]})
    assert guide_body["status"] == client_body["status"] == "successful"
    for name in ("node2", "node3"):
        shown = api.call("GET", f"/gpuaas/node/{nodes[name]['id']}")
        assert shown["status"] == "healthy" and shown["k8s_join_state_status_code"] == 2
        calls = subprocess.run([*FLEET, "node-exec", name, "--", "cat", "/var/log/fake-k8s/calls.log"],
                               capture_output=True, text=True, check=True).stdout
        assert calls.count("kubeadm join 198.18.0.11:6443") == 1
        assert calls.count(f" --node-name {name}\n") == 1  # the Kubernetes name, not the display name


def test_3_scan_gpus_status_and_logs(service, cluster, running_fleet):
    api, node = service.api, cluster["nodes"]["node2"]
    scan = api.call("GET", f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}")
    api.wait_job(scan["job_id"])
    status = api.call("GET", f"/gpuaas/node/scan_gpus/status?scan_id={scan['scan_id']}")

    expected = [g["uuid"] for g in running_fleet["nodes"]["node2"]["hardware"]["gpus"]]
    assert status["status"] == "completed"
    assert [g["uuid"] for g in status["resources"]["gpus"]] == expected
    assert {g["gpu_model"] for g in status["resources"]["gpus"]} == {"NVIDIA A100-SXM4-40GB"}
    shown = api.call("GET", f"/gpuaas/node/{node['id']}")
    assert [g["uuid"] for g in shown["gpus"]] == expected
    assert {g["assignment_status"] for g in shown["gpus"]} == {"UNASSIGNED"}
    logs = api.call("GET", f"/gpuaas/node/{node['id']}/logs?page=1&per_page=10")
    assert logs["total"] > 10 and len(logs["items"]) == 10
    assert any(item["event"] == "playbook_on_stats" for item in
               api.call("GET", f"/gpuaas/node/{node['id']}/logs?page=1&per_page=500")["items"])


def node_file(node: str, path: str) -> str | None:
    done = subprocess.run([*FLEET, "node-exec", node, "--", "cat", path], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None


def node_sharing(node: str) -> dict:
    text = node_file(node, "/etc/gpuaas/sharing.yaml")
    return yaml.safe_load(text)["gpus"] if text else {}


def compute_mode(node: str, index: int) -> int:
    return int(node_file(node, f"/var/lib/fake-nvml/compute-mode-{index}") or 0)


def node_resources(resource: str) -> dict:
    """Each Kubernetes node's capacity and allocatable of ``resource``, through the real kubectl on the controller."""
    done = subprocess.run([*FLEET, "node-exec", "node1", "--", "kubectl", "--kubeconfig=/etc/kubernetes/admin.conf",
                           "get", "nodes", "-o", "json"], capture_output=True, text=True, check=True)
    return {item["metadata"]["name"]: (item["status"].get("capacity", {}).get(resource, "0"),
                                       item["status"].get("allocatable", {}).get(resource, "0"))
            for item in json.loads(done.stdout)["items"]}


def wait_for_resources(resource: str, expected: dict, timeout: float = 60) -> dict:
    """The nodes' (capacity, allocatable) of the resource once they are ``expected`` (the kubelet
    reports its devices at its next status update, every 10 s)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = node_resources(resource)
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(1)


def test_3b_pool_lifecycle_on_two_nodes(service, cluster, running_fleet):
    api, nodes = service.api, cluster["nodes"]
    api.wait_job(api.call("GET", f"/gpuaas/node/scan_gpus?gpuaas_node_id={nodes['node1']['id']}")["job_id"])
    uuids = {name: [g["uuid"] for g in running_fleet["nodes"][name]["hardware"]["gpus"]] for name in ("node1", "node2")}
    gpuaas_id = api.call("GET", f"/gpuaas/node/{nodes['node1']['id']}")["gpuaas_id"]

    created = api.call("POST", "/gpuaas/pool/create", {"gpuaas_id": gpuaas_id, "pool": {
        "pool_name": "e2e", "attach_gpu_ids": [uuids["node1"][0], uuids["node1"][1], uuids["node2"][0]],
        "sharing_ratio": 4, "time_quantum_in_sec": 45, "security_level": "high"}}, expect=201)
    assert created["status"] == "DEPLOYMENT_SCHEDULED"
    assert api.wait_job(created["job_id"])["status"] == "successful"
    pool = api.call("GET", f"/gpuaas/pool/{created['id']}")
    assert pool["status"] == "ACTIVE" and len(pool["gpus"]) == 3 * 4
    assert {slot["assignment_status"] for slot in pool["gpus"]} == {"ASSIGNED"}
    assert sorted(node_sharing("node1")) == sorted(uuids["node1"][:2]) and list(node_sharing("node2")) == [uuids["node2"][0]]
    assert node_sharing("node1")[uuids["node1"][0]]["time_quantum_in_sec"] == 45
    assert [compute_mode("node1", i) for i in range(3)] == [3, 3, 0]  # high: EXCLUSIVE_PROCESS on its GPUs only
    # The nodes' agents advertise the pool as the resource its reply names, GPUs x ratio devices
    # on exactly its nodes (node3 is in the cluster and holds none of its GPUs).
    resource = pool["resource_name"]
    assert resource == f"gpuaas.hosted.ai/pool-{pool['id']}"
    assert wait_for_resources(resource, {"node1": ("8", "8"), "node2": ("4", "4"), "node3": ("0", "0")}) == \
        {"node1": ("8", "8"), "node2": ("4", "4"), "node3": ("0", "0")}

    # The collector samples the pool's GPUs through NVML on their nodes (every 3 s here).
    metrics = wait_for_samples(api, pool["id"], 3)
    readings = {gpu["uuid"]: gpu for gpu in metrics["usage"]["gpus"]}
    assert set(readings) == {uuids["node1"][0], uuids["node1"][1], uuids["node2"][0]}
    for gpu in readings.values():  # the fake NVML's ranges (tests/fleet/fake_nvml)
        assert 20 <= gpu["utilization_gpu_percent"] < 90 and 35 <= gpu["temperature_c"] < 75
        assert 60 <= gpu["power_w"] < 300
    assert metrics["series"][0]["samples"] >= 3 and metrics["slots_total"] == 12
    scrape = api.call_text("GET", "/metrics")
    node2 = cluster["nodes"]["node2"]["id"]
    assert (f'gpuaas_gpu_utilization_percent{{node="node-{node2}",node_name="{DISPLAY["node2"]}",pool_id="{pool["id"]}",'
            f'uuid="{uuids["node2"][0]}"}}') in scrape

    # A pool GPU that NVML stops reporting is UNAVAILABLE at the next collection, and ASSIGNED once it is back.
    subprocess.run([*FLEET, "lose-gpu", "node2", "0"], check=True, capture_output=True)
    assert wait_for_slot_status(api, pool["id"], uuids["node2"][0], "UNAVAILABLE")
    subprocess.run([*FLEET, "restore-gpu", "node2", "0"], check=True, capture_output=True)
    assert wait_for_slot_status(api, pool["id"], uuids["node2"][0], "ASSIGNED")

    added = api.call("POST", f"/gpuaas/pool/{pool['id']}/add_gpus", {"gpu_uuids": [uuids["node2"][1]]})
    assert api.wait_job(added["job_id"])["status"] == "successful"
    assert sorted(node_sharing("node2")) == sorted(uuids["node2"][:2])
    assert api.call("GET", f"/gpuaas/pool/{pool['id']}")["status"] == "ACTIVE"
    assert wait_for_resources(resource, {"node1": ("8", "8"), "node2": ("8", "8"), "node3": ("0", "0")})["node2"] == ("8", "8")

    removed = api.call("GET", f"/gpuaas/pool/{pool['id']}/remove_gpus?gpu_uuids={uuids['node1'][1]}")
    assert api.wait_job(removed["job_id"])["status"] == "successful"
    assert list(node_sharing("node1")) == [uuids["node1"][0]] and compute_mode("node1", 1) == 0
    assert wait_for_resources(resource, {"node1": ("4", "4"), "node2": ("8", "8"), "node3": ("0", "0")})["node1"] == ("4", "4")

    deleted = api.call("DELETE", f"/gpuaas/pool/{pool['id']}")
    assert api.wait_job(deleted["job_id"])["status"] == "successful"
    assert api.call("GET", f"/gpuaas/pool/{pool['id']}", expect=None)[0] == 404
    assert node_sharing("node1") == node_sharing("node2") == {}
    assert compute_mode("node1", 0) == 0
    assert wait_for_resources(resource, {"node1": ("0", "0"), "node2": ("0", "0"), "node3": ("0", "0")}) == \
        {"node1": ("0", "0"), "node2": ("0", "0"), "node3": ("0", "0")}
    available = api.call("GET", f"/gpuaas/{gpuaas_id}/pool/available_gpus")["items"]
    assert set(uuids["node1"][:2] + uuids["node2"][:2]) <= {gpu["uuid"] for gpu in available}


def wait_for_samples(api, pool_id: int, gpus: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        metrics = api.call("GET", f"/gpuaas/pool/{pool_id}/metrics?time_grouping=1m")
        if metrics["usage"]["sampled_gpus"] == gpus and metrics["series"]:
            return metrics
        assert time.monotonic() < deadline, metrics
        time.sleep(0.5)


def wait_for_slot_status(api, pool_id: int, uuid: str, status: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        slots = api.call("GET", f"/gpuaas/pool/{pool_id}")["gpus"]
        if {slot["assignment_status"] for slot in slots if slot["uuid"] == uuid} == {status}:
            return True
        time.sleep(0.5)
    return False


def nodes_configuration(nodes=("node1", "node2")) -> dict:
    """Everything a pool change writes on the nodes: their /etc/gpuaas and the fake NVML's compute modes."""
    found = {}
    for node in nodes:
        listing = subprocess.run([*FLEET, "node-exec", node, "--", "sh", "-c",
                                  "find /etc/gpuaas /var/lib/fake-nvml -type f 2>/dev/null | sort | xargs -r md5sum"],
                                 capture_output=True, text=True, check=True)
        found[node] = listing.stdout
    return found


def test_3c_bad_pool_input_changes_neither_the_database_nor_the_nodes(service, cluster, running_fleet):
    api, nodes = service.api, cluster["nodes"]
    uuids = {name: [g["uuid"] for g in running_fleet["nodes"][name]["hardware"]["gpus"]] for name in ("node1", "node2")}
    gpuaas_id = api.call("GET", f"/gpuaas/node/{nodes['node1']['id']}")["gpuaas_id"]
    holder = api.call("POST", "/gpuaas/pool/create", {"gpuaas_id": gpuaas_id, "pool": {
        "pool_name": "holder", "attach_gpu_ids": [uuids["node2"][0]], "sharing_ratio": 2,
        "security_level": "medium"}}, expect=201)
    assert api.wait_job(holder["job_id"])["status"] == "successful"

    def database():
        return (api.call("GET", f"/gpuaas/{gpuaas_id}/pool/list"), api.call("GET", f"/gpuaas/{gpuaas_id}/pool/all_gpus"))
    before = (database(), nodes_configuration())
    good = {"pool_name": "bad", "attach_gpu_ids": [uuids["node1"][0]], "sharing_ratio": 2,
            "time_quantum_in_sec": 30, "security_level": "low"}
    bad_pools = [({"sharing_ratio": 0}, 422, "sharing_ratio"), ({"sharing_ratio": 11}, 422, "sharing_ratio"),
                 ({"sharing_ratio": 2.5}, 422, "sharing_ratio"), ({"time_quantum_in_sec": 9}, 422, "time_quantum_in_sec"),
                 ({"time_quantum_in_sec": 121}, 422, "time_quantum_in_sec"),
                 ({"security_level": "max"}, 422, "security_level"), ({"pool_name": None}, 422, "pool_name"),
                 ({"attach_gpu_ids": ["GPU-00000000-dead-beef-0000-000000000000"]}, 422, "attach_gpu_ids"),
                 ({"attach_gpu_ids": [uuids["node2"][0]]}, 409, "attach_gpu_ids")]
    for change, status, field in bad_pools:
        pool = {key: value for key, value in {**good, **change}.items() if value is not None}
        code, body = api.call("POST", "/gpuaas/pool/create", {"gpuaas_id": gpuaas_id, "pool": pool}, expect=None)
        named = body["errors"][0]["field"] if body.get("errors") else None
        assert code == status and named in (field, f"pool.{field}"), (change, body)
    code, body = api.call("POST", f"/gpuaas/pool/{holder['id']}/remove_gpus", {"gpu_uuids": [uuids["node1"][0]]},
                          expect=None)
    assert code == 409 and body["errors"][0]["field"] == "gpu_uuids"

    assert (database(), nodes_configuration()) == before

    deleted = api.call("DELETE", f"/gpuaas/pool/{holder['id']}")
    assert api.wait_job(deleted["job_id"])["status"] == "successful"


def test_3d_the_pool_module_declares_a_pool_on_the_fleet(service, cluster, running_fleet, tmp_path):
    api, nodes = service.api, cluster["nodes"]
    node2 = [g["uuid"] for g in running_fleet["nodes"]["node2"]["hardware"]["gpus"]]
    gpuaas_id = api.call("GET", f"/gpuaas/node/{nodes['node1']['id']}")["gpuaas_id"]
    declared = {"api_url": api.base, "api_token": api.token, "gpuaas_id": gpuaas_id, "pool_name": "declared",
                "sharing_ratio": 3, "time_quantum_in_sec": 60, "security_level": "high", "gpus": node2}

    first, second = run_pool_module(tmp_path, declared, declared)

    assert first["changed"] and first["pool"]["status"] == "ACTIVE" and not second["changed"]
    assert sorted(node_sharing("node2")) == sorted(node2)
    assert {entry["sharing_ratio"] for entry in node_sharing("node2").values()} == {3}
    assert [compute_mode("node2", index) for index in range(len(node2))] == [3] * len(node2)

    [removed] = run_pool_module(tmp_path, {**declared, "state": "absent"})

    assert removed["changed"]
    assert node_sharing("node2") == {}
    assert [compute_mode("node2", index) for index in range(len(node2))] == [0] * len(node2)


def run_pool_module(tmp_path: Path, *calls: dict) -> list[dict]:
    """One play on localhost calling hostedai.gpuaas.pool once per entry; each call's registered result."""
    tasks = [{"name": f"call {index}", "hostedai.gpuaas.pool": args, "register": f"call_{index}"}
             for index, args in enumerate(calls)]
    tasks.append({"name": "Keep the results", "ansible.builtin.copy": {
        "content": "{{ [%s] | to_json }}" % ", ".join(f"call_{i}" for i in range(len(calls))),
        "dest": str(tmp_path / "results.json")}})
    playbook = tmp_path / "pools.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    run_playbook(playbook, tmp_path)
    return json.loads((tmp_path / "results.json").read_text())


def run_playbook(playbook: Path, tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(REPO / ".build/collections"),
           "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
           "ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote-tmp"),  # -c local: the "remote" is this machine
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run([str(bin_dir / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def reboots(running_fleet: dict, node: str) -> int:
    """How many times the node's systemd rebooted it (systemd-nspawn's exit status 133, which the
    fleet's supervisor logs before booting the node again)."""
    supervisor = Path(running_fleet["nodes"][node]["dir"]) / "supervisor.log"
    return supervisor.read_text().count("node ended (rc 133)")


def test_4_reboot_a_worker(service, cluster, running_fleet):
    boot, reboots_before = node_file("node3", "/run/fleet-boot-id"), reboots(running_fleet, "node3")
    job = service.api.run("POST", f"/gpuaas/node/reboot?node_id={cluster['nodes']['node3']['id']}")

    assert_rebooted(job, running_fleet, "node3")
    assert reboots(running_fleet, "node3") == reboots_before + 1
    assert node_file("node3", "/run/fleet-boot-id") != boot


def test_5_two_concurrent_operations_on_one_node(service, cluster, running_fleet):
    """A reboot while another runs waits behind it; the same request again while that one waits is
    that job (two identical requests sent at the very same instant may be either: which depends on
    whether a worker took the first before the second arrived, so the test orders them)."""
    api, node_id = service.api, cluster["nodes"]["node3"]["id"]
    reboot = f"/gpuaas/node/reboot?node_id={node_id}"
    reboots_before = reboots(running_fleet, "node3")
    first = api.call("POST", reboot)
    assert wait_for(lambda: api.call("GET", f"/api/jobs/{first['job_id']}")["status"] == "running", timeout=30,
                    what="the first reboot to run")
    queued = api.call("POST", reboot)
    assert queued["message"] == f"reboot of node {node_id} queued behind job {first['job_id']} (job {queued['job_id']})"
    again = api.call("POST", reboot)
    assert again == {"success": True, "job_id": queued["job_id"],
                     "message": f"reboot of node {node_id} already pending as job {queued['job_id']} (the same request)"}
    # Canceled while it waits, the queued reboot never runs.
    assert api.call("POST", f"/api/jobs/{queued['job_id']}/cancel", expect=202)["cancel_requested"] is True
    assert_rebooted(api.wait_job(first["job_id"]), running_fleet, "node3")
    canceled = api.wait_job(queued["job_id"])
    assert (canceled["status"], canceled["explanation"], canceled["started_at"]) == (
        "canceled", "canceled before it ran", None)
    assert reboots(running_fleet, "node3") == reboots_before + 1  # once: the queued reboot never ran


def assert_rebooted(job: dict, running_fleet: dict, node: str) -> None:
    """The reboot job succeeded; if not, fail with what the node went through (its boot and sshd logs)."""
    if job["status"] == "successful":
        return
    supervisor = Path(running_fleet["nodes"][node]["dir"]) / "supervisor.log"
    logs = subprocess.run([*FLEET, "node-exec", node, "--", "journalctl", "--no-pager", "-n", "40"],
                          capture_output=True, text=True, check=False)
    pytest.fail(f"{job['status']}: {job['explanation']}\nsupervisor.log:\n{supervisor.read_text()[-2000:]}\n"
                f"{logs.stdout}{logs.stderr}")


def test_6_leave_deinit_delete(service, cluster, running_fleet):
    api, node = service.api, cluster["nodes"]["node3"]
    gpuaas_id = api.call("GET", f"/gpuaas/node/{node['id']}")["gpuaas_id"]
    assert api.run("POST", f"/gpuaas/node/leave?node_id={node['id']}")["status"] == "successful"
    assert api.call("GET", f"/gpuaas/node/{node['id']}")["status"] == "initialized"

    # A GPU of a node outside the cluster (node3 has left it) is refused, and nothing changes anywhere.
    assert api.run("GET", f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}")["status"] == "successful"
    outsider = running_fleet["nodes"]["node3"]["hardware"]["gpus"][0]["uuid"]
    every_node = ("node1", "node2", "node3")
    before = (api.call("GET", f"/gpuaas/{gpuaas_id}/pool/list"), api.call("GET", f"/gpuaas/{gpuaas_id}/pool/all_gpus"),
              nodes_configuration(every_node))
    code, body = api.call("POST", "/gpuaas/pool/create", {"gpuaas_id": gpuaas_id, "pool": {
        "pool_name": "outsider", "attach_gpu_ids": [outsider], "sharing_ratio": 2, "security_level": "low"}},
        expect=None)
    assert code == 409 and body["errors"][0]["field"] == "pool.attach_gpu_ids", body
    assert (api.call("GET", f"/gpuaas/{gpuaas_id}/pool/list"), api.call("GET", f"/gpuaas/{gpuaas_id}/pool/all_gpus"),
            nodes_configuration(every_node)) == before
    assert api.run("GET", f"/gpuaas/node/deinit?gpuaas_node_id={node['id']}")["status"] == "successful"
    assert api.call("GET", f"/gpuaas/node/{node['id']}")["status"] == "uninitialized"
    leftovers = subprocess.run([*FLEET, "node-exec", "node3", "--", "ls", "/etc/gpuaas"], capture_output=True,
                               check=False)
    assert leftovers.returncode != 0

    assert api.call("DELETE", f"/gpuaas/node/{node['id']}/delete")["success"] is True
    assert api.call("GET", f"/gpuaas/node/{node['id']}", expect=None)[0] == 404


def node_runs(node: str, command: list[str]) -> bool:
    return subprocess.run([*FLEET, "node-exec", node, "--", *command], capture_output=True, check=False).returncode == 0


def wait_out_a_requested_power_off(running_fleet: dict, node: str, reboots_before: int, boot_before: str | None,
                                   timeout: float = 90) -> None:
    """A canceled reboot may still take the node down: a command its SSH session had sent goes on
    running on the node after the caller is killed (a real `shutdown -r` is not undone by killing
    its caller either).  Wait until the node is quiet for a second: no SSH session, no shutdown
    command.  Then, if the node rebooted or its systemd is going down, wait until it is back and
    its sshd answers."""
    deadline = time.monotonic() + timeout
    quiet_reads = 0
    while quiet_reads < 3 and time.monotonic() < deadline:
        busy = node_runs(node, ["pgrep", "-f", "sshd: root@|shutdown -r"])
        quiet_reads = 0 if busy else quiet_reads + 1
        time.sleep(0.5)
    stopping = node_runs(node, ["sh", "-c", "[ \"$(systemctl is-system-running)\" = stopping ]"])
    if reboots(running_fleet, node) == reboots_before and not stopping:
        return
    while time.monotonic() < deadline:
        boot = node_file(node, "/run/fleet-boot-id")
        if boot is not None and boot != boot_before and node_runs(
                node, ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 22), 1)"]):
            return
        time.sleep(0.5)
    raise AssertionError(f"{node} asked to power off but not back within {timeout} s")


def test_7_cancel_ends_the_whole_job(service, cluster, running_fleet):
    api, node_id = service.api, cluster["nodes"]["node2"]["id"]
    reboots_before, boot = reboots(running_fleet, "node2"), node_file("node2", "/run/fleet-boot-id")
    job_id = api.call("POST", f"/gpuaas/node/reboot?node_id={node_id}")["job_id"]
    deadline = time.monotonic() + 30
    while api.call("GET", f"/api/jobs/{job_id}")["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # let ansible-playbook and its workers start

    assert api.call("POST", f"/api/jobs/{job_id}/cancel", expect=202)["cancel_requested"] is True
    job = api.wait_job(job_id, timeout=60)

    assert job["status"] == "canceled" and job["explanation"] == "canceled on request"
    leftover = subprocess.run(["pgrep", "-a", "-f", f"job-{job_id}-"], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == ""
    assert api.call("POST", f"/api/jobs/{job_id}/cancel", expect=None)[0] == 409
    # the node is free again (a reboot does not move its status)
    assert api.call("GET", f"/gpuaas/node/{node_id}")["status"] == "healthy"
    wait_out_a_requested_power_off(running_fleet, "node2", reboots_before, boot)
    assert_rebooted(api.wait_job(api.call("POST", f"/gpuaas/node/reboot?node_id={node_id}")["job_id"]),
                    running_fleet, "node2")


def test_8_no_secret_reaches_logs_or_disk(service, cluster):
    data_dir = service.data_dir
    private_key = (data_dir / "ssh" / "id_ed25519").read_text()
    key_body = "".join(line for line in private_key.splitlines() if "PRIVATE KEY" not in line)
    engine = create_engine(f"sqlite:///{data_dir / 'gpuaas.sqlite3'}")
    with engine.connect() as connection:
        logged = "\n".join(f"{stdout}{data}" for stdout, data in
                           connection.execute(text("SELECT stdout, data FROM job_events")).all())
        results = "\n".join(str(row[0]) for row in connection.execute(text("SELECT result FROM jobs")).all())
    engine.dispose()

    assert logged and results
    for secret in (key_body[:40], service.api.token, ADMIN["password"]):
        assert secret not in logged and secret not in results
    assert "--token" not in logged  # the kubeadm join token (no_log in the role)
    assert list((data_dir / "jobs").iterdir()) == []  # every private data dir is gone with its job
