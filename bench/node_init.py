#!/usr/bin/env python3
"""Benchmark: node_init.yml with package management and the NVIDIA stack on, 1 and 10 nodes.

Each size gets a fresh fleet (nodes straight from the image: nothing installed yet), and one
run of the playbook from the hub, as an operator's first run on new servers.  Reported per
size: wall time; the controller's CPU-seconds (ansible-playbook and its workers: this
process's children), in all and per node; and the whole machine's CPU-seconds from
/proc/stat, which includes the nodes' own work (apt, dpkg, containerd) on the same cores.
Run as root with no fleet up: `make bench-node-init`.

Target (issue #9): the 10-node run takes <= 2.5 x the 1-node run.  When the machine's CPU is
busy for most of the run (CPU-seconds close to wall x cores), the run is CPU-bound.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_bench import BIN, FLEET, REPO  # noqa: E402

INVENTORY = "/var/lib/hostedai-gpuaas-fleet/inventory.yml"


def ansible_env() -> dict:
    build = REPO / ".build"
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(build / "collections"),
                ANSIBLE_HOME=str(build / "ansible-home"), ANSIBLE_LOCAL_TEMP=str(build / "ansible-home/tmp"),
                ANSIBLE_FORKS="50", ANSIBLE_DEPRECATION_WARNINGS="False")


def machine_cpu_seconds() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def measure(nodes: int) -> dict:
    subprocess.run([*FLEET, "down", "--keep-hub"], capture_output=True, check=False)
    subprocess.run([*FLEET, "up", str(nodes)], check=True, capture_output=True)
    try:
        extra = json.dumps({"node_init_nvidia_install": True, "node_reboot_timeout": 120})
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine_before, start = machine_cpu_seconds(), time.perf_counter()
        done = subprocess.run([*FLEET, "exec", "--", str(BIN / "ansible-playbook"), "-i", INVENTORY, "-e", extra,
                               "hostedai.gpuaas.node_init"], env=ansible_env(), capture_output=True, text=True,
                              check=False)
        wall = time.perf_counter() - start
        machine = machine_cpu_seconds() - machine_before
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"node_init failed on {nodes} nodes:\n{done.stdout[-3000:]}")
        controller = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {"wall": wall, "controller": controller, "machine": machine}
    finally:
        subprocess.run([*FLEET, "down", "--keep-hub"], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    subprocess.run([*FLEET, "hub"], check=True)
    results = {}
    try:
        for nodes in args.nodes:
            results[nodes] = measure(nodes)
    finally:
        subprocess.run([*FLEET, "down"], check=False, capture_output=True)

    cores = os.cpu_count()
    print(f"\nnode_init.yml, packages and NVIDIA stack on, fresh nodes ({cores} CPUs)\n")
    print("| nodes | wall (s) | controller CPU-s | per node | machine CPU-s | machine busy |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for nodes, r in results.items():
        print(f"| {nodes} | {r['wall']:.1f} | {r['controller']:.1f} | {r['controller'] / nodes:.1f} | "
              f"{r['machine']:.1f} | {r['machine'] / (r['wall'] * cores):.0%} |")
    smallest, largest = min(results), max(results)
    if smallest != largest:
        ratio = results[largest]["wall"] / results[smallest]["wall"]
        print(f"\n{largest}-node / {smallest}-node wall time: {ratio:.2f} (target <= 2.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
