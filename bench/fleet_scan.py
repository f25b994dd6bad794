#!/usr/bin/env python3
"""Benchmark: scan_gpus.yml against `ansible -m ping` on 1, 5 and 10 fleet nodes.

Both run in the same fleet, one after the other, with the same Ansible tuning
(pipelining, forks >= nodes, no fact gathering), each repeated and the median
taken.  Run as root with no fleet up: `make bench`.

Targets (issue #2): 10-node scan <= 1.2 x 10-node ping, and 10-node scan
<= 2.5 x 1-node scan (the fan-out really runs in parallel).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLEET = [sys.executable, str(REPO / "tests/fleet/fleet.py")]
BIN = Path(sys.executable).parent
INVENTORY = "/var/lib/hostedai-gpuaas-fleet/inventory.yml"


def ansible_env() -> dict:
    build = REPO / ".build"
    return dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(build / "collections"),
        ANSIBLE_HOME=str(build / "ansible-home"),
        ANSIBLE_LOCAL_TEMP=str(build / "ansible-home/tmp"),
        ANSIBLE_PIPELINING="True",
        ANSIBLE_FORKS="50",
        ANSIBLE_GATHERING="explicit",
        ANSIBLE_DEPRECATION_WARNINGS="False",
    )


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([*FLEET, "exec", "--", *command], check=True, env=ansible_env(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(nodes: int, repeats: int) -> tuple[float, float]:
    subprocess.run([*FLEET, "up", str(nodes)], check=True, stdout=subprocess.DEVNULL)
    try:
        ping = [BIN / "ansible", "all", "-i", INVENTORY, "-m", "ansible.builtin.ping"]
        scan = [BIN / "ansible-playbook", "-i", INVENTORY, "hostedai.gpuaas.scan_gpus"]
        timed(list(map(str, ping)))  # warm-up: first SSH handshakes, page cache
        pings, scans = [], []
        for _repeat in range(repeats):
            pings.append(timed(list(map(str, ping))))
            scans.append(timed(list(map(str, scan))))
        return statistics.median(pings), statistics.median(scans)
    finally:
        subprocess.run([*FLEET, "down", "--keep-hub"], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    subprocess.run([*FLEET, "hub"], check=True)
    results = {}
    try:
        for nodes in args.nodes:
            results[nodes] = measure(nodes, args.repeats)
    finally:
        subprocess.run([*FLEET, "down"], check=False, stdout=subprocess.DEVNULL)

    print(f"\nscan_gpus.yml vs ansible -m ping, median of {args.repeats} (seconds, {os.cpu_count()} CPUs)\n")
    print("| nodes | ping (s) | scan_gpus (s) | scan / ping |")
    print("| ---: | ---: | ---: | ---: |")
    for nodes, (ping, scan) in results.items():
        print(f"| {nodes} | {ping:.2f} | {scan:.2f} | {scan / ping:.2f} |")
    smallest, largest = min(results), max(results)
    if smallest != largest:
        ratio = results[largest][1] / results[smallest][1]
        print(f"\n{largest}-node scan / {smallest}-node scan: {ratio:.2f} (target <= 2.5)")
    print(f"{largest}-node scan / {largest}-node ping: {results[largest][1] / results[largest][0]:.2f} (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
