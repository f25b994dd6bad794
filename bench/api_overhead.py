#!/usr/bin/env python3
"""Benchmark: node operations through the API against the same playbook with ansible-playbook.

On 1 and 10 fleet nodes, `test_conn` and `scan_gpus` are launched (a) with
ansible-playbook on the fleet's inventory and (b) through `gpuaas-api serve`, one
request per node as clients do, timed from the first request until every job has
finished. Both run in the same fleet, alternating, median of --repeats.

Both start from cold SSH: every API job has its own ControlPath dir and ends its
multiplexing masters with it, so each CLI run gets a fresh ControlPath dir too.
The CLI reusing the masters of its previous run (ControlPersist, what two runs
within 60 s get) is shown beside it for reference.

Target (issue #3): API <= 1.10 x ansible-playbook. Run as root with no fleet up:
`.venv/bin/python bench/api_overhead.py` (it runs itself inside the hub namespace).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fleet_bench import BIN, FLEET, REPO, cli_env, fresh_fleet, rerun_in_hub  # bench/ is sys.path[0] when run

sys.path.insert(0, str(REPO / "tests" / "support"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    status = rerun_in_hub(__file__, sys.argv[1:])
    if status is not None:
        return status
    from fleet_service import Service, install_controller_key  # the e2e harness: a real `serve` process

    state = fresh_fleet(10)
    # The service as shipped (2 processes x 2 job workers; a burst of read-only requests runs as one
    # playbook), except that the e2e harness it borrows samples metrics every 3 s: production's 60 s.
    os.environ["GPUAAS_METRICS_INTERVAL_SECONDS"] = "60"
    service = Service(Path(tempfile.mkdtemp()) / "var")
    service.start()
    api = service.api
    env = cli_env()
    try:
        region = api.call("POST", "/regions", {"region_name": "bench"}, expect=201)
        ids = []
        for name in sorted(state["nodes"], key=lambda n: int(n[4:])):
            body = {"name": name, "region_id": region["id"], "username": "root",
                    "node_ip": state["nodes"][name]["address"], "is_worker_node": True}
            node = api.call("POST", "/gpuaas/node/add", body, expect=201)
            install_controller_key(api, node["id"], name)
            ids.append(node["id"])
        for node_id in ids:  # first contact pins the keys; init makes the nodes scannable
            api.wait_job(api.call("GET", f"/gpuaas/node/test_conn?gpuaas_node_id={node_id}")["job_id"])
        jobs = [api.call("GET", f"/gpuaas/node/init?gpuaas_node_id={node_id}")["job_id"] for node_id in ids]
        assert all(api.wait_job(job, 600)["status"] == "successful" for job in jobs)

        warm_masters = tempfile.mkdtemp(prefix="cp-warm-")

        def cli(playbook: str, count: int, cold: bool = True) -> float:
            limit = ",".join(f"node{n}" for n in range(1, count + 1))
            control_dir = tempfile.mkdtemp(prefix="cp-") if cold else warm_masters
            start = time.perf_counter()
            subprocess.run([str(BIN / "ansible-playbook"), "-i", "/var/lib/hostedai-gpuaas-fleet/inventory.yml",
                            "--limit", limit, str(REPO / "playbooks" / f"{playbook}.yml")],
                           env=dict(env, ANSIBLE_SSH_CONTROL_PATH_DIR=control_dir), check=True, capture_output=True)
            elapsed = time.perf_counter() - start
            if cold:  # end this run's masters, as an API job does
                subprocess.run(["pkill", "-f", control_dir], check=False)
            return elapsed

        def through_api(path: str, count: int) -> float:
            start = time.perf_counter()
            started = [api.call("GET", path.format(node_id))["job_id"] for node_id in ids[:count]]
            results = [api.wait_job(job, 600) for job in started]
            elapsed = time.perf_counter() - start
            assert all(r["status"] == "successful" for r in results), results
            return elapsed

        rows = []
        for playbook, path in (("test_conn", "/gpuaas/node/test_conn?gpuaas_node_id={}"),
                               ("scan_gpus", "/gpuaas/node/scan_gpus?gpuaas_node_id={}")):
            for count in (1, 10):
                cli_times, api_times, warm_times = [], [], []
                cli(playbook, count, cold=False)  # start the warm masters
                for _repeat in range(args.repeats):
                    cli_times.append(cli(playbook, count))
                    api_times.append(through_api(path, count))
                    warm_times.append(cli(playbook, count, cold=False))
                rows.append((playbook, count, statistics.median(cli_times), statistics.median(api_times),
                             statistics.median(warm_times)))
    finally:
        print(f"service log: {service.data_dir.parent / 'serve.log'}")
        service.stop()
        subprocess.run([*FLEET, "down", "--keep-hub"], capture_output=True, check=False)

    print(f"\nthrough the API vs ansible-playbook, median of {args.repeats} (seconds, {os.cpu_count()} CPUs; "
          "the API runs one job per node, on its default workers)\n")
    print("| operation | nodes | ansible-playbook, cold SSH (s) | API (s) | API / CLI | CLI, warm masters (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for playbook, count, cli_time, api_time, warm_time in rows:
        print(f"| {playbook} | {count} | {cli_time:.2f} | {api_time:.2f} | {api_time / cli_time:.2f} | {warm_time:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
