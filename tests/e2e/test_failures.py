"""Failure paths on the fleet: a node that is down, and the service killed in the middle of a job."""
from __future__ import annotations

import subprocess
import time

import pytest

from conftest import FLEET, install_controller_key


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
    assert job["explanation"] == "node2: step ssh failed"
    assert elapsed < 30
    assert init["status"] == "failed" and init["explanation"].startswith("node2: task ")
    assert "unreachable" in init["explanation"] and "Connection refused" in init["explanation"]
    assert api.call("GET", f"/gpuaas/node/{nodes['node2']['id']}")["status"] == "error"
    # back up: the retry succeeds
    assert api.run("GET", f"/gpuaas/node/init?gpuaas_node_id={nodes['node2']['id']}")["status"] == "successful"


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
    assert api.run("GET", f"/gpuaas/node/init?gpuaas_node_id={node_id}")["status"] == "successful"
