#!/usr/bin/env python3
"""Benchmark: one metrics collection over 10 and 30 fleet nodes, the agents' HTTP path against
the Ansible path (issue #13, section 4), in one run on one fleet.

A fresh fleet of 30 nodes (the fleet's profiles give GPUs to three slots of six: 15 of the 30
hold GPUs; the others answer with none); on each, the gpuaas agent installed and started by the role
(gpu_sharing's agent tasks: its virtual environment from the hub's package index, its
settings, the token, its unit), its HTTP status on the node's address. Then, for 10 and 30
nodes (the first N), alternating, --rounds times each:

- Ansible: `ansible-playbook collect_metrics.yml` over the N nodes, with the production tuning
  (pipelining, forks 50, no facts), as the service ran it every period before: wall time, and
  the controller's CPU (ansible-playbook and its workers: this process's children);
- agents: the service's own reads (metrics/agent_http.read_agents: N concurrent requests to
  /status with the bearer token, the readings parsed), as the collector makes them now: wall
  time, and the controller's CPU (every thread of this process).

Neither side includes storing the readings (the same code for both; bench/agent_collector.py
measures a whole collection with the database). Reported: the medians, per collection and per
node. Targets: agents <= 5 ms of controller CPU per node, 30 nodes in <= 0.5 s wall.
Run as root with no fleet up: `.venv/bin/python bench/metrics_paths.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time

from fleet_bench import BIN, FLEET, REPO, cli_env, fresh_fleet, rerun_in_hub  # bench/ is sys.path[0] when run

INVENTORY = "/var/lib/hostedai-gpuaas-fleet/inventory.yml"
AGENT_PORT = 9460
SIZES = (10, 30)
INSTALL = """
- name: Install and start the gpuaas agent, its HTTP status on the node's address
  hosts: all
  gather_facts: false
  tasks:
    # What node_init installs with the NVIDIA stack, and Ansible's pip module needs (its
    # requirement parsing); the image alone lacks it.
    - name: Install pip
      ansible.builtin.apt:
        name: python3-pip
        update_cache: true
    - name: The agent
      ansible.builtin.include_role:
        name: hostedai.gpuaas.gpu_sharing
        tasks_from: agent
"""


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def install_agents(token: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        playbook = os.path.join(directory, "agents.yml")
        with open(playbook, "w") as handle:
            handle.write(INSTALL)
        extra = os.path.join(directory, "extra.json")
        with open(extra, "w") as handle:
            json.dump({"gpu_sharing_agent_token": token,
                       "gpu_sharing_agent_http_listen": f"{{{{ ansible_host }}}}:{AGENT_PORT}"}, handle)
        done = subprocess.run([str(BIN / "ansible-playbook"), "-i", INVENTORY, "-e", f"@{extra}", playbook],
                              env=cli_env(), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"installing the agents failed:\n{done.stdout[-4000:]}")


def wait_for_agents(targets, gpus: dict, token: str, timeout: float = 180) -> None:
    """Until every agent answers with readings of all its node's GPUs (its first NVML probe done)."""
    from gpuaas_api.metrics.agent_http import AgentError, fetch_status, gpu_readings

    deadline = time.monotonic() + timeout
    for target in targets:
        while True:
            try:
                status = fetch_status(target, token, 2, 5)
                if len(gpu_readings(status)) == gpus[target.node_id]:
                    break
            except AgentError as error:
                status = str(error)
            if time.monotonic() > deadline:
                raise SystemExit(f"the agent on {target} gave no readings: {json.dumps(status)[:2000]}")
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--keep-fleet", action="store_true", help="leave the fleet up (to look into a failure)")
    args = parser.parse_args()
    status = rerun_in_hub(__file__, sys.argv[1:])
    if status is not None:
        return status
    sys.path.insert(0, str(REPO / "api"))
    from gpuaas_api.metrics.agent_http import Target, gpu_readings, read_agents

    token = secrets.token_urlsafe(24)
    rows = []
    try:
        state = fresh_fleet(max(args.sizes))
        names = sorted(state["nodes"], key=lambda n: int(n[4:]))
        started = time.perf_counter()
        install_agents(token)
        print(f"agents installed on {len(names)} nodes in {time.perf_counter() - started:.0f} s", flush=True)
        targets = [Target(index, state["nodes"][name]["address"], AGENT_PORT) for index, name in enumerate(names)]
        gpus = {index: len(state["nodes"][name]["hardware"]["gpus"]) for index, name in enumerate(names)}
        wait_for_agents(targets, gpus, token)
        env = dict(cli_env(), ANSIBLE_GATHERING="explicit")
        for size in args.sizes:
            limit = ",".join(names[:size])
            with_gpus = sum(1 for name in names[:size] if state["nodes"][name]["hardware"]["gpus"])
            ansible_walls, ansible_cpus, agent_walls, agent_cpus = [], [], [], []

            def ansible() -> None:
                done = subprocess.run([str(BIN / "ansible-playbook"), "-i", INVENTORY, "--limit", limit,
                                       "-e", json.dumps({"collect_metrics_gpu_hosts": limit,
                                                         "collect_metrics_storage_hosts": "none"}),
                                       str(REPO / "playbooks" / "collect_metrics.yml")],
                                      env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"collect_metrics failed:\n{done.stdout[-3000:]}")

            def agents() -> None:
                reads = read_agents(targets[:size], token, 2, 5, 64, 30)
                assert len(reads.answered) == size, reads.failed
                readings = sum(len(gpu_readings(status)) for status in reads.answered.values())
                assert readings == sum(gpus[target.node_id] for target in targets[:size]), readings

            ansible()  # warm-up of each (the first SSH connections, the first imports)
            agents()
            for _round in range(args.rounds):
                wall, cpu = time.perf_counter(), children_cpu()
                ansible()
                ansible_walls.append(time.perf_counter() - wall)
                ansible_cpus.append(children_cpu() - cpu)
                wall, cpu = time.perf_counter(), self_cpu()
                agents()
                agent_walls.append(time.perf_counter() - wall)
                agent_cpus.append(self_cpu() - cpu)
            for path, walls, cpus in (("Ansible (collect_metrics.yml)", ansible_walls, ansible_cpus),
                                      ("agents' HTTP (read_agents)", agent_walls, agent_cpus)):
                wall, cpu = statistics.median(walls), statistics.median(cpus)
                rows.append((size, with_gpus, path, wall, cpu))
                print(f"{size} nodes ({with_gpus} with GPUs), {path}: wall {wall * 1000:.0f} ms, CPU {cpu * 1000:.1f} ms", flush=True)
    finally:
        if not args.keep_fleet:
            subprocess.run([*FLEET, "down", "--keep-hub"], capture_output=True, check=False)

    print(f"\none collection, median of {args.rounds} ({os.cpu_count()} CPUs)\n")
    print("| nodes | with GPUs | path | wall (ms) | controller CPU (ms) | CPU per node (ms) |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for size, with_gpus, path, wall, cpu in rows:
        print(f"| {size} | {with_gpus} | {path} | {wall * 1000:.0f} | {cpu * 1000:.1f} | {cpu * 1000 / size:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
