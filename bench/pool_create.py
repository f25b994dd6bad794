#!/usr/bin/env python3
"""Benchmark: create a pool of 16 GPUs on 4 fleet nodes, time to ACTIVE, against ansible-playbook.

A 7-node fleet; node1 (controller, 8 GPUs), node2 (4), node6 (8) and node7 (4) are
initialised, enabled and joined through the API and scanned. Each repeat:
(a) `POST /gpuaas/pool/create` with 4 GPUs of each node, timed until the pool is ACTIVE
    (the service runs playbooks/pool_apply.yml on the 4 nodes, relabelling them through
    the controller), then deleted;
(b) `ansible-playbook playbooks/pool_apply.yml` with exactly the variables the service's
    job had, from cold SSH (a fresh ControlPath dir, as every API job has), then the same
    playbook taking the GPUs out again.
Median of --repeats. Run as root with no fleet up:
`.venv/bin/python bench/pool_create.py` (it runs itself inside the hub namespace).
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleet_bench import BIN, FLEET, REPO, cli_env, fresh_fleet, rerun_in_hub  # bench/ is sys.path[0] when run

sys.path.insert(0, str(REPO / "tests" / "support"))
POOL_NODES = ("node1", "node2", "node6", "node7")
GPUS_PER_NODE = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    status = rerun_in_hub(__file__, sys.argv[1:])
    if status is not None:
        return status
    from fleet_service import Service, install_controller_key  # the e2e harness: a real `serve` process

    state = fresh_fleet(7)
    os.environ["GPUAAS_METRICS_INTERVAL_SECONDS"] = "0"  # nothing else runs on the nodes meanwhile
    service = Service(Path(tempfile.mkdtemp()) / "var")
    service.start()
    api = service.api
    env = cli_env()
    try:
        region = api.call("POST", "/regions", {"region_name": "bench"}, expect=201)
        ids = {}
        for name in POOL_NODES:
            body = {"name": name, "region_id": region["id"], "username": "root",
                    "node_ip": state["nodes"][name]["address"], "is_worker_node": name != "node1",
                    "is_controller_node": name == "node1"}
            ids[name] = api.call("POST", "/gpuaas/node/add", body, expect=201)["id"]
            install_controller_key(api, ids[name], name)
        for name in POOL_NODES:
            assert api.run("GET", f"/gpuaas/node/init?gpuaas_node_id={ids[name]}", timeout=600)["status"] == "successful"
        assert api.run("POST", f"/gpuaas/enable?controller_node_id={ids['node1']}")["status"] == "successful"
        gpuaas_id = api.call("GET", f"/gpuaas/node/{ids['node1']}")["gpuaas_id"]
        for name in POOL_NODES[1:]:
            joined = api.run("POST", "/gpuaas/node/join", {"gpuaas_id": gpuaas_id, "gpuaas_node_id": ids[name]})
            assert joined["status"] == "successful", joined
        for name in POOL_NODES:
            assert api.run("GET", f"/gpuaas/node/scan_gpus?gpuaas_node_id={ids[name]}")["status"] == "successful"
        gpus = [gpu["uuid"] for name in POOL_NODES
                for gpu in state["nodes"][name]["hardware"]["gpus"][:GPUS_PER_NODE]]
        assert len(gpus) == 16

        def through_api(repeat: int) -> tuple[float, dict]:
            start = time.perf_counter()
            created = api.call("POST", "/gpuaas/pool/create", {"gpuaas_id": gpuaas_id, "pool": {
                "pool_name": f"bench-{repeat}", "attach_gpu_ids": gpus, "sharing_ratio": 4,
                "time_quantum_in_sec": 30, "security_level": "high"}}, expect=201)
            while (pool := api.call("GET", f"/gpuaas/pool/{created['id']}"))["status"] not in (
                    "ACTIVE", "ERROR_WHILE_DEPLOYING"):
                time.sleep(0.02)
            elapsed = time.perf_counter() - start
            assert pool["status"] == "ACTIVE", pool
            with sqlite3.connect(service.data_dir / "gpuaas.sqlite3") as db:
                extravars = json.loads(db.execute("SELECT extravars FROM jobs WHERE id = ?",
                                                  (created["job_id"],)).fetchone()[0])
            assert api.wait_job(api.call("DELETE", f"/gpuaas/pool/{created['id']}")["job_id"])["status"] == "successful"
            # The service names hosts node-<id>; the fleet's inventory, node1, node2, ...
            fleet_name = {f"node-{node_id}": name for name, node_id in ids.items()}
            return elapsed, {key: ({fleet_name.get(host, host): value for host, value in value.items()}
                                   if key.endswith("_by_host") else fleet_name.get(value, value))
                             for key, value in extravars["vars"].items()}

        def cli(variables: dict) -> float:
            control_dir = tempfile.mkdtemp(prefix="cp-")
            var_file = Path(control_dir) / "vars.json"
            var_file.write_text(json.dumps({**variables, "gpuaas_targets": ",".join(POOL_NODES)}))
            start = time.perf_counter()
            subprocess.run([str(BIN / "ansible-playbook"), "-i", "/var/lib/hostedai-gpuaas-fleet/inventory.yml",
                            "-e", f"@{var_file}", str(REPO / "playbooks/pool_apply.yml")],
                           env=dict(env, ANSIBLE_SSH_CONTROL_PATH_DIR=control_dir), check=True, capture_output=True)
            elapsed = time.perf_counter() - start
            subprocess.run(["pkill", "-f", control_dir], check=False)
            return elapsed

        api_times, cli_times = [], []
        for repeat in range(args.repeats):
            elapsed, variables = through_api(repeat)
            api_times.append(elapsed)
            cli_times.append(cli(variables))
            absent = {**variables, "gpu_sharing_by_host": {}, "gpu_sharing_absent_by_host": {
                host: [{"uuid": gpu["uuid"]} for gpu in entries]
                for host, entries in variables["gpu_sharing_by_host"].items()}}
            cli(absent)
    finally:
        print(f"service log: {service.data_dir.parent / 'serve.log'}")
        service.stop()
        subprocess.run([*FLEET, "down", "--keep-hub"], capture_output=True, check=False)

    api_median, cli_median = statistics.median(api_times), statistics.median(cli_times)
    print(f"\npool of 16 GPUs on 4 nodes (ratio 4, high), median of {args.repeats} ({os.cpu_count()} CPUs)\n")
    print("| path | seconds | runs |")
    print("| --- | ---: | --- |")
    print(f"| API: POST create -> ACTIVE | {api_median:.2f} | {', '.join(f'{t:.2f}' for t in api_times)} |")
    print(f"| ansible-playbook pool_apply.yml, cold SSH | {cli_median:.2f} | {', '.join(f'{t:.2f}' for t in cli_times)} |")
    print(f"| API / CLI | {api_median / cli_median:.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
