"""node_init refuses what the collection does not support in one line naming what it does, before
anything is installed (issue #31, "Bad input"): a distribution not listed, a driver branch not
supported, an exact driver version of another branch.

The real ansible-playbook runs the role's os_check.yml on a local host, with the facts of the
host under test given as extra variables (so nothing is gathered from this machine).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from module_runner import run_local_play

ROLE = Path(__file__).resolve().parents[2] / "roles/node_init"
PLAYBOOK = """
- name: The node's OS and driver branch
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: The role's checks
      ansible.builtin.include_role:
        name: hostedai.gpuaas.node_init
        tasks_from: os_check
        public: true
    - name: Reached
      ansible.builtin.debug:
        msg: "accepted: {{ node_init_packages_nvidia_driver | join(',') }}"
"""
DEBIAN_12 = {"distribution": "Debian", "distribution_version": "12.8", "distribution_major_version": "12",
             "os_family": "Debian", "service_mgr": "systemd", "kernel": "6.1.0-41-amd64", "architecture": "x86_64"}
UBUNTU_2204 = {**DEBIAN_12, "distribution": "Ubuntu", "distribution_version": "22.04",
               "distribution_major_version": "22"}
ROCKY_9 = {**DEBIAN_12, "distribution": "Rocky", "distribution_version": "9.4", "distribution_major_version": "9",
           "os_family": "RedHat"}
UBUNTU_2004 = {**UBUNTU_2204, "distribution_version": "20.04", "distribution_major_version": "20"}
SUPPORTED_OS = "supported: Debian 12, Ubuntu 22.04/24.04"
SUPPORTED_BRANCHES = "supported: 535, 580, 595, 610, 620"


def run_checks(tmp_path: Path, facts: dict, **variables) -> tuple[int, str]:
    return run_local_play(tmp_path, PLAYBOOK, {"ansible_facts": facts, **variables})


def refusal(output: str) -> str:
    """The failed assertion's message."""
    quoted = re.search(r'"msg": ("(?:[^"\\]|\\.)*")', output.split("fatal: [localhost]: FAILED!", 1)[1]).group(1)
    return json.loads(quoted)


@pytest.mark.parametrize("facts, variables, said", [
    (ROCKY_9, {}, f"Rocky 9.4 is not a supported GPUaaS node OS; {SUPPORTED_OS}"),
    (UBUNTU_2004, {}, f"Ubuntu 20.04 is not a supported GPUaaS node OS; {SUPPORTED_OS}"),
    (DEBIAN_12, {"node_init_nvidia_driver_branch": "550"},
     f'NVIDIA driver branch "550" is not supported; {SUPPORTED_BRANCHES} (NVIDIA\'s data-center branches)'),
    (DEBIAN_12, {"node_init_nvidia_driver_branch": 580, "node_init_nvidia_driver_version": "575.57.08"},
     'node_init_nvidia_driver_version "575.57.08" is not a version of branch 580 (such as 580.95.05)'),
], ids=["EL 9", "Ubuntu 20.04", "branch 550 (end of life)", "a version of another branch"])
def test_unsupported_input_fails_in_one_line_naming_what_is_supported(tmp_path, facts, variables, said):
    rc, output = run_checks(tmp_path, facts, **variables)
    assert rc != 0 and "accepted:" not in output, output
    assert refusal(output) == said


@pytest.mark.parametrize("facts, variables, driver", [
    (DEBIAN_12, {}, "cuda-drivers-580"),
    (UBUNTU_2204, {"node_init_nvidia_driver_branch": "535", "node_init_nvidia_driver_version": "535.261.03"},
     "nvidia-driver-535-server"),
], ids=["Debian 12, the default branch", "Ubuntu 22.04, R535 at an exact version"])
def test_supported_input_passes_and_gets_its_distributions_driver_name(tmp_path, facts, variables, driver):
    rc, output = run_checks(tmp_path, facts, **variables)
    assert rc == 0 and f"accepted: {driver}" in output, output


def test_the_checks_come_before_anything_is_installed():
    tasks = yaml.safe_load((ROLE / "tasks/main.yml").read_text())
    assert tasks[0]["ansible.builtin.import_tasks"] == "os_check.yml"
