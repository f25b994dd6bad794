"""A role run with a bad or missing variable fails at its argument spec, before touching the host.

The inventory's only host points at a loopback port where nothing listens: had any task
tried to reach it, the host would be UNREACHABLE instead of failed at validation.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def run_role(installed: Path, tmp_path: Path, role: str, variables: dict) -> subprocess.CompletedProcess:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"target": {
        "ansible_host": "127.0.0.1", "ansible_port": 1, "ansible_connection": "ssh"}}}}))
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{"hosts": "all", "gather_facts": False,
                                     "roles": [{"role": f"hostedai.gpuaas.{role}", "vars": variables}]}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(installed), ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"))
    return subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(playbook)], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize("role, variables, named", [
    ("node_init", {"node_init_roles": ["bogus"]}, "node_init_roles"),
    ("gpu_scan", {"gpu_scan_include_metrics": "maybe"}, "gpu_scan_include_metrics"),
    ("node_reboot", {"node_reboot_timeout": "soon"}, "node_reboot_timeout"),
    ("cluster_controller", {"cluster_controller_mig_strategy": "all"}, "cluster_controller_mig_strategy"),
    ("report", {"report_name": "x"}, "report_data"),  # a required variable missing
    ("gpu_sharing", {"gpu_sharing_gpus": [{"uuid": "GPU-a", "security_level": "max"}]}, "security_level"),
    ("gpu_sharing", {"gpu_sharing_state": "present"}, "gpu_sharing_gpus"),  # the GPUs are required
])
def test_bad_variable_fails_at_the_argument_spec(installed, tmp_path, role, variables, named):
    result = run_role(installed, tmp_path, role, variables)

    assert result.returncode == 2, result.stdout
    assert "Validating arguments against arg spec" in result.stdout
    assert named in result.stdout
    assert "unreachable=0" in result.stdout and "failed=1" in result.stdout
