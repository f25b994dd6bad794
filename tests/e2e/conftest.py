"""End-to-end: `gpuaas-api serve` as a real process, driving the test fleet over SSH.

Runs inside the fleet's hub namespace (`make test-e2e`), where both the service and
the nodes are reachable. Each test module gets a fresh fleet.  The harness is
tests/support/fleet_service.py.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fleet_service import FLEET, REPO, Service, fleet


@pytest.fixture(scope="module")
def running_fleet(request):
    """A fresh fleet for the module: FLEET_NODES nodes (a module may set it; 3 otherwise)."""
    subprocess.run([*FLEET, "down", "--keep-hub"], capture_output=True, check=False)
    fleet("up", str(getattr(request.module, "FLEET_NODES", 3)))
    yield json.loads(Path("/var/lib/hostedai-gpuaas-fleet/state.json").read_text())
    subprocess.run([*FLEET, "down", "--keep-hub"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def service(running_fleet, tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("gpuaas") / "var")
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server (tests/api/postgres.sh), started from the test's own namespace;
    its Unix socket is under /tmp, so every host of the test reaches it."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="gpuaas-e2e-postgres.", dir="/tmp")
    script = REPO / "tests/api/postgres.sh"
    url = subprocess.run([str(script), "start", directory], capture_output=True, text=True, check=True,
                         timeout=120).stdout.strip()
    yield url
    subprocess.run([str(script), "stop", directory], capture_output=True, check=False, timeout=60)
    subprocess.run(["rm", "-rf", directory], check=False)
