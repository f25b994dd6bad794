#!/usr/bin/env python3
"""Benchmark: GET /gpuaas/pool/{id}/metrics over 30 days of 1-minute samples of 64 GPUs.

Fills a fresh database through the collector's own ingestion (record_gpu_samples: raw
samples plus the per-pool rollups), one hour of samples per call, then times the query
for each time_grouping over the whole 30 days, through a real HTTP server on loopback.
Target (issue #4): <= 200 ms. SQLite by default; --database-url for PostgreSQL.

    .venv/bin/python bench/metrics_query.py [--days 30] [--gpus 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from sqlalchemy import func, select
from werkzeug.serving import make_server

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "api"))

from gpuaas_api import create_app  # noqa: E402
from gpuaas_api.credentials import ensure_admin  # noqa: E402
from gpuaas_api.config import Config  # noqa: E402
from gpuaas_api.db import session  # noqa: E402
from gpuaas_api.metrics.store import record_gpu_samples  # noqa: E402
from gpuaas_api.migrate import upgrade  # noqa: E402
from gpuaas_api.models import Gpu, MetricRollup, MetricSample, Node  # noqa: E402
from gpuaas_api.states import GpuAssignment, NodeStatus  # noqa: E402
from seed import active_cluster, active_pool  # noqa: E402

ADMIN = ("bench", "bench-password-long-enough")


def fill(app, days: int, gpu_count: int) -> tuple[int, dt.datetime, dt.datetime, float]:
    """One pool of ``gpu_count`` GPUs on 4-GPU nodes, sampled every minute for ``days`` days."""
    with app.app_context():
        db = session()
        region, cluster = active_cluster(db)
        pool = active_pool(db, cluster, 4, "medium")
        gpu_ids = []
        for node_index in range(gpu_count // 4):
            node = Node(name=f"n{node_index}", region_id=region.id, node_ip="198.18.0.1", username="root",
                        is_worker_node=True, cluster_id=cluster.id, joined=True, status=NodeStatus.HEALTHY)
            db.add(node)
            db.flush()
            for index in range(4):
                gpu = Gpu(node_id=node.id, index=index, uuid=f"GPU-{node_index}-{index}", model="NVIDIA H100",
                          memory_in_mb=81559, pool_id=pool.id, assignment_status=GpuAssignment.ASSIGNED)
                db.add(gpu)
                db.flush()
                gpu_ids.append(gpu.id)
        db.commit()
        end = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
        start = end - dt.timedelta(days=days)
        rng = random.Random(4)
        began = time.perf_counter()
        for hour in range(days * 24):
            batch = []
            for minute in range(60):
                at = start + dt.timedelta(hours=hour, minutes=minute)
                for gpu_id in gpu_ids:
                    batch.append({"gpu_id": gpu_id, "pool_id": pool.id, "sampled_at": at,
                                  # What NVML gives: whole percents, MiB and degrees, power to 0.1 W.
                                  "utilization_gpu_percent": rng.randint(0, 100), "memory_used_mb": rng.randint(0, 81559),
                                  "temperature_c": rng.randint(30, 85), "power_w": rng.randint(600, 7000) / 10})
            record_gpu_samples(batch)
            db.commit()
        ingest = time.perf_counter() - began
        print(f"stored {db.scalar(select(func.count(MetricSample.id)))} samples and "
              f"{db.scalar(select(func.count()).select_from(MetricRollup))} rollup rows in {ingest:.0f} s", flush=True)
        return pool.id, start, end, ingest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="gpuaas-metrics-bench-"))
    url = args.database_url or f"sqlite:///{data_dir / 'bench.sqlite3'}"
    config = Config({"GPUAAS_DATA_DIR": str(data_dir), "GPUAAS_DATABASE_URL": url})
    upgrade(url)
    app = create_app(config)
    with app.app_context():
        ensure_admin(*ADMIN)
    pool_id, start, end, _ingest = fill(app, args.days, args.gpus)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/api"
    login = urllib.request.Request(f"{base}/login", data=json.dumps(dict(zip(("username", "password"), ADMIN))).encode(),
                                   headers={"Content-Type": "application/json"})
    token = json.loads(urllib.request.urlopen(login).read())["token"]

    def query(grouping: str) -> tuple[float, int, int]:
        request = urllib.request.Request(
            f"{base}/gpuaas/pool/{pool_id}/metrics?time_grouping={grouping}"
            f"&from={start.isoformat().replace('+00:00', 'Z')}&to={end.isoformat().replace('+00:00', 'Z')}",
            headers={"Authorization": f"Bearer {token}"})
        began = time.perf_counter()
        body = urllib.request.urlopen(request).read()
        elapsed = time.perf_counter() - began
        reply = json.loads(body)
        return elapsed, len(reply["series"]), len(body)

    print(f"\n{args.days} days x 1-minute samples x {args.gpus} GPUs, {url.split(':')[0]}, "
          f"median of {args.repeats} over HTTP (ms)\n")
    print("| time_grouping | buckets | reply (KiB) | median (ms) | max (ms) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for grouping in ("minute", "hour", "day", "week"):
        query(grouping)  # warm
        timings = []
        for _repeat in range(args.repeats):
            elapsed, buckets, size = query(grouping)
            timings.append(elapsed * 1000)
        print(f"| {grouping} | {buckets} | {size / 1024:.0f} | {statistics.median(timings):.0f} | {max(timings):.0f} |")
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
