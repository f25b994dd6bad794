"""What the fleet benchmarks share: running inside the hub namespace on a fresh fleet."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLEET = [sys.executable, str(REPO / "tests/fleet/fleet.py")]
BIN = Path(sys.executable).parent
STATE = Path("/var/lib/hostedai-gpuaas-fleet/state.json")


def rerun_in_hub(script: str, argv: list[str]) -> int | None:
    """Outside the hub: run ``script`` again inside it and return its exit status; inside: None."""
    if os.environ.get("GPUAAS_BENCH_IN_HUB") == "1":
        return None
    subprocess.run([*FLEET, "hub"], check=True)
    return subprocess.run([*FLEET, "exec", "--", "env", "GPUAAS_BENCH_IN_HUB=1", f"PATH={BIN}:{os.environ['PATH']}",
                           sys.executable, script, *argv], check=False).returncode


def fresh_fleet(nodes: int) -> dict:
    """Stop any fleet (keeping the hub), start ``nodes`` nodes, and return the fleet's state."""
    subprocess.run([*FLEET, "down", "--keep-hub"], capture_output=True, check=False)
    subprocess.run([*FLEET, "up", str(nodes)], check=True, capture_output=True)
    return json.loads(STATE.read_text())


def cli_env() -> dict:
    """ansible-playbook's environment for the CLI side of a comparison: this checkout as the
    collection, and the settings the service's runs use (pipelining, forks)."""
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build/collections"),
                ANSIBLE_HOME=str(REPO / ".build/ansible-home"), ANSIBLE_PIPELINING="True", ANSIBLE_FORKS="50")
