#!/usr/bin/env python3
"""Benchmark: `init` of 12 fleet nodes through the API against one ansible-playbook run (issue #13, section 2).

Package management and the NVIDIA stack are off on both sides (the comparison the issue's
figure made: 28.0 s through the API against 19.7 s from the CLI before node operations batched).
Each measurement gets a fresh fleet of --nodes nodes (straight from the image), in turn:

- CLI: one `ansible-playbook node_init.yml` over every node, as an operator runs it, with the
  settings the service's runs use (pipelining, forks 50);
- API: the nodes added to a `gpuaas-api serve` (as shipped: 2 processes x 2 job workers,
  the default batching window), one `test_conn` per node first (it pins the host keys, as a
  client's first contact does; not timed), then one `GET /gpuaas/node/init` per node, timed
  from the first request until every job has finished.

Reported: wall time of each, the ratio, and how many playbook runs the API's init jobs took
(from the service's log, which names each run's jobs). Target: API <= 1.15 x CLI. Run as
root with no fleet up: `.venv/bin/python bench/node_batch.py` (it runs itself in the hub).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleet_bench import BIN, FLEET, REPO, cli_env, fresh_fleet, rerun_in_hub  # bench/ is sys.path[0] when run

sys.path.insert(0, str(REPO / "tests" / "support"))
INVENTORY = "/var/lib/hostedai-gpuaas-fleet/inventory.yml"
PACKAGES_OFF = {"node_init_manage_packages": False, "node_init_nvidia_install": False}


def through_cli(nodes: int) -> float:
    fresh_fleet(nodes)
    start = time.perf_counter()
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", INVENTORY, "-e", json.dumps(PACKAGES_OFF),
                           str(REPO / "playbooks" / "node_init.yml")],
                          env=dict(cli_env(), ANSIBLE_SSH_CONTROL_PATH_DIR=tempfile.mkdtemp(prefix="cp-")),
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"node_init from the CLI failed:\n{done.stdout[-3000:]}")
    return elapsed


def through_api(nodes: int) -> tuple[float, int]:
    from fleet_service import Service, fleet_vars, install_controller_key  # the e2e harness: a real `serve`

    state = fresh_fleet(nodes)
    service = Service(Path(tempfile.mkdtemp()) / "var", env={
        "GPUAAS_ANSIBLE_EXTRA_VARS": json.dumps({**fleet_vars(), **PACKAGES_OFF}),
        "GPUAAS_METRICS_INTERVAL_SECONDS": "60"})  # production's, not the e2e harness's 3 s
    service.start()
    api = service.api
    try:
        region = api.call("POST", "/regions", {"region_name": "bench"}, expect=201)
        ids = []
        for name in sorted(state["nodes"], key=lambda n: int(n[4:])):
            node = api.call("POST", "/gpuaas/node/add", {
                "name": name, "region_id": region["id"], "username": "root",
                "node_ip": state["nodes"][name]["address"], "is_worker_node": True}, expect=201)
            install_controller_key(api, node["id"], name)
            ids.append(node["id"])
        for job in [api.call("GET", f"/gpuaas/node/test_conn?gpuaas_node_id={i}")["job_id"] for i in ids]:
            assert api.wait_job(job)["status"] == "successful"
        start = time.perf_counter()
        jobs = [api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={i}")["job_id"] for i in ids]
        results = [api.wait_job(job, 600) for job in jobs]
        elapsed = time.perf_counter() - start
        assert all(r["status"] == "successful" for r in results), [r["explanation"] for r in results]
        return elapsed, runs_of(service, "node_init")
    finally:
        print(f"service log: {service.log_path}", flush=True)
        service.stop()


def runs_of(service, operation: str) -> int:
    """How many playbook runs the service started for ``operation`` (the worker logs each one:
    "running job(s) [ids]: <playbook> on <nodes>")."""
    return sum(1 for line in service.log_path.read_text().splitlines()
               if "running job(s)" in line and f": {operation} on " in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    status = rerun_in_hub(__file__, sys.argv[1:])
    if status is not None:
        return status
    cli_times, api_times, api_runs = [], [], []
    try:
        for _repeat in range(args.repeats):  # alternating, each on a fresh fleet
            cli_times.append(through_cli(args.nodes))
            print(f"CLI {cli_times[-1]:.2f} s", flush=True)
            elapsed, runs = through_api(args.nodes)
            api_times.append(elapsed)
            api_runs.append(runs)
            print(f"API {elapsed:.2f} s ({runs} playbook run(s))", flush=True)
    finally:
        subprocess.run([*FLEET, "down", "--keep-hub"], capture_output=True, check=False)
    cli, api = statistics.median(cli_times), statistics.median(api_times)
    print(f"\ninit of {args.nodes} fresh nodes, packages off, median of {args.repeats} ({os.cpu_count()} CPUs)\n")
    print("| ansible-playbook (s) | API (s) | API / CLI | playbook runs for the API's jobs |")
    print("| ---: | ---: | ---: | ---: |")
    print(f"| {cli:.2f} | {api:.2f} | {api / cli:.2f} | {', '.join(map(str, api_runs))} |")
    print(f"all runs: CLI {[round(t, 2) for t in cli_times]}, API {[round(t, 2) for t in api_times]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
