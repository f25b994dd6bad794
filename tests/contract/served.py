"""A real `gpuaas-api serve` for the contract tests: a fresh SQLite database under the test's
temporary directory, no job workers (no job may try to reach the made-up nodes), an admin, and the
seeded region and nodes (ids 1 and 2, as schemathesis.toml's dictionary has them)."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service import call, free_port, start_service

VENV_BIN = Path(sys.executable).parent
ADMIN = {"username": "admin", "password": "contract test password"}


@dataclass
class Served:
    base: str
    token: str
    env: dict
    access_log: Path
    log: Path

    def call(self, method: str, path: str, body=None):
        return call(self.base, method, path, body, token=self.token)


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
    access_log = tmp_path / "access.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("GPUAAS_")}
    env.update(GPUAAS_BIND=f"127.0.0.1:{free_port()}", GPUAAS_DATA_DIR=str(tmp_path / "data"),
               GPUAAS_JOB_WORKERS="0", GPUAAS_METRICS_INTERVAL_SECONDS="0",
               GPUAAS_ADMIN_USER=ADMIN["username"], GPUAAS_ADMIN_PASSWORD=ADMIN["password"],
               GPUAAS_ACCESS_LOG=str(access_log))
    service = start_service([str(VENV_BIN / "gpuaas-api"), "serve"], env, tmp_path / "serve.log")
    try:
        status, login = call(service.base, "POST", "/api/login", ADMIN)
        assert status == 200, login
        seed_data(service.base, login["token"])
        yield Served(service.base, login["token"], env, access_log, tmp_path / "serve.log")
    finally:
        service.stop()
