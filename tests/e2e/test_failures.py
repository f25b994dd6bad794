"""Failure paths on the fleet: a node that is down, and the service killed in the middle of a job."""
from __future__ import annotations

import subprocess
import time

import pytest

from fleet_service import FLEET, install_controller_key


@pytest.fixture(scope="module")
def nodes(service, running_fleet):
    api = service.api
    region = api.call("POST", "/regions", {"region_name": "failures"}, expect=201)
    out = {}
    for name in ("node1", "node2"):
        out[name] = api.call("POST", "/gpuaas/node/add", {
            "name": name, "region_id": region["id"], "node_ip": running_fleet["nodes"][name]["address"],
            "username": "root", "is_worker_node": True}, expect=201)
        install_controller_key(api, out[name]["id"], name)
    return out


def test_a_node_that_is_down_fails_fast_and_says_which_step(service, nodes):
    api = service.api
    subprocess.run([*FLEET, "sshd", "node2", "stop"], check=True, capture_output=True)
    try:
        started = time.monotonic()
        job = api.run("GET", f"/gpuaas/node/test_conn?gpuaas_node_id={nodes['node2']['id']}")
        elapsed = time.monotonic() - started
        init = api.run("GET", f"/gpuaas/node/init?gpuaas_node_id={nodes['node2']['id']}")
    finally:
        subprocess.run([*FLEET, "sshd", "node2", "start"], check=True, capture_output=True)

    assert job["status"] == "failed"
    host = f"node-{nodes['node2']['id']}"  # the inventory name, from the id
    assert job["explanation"] == f"{host}: step ssh failed"
    assert elapsed < 30
    assert init["status"] == "failed" and init["explanation"].startswith(f"{host}: task ")
    assert "unreachable" in init["explanation"] and "Connection refused" in init["explanation"]
    assert api.call("GET", f"/gpuaas/node/{nodes['node2']['id']}")["status"] == "error"


def test_service_killed_mid_job_is_reconciled_on_restart(service, nodes):
    api = service.api
    node_id = nodes["node1"]["id"]
    job_id = api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={node_id}")["job_id"]
    deadline = time.monotonic() + 30
    while api.call("GET", f"/api/jobs/{job_id}")["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)

    service.kill()
    service.start()

    job = api.call("GET", f"/api/jobs/{job_id}")
    assert job["status"] == "error"
    assert "stopped before it finished" in job["explanation"]
    node = api.call("GET", f"/gpuaas/node/{node_id}")
    assert node["status"] == "error"  # not left "initializing"
    leftover = subprocess.run(["pgrep", "-f", f"job-{job_id}-"], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == ""


def test_both_failed_nodes_recover_with_a_retry_side_by_side(service, nodes):
    """What an operator does after either failure: run the init again.  Both retries run at once
    (the service has four job threads), as they would after a rack's outage; each is a whole
    first init, packages and NVIDIA driver included."""
    api = service.api
    for name in ("node1", "node2"):
        assert api.call("GET", f"/gpuaas/node/{nodes[name]['id']}")["status"] == "error"
    job_ids = {name: api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={nodes[name]['id']}")["job_id"]
               for name in ("node1", "node2")}
    jobs = {name: api.wait_job(job_id, timeout=300) for name, job_id in job_ids.items()}
    assert {name: job["status"] for name, job in jobs.items()} == {"node1": "successful", "node2": "successful"}
    for name in ("node1", "node2"):
        assert api.call("GET", f"/gpuaas/node/{nodes[name]['id']}")["status"] == "initialized"
    assert max(job["started_at"] for job in jobs.values()) < min(job["finished_at"] for job in jobs.values()), \
        "side by side"
