#!/usr/bin/env python3
"""Benchmark: API reads with 1,000 nodes x 8 GPUs, 16 concurrent clients, under `gpuaas-api serve`.

For each database (SQLite, and PostgreSQL when --postgres-url is given) it seeds the
data set, starts `gpuaas-api serve` and, with the same gunicorn settings, a bare Flask
app answering a constant JSON document; then drives each endpoint with wrk
(16 connections, --latency) and prints p50, p99 and requests per second, and the
service's resident memory (master and workers) after the runs.

Targets (issue #3): GET node >= 60% of the bare endpoint's throughput with p99 <= 25 ms;
the full list of 1,000 nodes at <= 250 ms p50; service RSS <= 300 MB.
Needs Debian's wrk. Sends traffic to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NODES, GPUS_PER_NODE = 1000, 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seed(database_url: str, data_dir: Path) -> str:
    """Create the schema, the data set and a token; return the token."""
    sys.path.insert(0, str(REPO / "api"))
    from gpuaas_api import create_app
    from gpuaas_api.access import Role
    from gpuaas_api.credentials import hash_password, issue_token
    from gpuaas_api.config import Config
    from gpuaas_api.db import session
    from gpuaas_api.migrate import upgrade
    from gpuaas_api.models import Gpu, Node, User
    from gpuaas_api.states import NodeStatus
    from seed import active_cluster

    upgrade(database_url)
    app = create_app(Config({"GPUAAS_DATA_DIR": str(data_dir), "GPUAAS_DATABASE_URL": database_url}))
    with app.app_context():
        db = session()
        region, cluster = active_cluster(db)
        for n in range(NODES):
            node = Node(name=f"gpu-{n:04d}", region_id=region.id, cluster_id=cluster.id,
                        node_ip=f"198.18.{n // 250}.{n % 250 + 1}", username="root", is_worker_node=True,
                        status=NodeStatus.HEALTHY, joined=True, nvidia_driver_version="550.54.15")
            db.add(node)
            db.flush()
            db.add_all(Gpu(node_id=node.id, index=i, uuid=f"GPU-{n:04d}-{i}", model="NVIDIA H100 80GB HBM3",
                           memory_in_mb=81559, pci_bus_id=f"00000000:{0x18 + i:02X}:00.0") for i in range(GPUS_PER_NODE))
        user = User(username="bench", password_hash=hash_password("bench-password"), role=Role.VIEWER.value)  # it only reads
        db.add(user)
        token = issue_token(user, None, "bench")
        db.commit()
        cluster_id = cluster.id
    engine = app.extensions["gpuaas_engine"]
    if engine.dialect.name == "postgresql":
        # Vacuum and analyse the fresh rows now: left to autovacuum, it runs during the first
        # measurements (it held the bare endpoint, measured first, to a third of its rate).
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    return token, cluster_id


BARE_APP = textwrap.dedent("""
    from flask import Flask
    app = Flask(__name__)

    @app.get("/bare")
    def bare():
        return {"id": 1, "name": "bare", "status": "ok"}
""")


def start(command: list[str], env: dict, port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{command} did not listen on {port}")


def wrk(url: str, token: str | None, seconds: int) -> dict:
    headers = ["-H", f"Authorization: Bearer {token}"] if token else []
    # A 2 s warm-up first, not measured: the first requests of a fresh server (lazy imports,
    # connection pools, page cache, reply caches) are not what a running service answers with.
    subprocess.run(["wrk", "-t", "4", "-c", "16", "-d", "2s", *headers, url], capture_output=True, check=True)
    out = subprocess.run(["wrk", "-t", "4", "-c", "16", "-d", f"{seconds}s", "--latency", *headers, url],
                         capture_output=True, text=True, check=True).stdout

    def latency(label):
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50": latency("50"), "p99": latency("99"), "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "non2xx": int(errors.group(1)) if errors else 0}


def memory_mb(pid: int) -> dict:
    """The service's memory, master and workers together: RSS (pages shared after fork counted once per
    process, as `ps` adds them up) and PSS (each shared page split among its sharers: what it costs)."""
    group = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True, check=False).stdout.split()
    pids = [pid] + [int(p) for p in group if int(p) != pid]
    totals = {"Rss": 0, "Pss": 0}
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                name = line.split(":")[0]
                if name in totals:
                    totals[name] += int(line.split()[1])
        except FileNotFoundError:
            pass
    return {"processes": len(pids), "rss": totals["Rss"] / 1024, "pss": totals["Pss"] / 1024}


def run(database_url: str | None, label: str, seconds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "var"
        url = database_url or f"sqlite:///{data_dir / 'gpuaas.sqlite3'}"
        data_dir.mkdir()
        token, cluster_id = seed(url, data_dir)
        api_port, bare_port = free_port(), free_port()
        env = dict(os.environ, GPUAAS_BIND=f"127.0.0.1:{api_port}", GPUAAS_DATA_DIR=str(data_dir),
                   GPUAAS_DATABASE_URL=url, GPUAAS_JOB_WORKERS="1")
        api = start([str(BIN / "gpuaas-api"), "serve", "--workers", "2"], env, api_port)
        (Path(tmp) / "bare_app.py").write_text(BARE_APP)
        bare = start([str(BIN / "gunicorn"), "--chdir", tmp, "-b", f"127.0.0.1:{bare_port}", "-w", "2",
                      "-k", "gthread", "--threads", "8", "bare_app:app"], dict(os.environ), bare_port)
        try:
            base = f"http://127.0.0.1:{api_port}"
            rows = [("bare Flask JSON endpoint", wrk(f"http://127.0.0.1:{bare_port}/bare", None, seconds))]
            for name, path in (("GET /gpuaas/node/{id}", "/gpuaas/node/500"),
                               ("GET /gpuaas/node/list (1,000 nodes)", "/gpuaas/node/list"),
                               ("GET /gpuaas/{id}/pool/available_gpus", f"/gpuaas/{cluster_id}/pool/available_gpus")):
                rows.append((name, wrk(base + path, token, seconds)))
            memory = memory_mb(api.pid)
        finally:
            for process in (api, bare):
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
        bare_rps = rows[0][1]["rps"]
        print(f"\n{label}: {NODES} nodes x {GPUS_PER_NODE} GPUs, 16 connections, {seconds}s each, "
              f"gunicorn 2 workers x 8 threads, {os.cpu_count()} CPUs\n")
        print("| endpoint | p50 (ms) | p99 (ms) | req/s | vs bare | non-2xx |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, row in rows:
            print(f"| {name} | {row['p50']:.1f} | {row['p99']:.1f} | {row['rps']:.0f} | "
                  f"{row['rps'] / bare_rps:.0%} | {row['non2xx']} |")
        print(f"\nservice memory after the runs ({memory['processes']} processes): RSS {memory['rss']:.0f} MB, "
              f"PSS {memory['pss']:.0f} MB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres-url", help="also run against this (empty) PostgreSQL database")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    if not args.skip_sqlite:
        run(None, "SQLite", args.seconds)
    if args.postgres_url:
        run(args.postgres_url, "PostgreSQL", args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
