#!/usr/bin/env python3
"""Benchmark: the metrics collector reading N gpuaas agents over HTTP (issue #13, section 3).

N agents (the agent's own HTTP server, gpuaas_agent.status_http.serve, each serving a realistic
status of 8 GPUs in a pool of ratio 4 with their readings) listen on 127.0.0.(10+i), one port,
in a child process, so that their CPU is not the controller's. In this process:

- ``read``: the HTTP reads alone (metrics/agent_http.read_agents);
- ``collect``: a whole collection as a job worker runs it (collector.collect_from_agents: the
  targets from the database, the reads, the samples and rollups stored, every slot's tenant
  stored with its team's totals and rollups, the prune), over a database seeded with the N nodes
  and their pool GPUs (SQLite, or --postgres-url). Every slot is held, by Pods of 4 namespaces,
  whose GPU-time counters grow at each read.

For each it prints the wall time and the controller's CPU (getrusage(RUSAGE_SELF): every thread
of this process) per collection and per node, the median of --rounds. Targets: <= 5 ms CPU per
node, <= 0.5 s wall for 30 nodes. Sends traffic to 127.0.0.0/8 only.
"""
from __future__ import annotations

import argparse
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-agent-token"
GPUS, RATIO = 8, 4

AGENTS = textwrap.dedent('''
    import sys, time
    from gpuaas_agent.agent import Agent
    from gpuaas_agent.config import Settings
    from gpuaas_agent.gpus import GpuState
    from gpuaas_agent.status_http import serve

    def uuid(node, index):  # NVML's format: the tenant reports are checked against it
        return f"GPU-00000000-0000-4000-8000-{node:06d}{index:06d}"

    nodes, port, token, gpus, ratio = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

    reads = {}

    def tenants(node, uuids):
        reads[node] = reads.get(node, 0) + 1
        return {"state": "ok", "reason": "", "slots": {
            f"{u}::{s}": {"resource": "gpuaas.hosted.ai/pool-1", "gpu": u, "state": "running",
                          "tenant": {"namespace": f"team-{(i * ratio + s) % 4}", "pod": f"pod-{node}-{i}-{s}",
                                     "container": "main", "uid": None},
                          "processes": [], "vram_used_mb": 1000.0, "gpu_seconds": 0.5 * reads[node], "shared_with": []}
            for i, u in enumerate(uuids) for s in range(1, ratio + 1)}, "flagged": [], "unknown": [], "infrastructure": []}

    def snapshot(agent, node):
        status = agent.status(readings=True)
        uuids = list(status["gpus"])
        status["resources"] = {
            "gpuaas.hosted.ai/pool-1": {"endpoint": "gpuaas-pool-1-0123456789ab.sock", "registered": True,
                                         "devices": gpus * ratio, "healthy": gpus * ratio,
                                         "device_ids": [f"{u}::{s}" for u in uuids for s in range(1, ratio + 1)],
                                         "allocations": {}}}
        for uuid in uuids:
            status["gpus"][uuid].update({"pool_id": 1, "resource": "gpuaas.hosted.ai/pool-1", "security_level": "low"})
        status["tenants"] = tenants(node, uuids)
        return status

    for node in range(nodes):
        agent = Agent(Settings())
        agent.gpu_states = {uuid(node, i): GpuState(i, uuid(node, i), True, compute_mode="DEFAULT",
                                                             memory_mb=81559, readings={
            "utilization_gpu_percent": 37 + i, "utilization_memory_percent": 12, "memory_used_mb": 40960 + i,
            "temperature_c": 55 + i, "power_w": 312.5 + i}) for i in range(gpus)}
        serve(f"127.0.0.{10 + node}:{port}", token, lambda agent=agent, node=node: snapshot(agent, node))
    print("ready", flush=True)
    sys.stdin.read()
''')


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.10", 0))
        return probe.getsockname()[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(run, rounds: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``run()`` over ``rounds`` after one warm-up."""
    run()
    walls, cpus = [], []
    for _round in range(rounds):
        wall, cpu = time.perf_counter(), cpu_seconds()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_seconds() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def seed(app, nodes: int, port: int) -> None:
    from gpuaas_api.db import session
    from gpuaas_api.models import Gpu, Node
    from gpuaas_api.states import GpuAssignment, NodeStatus
    from seed import active_cluster, active_pool

    with app.app_context():
        db = session()
        region, cluster = active_cluster(db)
        pool = active_pool(db, cluster, RATIO, "low")
        for node_index in range(nodes):
            node = Node(name=f"n{node_index}", region_id=region.id, cluster_id=cluster.id,
                        node_ip=f"127.0.0.{10 + node_index}", username="root", is_worker_node=True, joined=True,
                        status=NodeStatus.HEALTHY)
            db.add(node)
            db.flush()
            for index in range(GPUS):
                db.add(Gpu(node_id=node.id, index=index, uuid=f"GPU-00000000-0000-4000-8000-{node_index:06d}{index:06d}",
                           model="NVIDIA H100 80GB HBM3", memory_in_mb=81559, pool_id=pool.id,
                           assignment_status=GpuAssignment.ASSIGNED))
        db.commit()


def bench(nodes: int, rounds: int, database_url: str | None) -> None:
    from gpuaas_api import create_app
    from gpuaas_api.config import Config
    from gpuaas_api.metrics.agent_http import Target, read_agents
    from gpuaas_api.metrics.collector import collect_from_agents
    from gpuaas_api.migrate import upgrade

    port = free_port()
    agents = subprocess.Popen([sys.executable, "-c", AGENTS, str(nodes), str(port), TOKEN, str(GPUS), str(RATIO)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert agents.stdout.readline().strip() == "ready"
        with tempfile.TemporaryDirectory() as directory:
            url = database_url or f"sqlite:///{directory}/bench.sqlite3"
            upgrade(url)
            config = Config({"GPUAAS_DATA_DIR": directory, "GPUAAS_DATABASE_URL": url, "GPUAAS_AGENT_PORT": str(port),
                             "GPUAAS_AGENT_TOKEN": TOKEN})
            app = create_app(config)
            seed(app, nodes, port)
            targets = [Target(i, f"127.0.0.{10 + i}", port) for i in range(nodes)]

            def read():
                reads = read_agents(targets, TOKEN, 2, 5, config.AGENT_CONCURRENCY, 30)
                assert len(reads.answered) == nodes, reads.failed

            def collect():
                with app.app_context():
                    result = collect_from_agents(config)
                    assert result.readings == nodes * GPUS and not result.failed, result

            for name, run in (("read", read), ("collect", collect)):
                wall, cpu = measure(run, rounds)
                print(f"{nodes:3d} nodes  {name:8s} wall {wall * 1000:7.1f} ms   CPU {cpu * 1000:7.1f} ms "
                      f"({cpu * 1000 / nodes:5.2f} ms/node)", flush=True)
            with app.app_context():  # every slot's tenant was stored, not refused
                from gpuaas_api.db import session
                from gpuaas_api.models import TenantSlot
                from sqlalchemy import func, select
                assert session().scalar(select(func.count()).select_from(TenantSlot)) == nodes * GPUS * RATIO
            app.extensions["gpuaas_engine"].dispose()
            if database_url:
                from sqlalchemy import create_engine, text
                engine = create_engine(database_url)
                with engine.begin() as connection:  # the next size seeds an empty schema
                    connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
                engine.dispose()
    finally:
        agents.stdin.close()
        agents.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database (its schema is dropped between sizes)")
    arguments = parser.parse_args()
    sys.path.insert(0, str(REPO / "api"))
    for nodes in arguments.nodes:
        bench(nodes, arguments.rounds, arguments.postgres_url)


if __name__ == "__main__":
    main()
