"""The contract tests' service: a real `gpuaas-api serve` (tests/support/service.py) on a fresh
SQLite database under the test's temporary directory, no job workers (no job may try to reach the
made-up nodes), an admin, and the seeded region and nodes (ids 1 and 2, as schemathesis.toml's
dictionary has them)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import service
from service import call

ADMIN = {"username": "admin", "password": "contract test password"}


def seed_data(base: str, token: str) -> None:
    """A region and two nodes (ids 1 and 2), so that the operations on them answer something other than
    404.  Their address is the loopback's discard port: no job runs, and nothing would answer there."""
    status, region = call(base, "POST", "/api/regions", {"region_name": "contract"}, token=token)
    assert status == 201, region
    for number, role in ((1, "is_controller_node"), (2, "is_worker_node")):
        status, node = call(base, "POST", "/api/gpuaas/node/add",
                            {"name": f"contract-node-{number}", "region_id": region["id"], "node_ip": "127.0.0.1",
                             "username": "root", "port": 9, role: True}, token=token)
        assert status == 201 and node["id"] == number, node


@contextmanager
def serve(tmp_path: Path):
    """Start the service, log in and seed it; yield a Served; stop the service."""
    with service.serve(tmp_path, ADMIN, seed=seed_data, GPUAAS_JOB_WORKERS="0",
                       GPUAAS_METRICS_INTERVAL_SECONDS="0") as served:
        yield served
