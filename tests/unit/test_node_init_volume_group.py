"""node_init on a storage node registered without a volume group (compatibility.md: the client's
panel never sends one): the role serves the host's largest LVM volume group (by size, then name)
and returns it to the service as the gpuaas_node_volume_groups stat; a host without any fails at
init, in one line naming the problem.

The real ansible-playbook runs the role's os_check.yml on a local host, with a vgs stand-in on
PATH that prints LVM's JSON report of the volume groups given (so nothing of this machine is read).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from module_runner import run_local_play

PLAYBOOK = """
- name: A storage node's checks
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
        msg: "served: {{ node_init_volume_group }}"
"""
DEBIAN_12 = {"distribution": "Debian", "distribution_version": "12.8", "distribution_major_version": "12",
             "os_family": "Debian", "service_mgr": "systemd", "kernel": "6.1.0-41-amd64", "architecture": "x86_64"}
NO_GROUP = ("a storage node needs an LVM volume group, and this host has none (or no LVM tools); create one "
            "(vgcreate), or register the node with volume_group")


def vgs_on_path(tmp_path: Path, groups: list[tuple[str, int]] | None) -> dict:
    """A PATH whose vgs prints LVM's JSON report of ``groups`` (name, size); None: no vgs at all."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if groups is not None:
        report = {"report": [{"vg": [{"vg_name": name, "vg_size": str(size), "vg_free": str(size // 2)}
                                     for name, size in groups]}]}
        (tmp_path / "report.json").write_text(json.dumps(report))
        tool = bin_dir / "vgs"
        tool.write_text(f"#!/bin/sh\ncat {tmp_path / 'report.json'}\n")
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "ANSIBLE_SHOW_CUSTOM_STATS": "1"}


def run_checks(tmp_path: Path, groups, **variables) -> tuple[int, str]:
    variables = {"ansible_facts": DEBIAN_12, "node_init_roles": ["storage"], **variables}
    return run_local_play(tmp_path, PLAYBOOK, variables, env=vgs_on_path(tmp_path, groups))


def served(output: str) -> str | None:
    found = re.search(r'"msg": "served: ([^"]*)"', output)
    return found.group(1) if found else None


def returned(output: str) -> dict:
    """The play's custom stats (set_stats), as ansible-playbook prints them."""
    found = re.search(r"CUSTOM STATS: \**\s*RUN: (\{.*\})", output)
    return json.loads(found.group(1)) if found else {}


TIB = 1 << 40


@pytest.mark.parametrize("groups, expected", [
    ([("data", TIB)], "data"),
    ([("small", TIB), ("big", 4 * TIB), ("mid", 2 * TIB)], "big"),
    ([("zeta", 2 * TIB), ("alpha", 2 * TIB), ("tiny", 1)], "alpha"),
], ids=["the only one", "the largest by size, not by name or order", "a tie goes to the first name"])
def test_a_storage_node_without_a_volume_group_serves_its_largest(tmp_path, groups, expected):
    rc, output = run_checks(tmp_path, groups)
    assert rc == 0, output
    assert served(output) == expected
    # Returned to the service, keyed by the host: what the API records on the node.
    assert returned(output) == {"gpuaas_node_volume_groups": {"localhost": expected}}


def test_a_given_volume_group_is_kept_and_nothing_is_discovered(tmp_path):
    rc, output = run_checks(tmp_path, [("big", 4 * TIB)], node_init_volume_group="gpuaas")
    assert rc == 0 and served(output) == "gpuaas", output
    assert returned(output) == {}


@pytest.mark.parametrize("groups", [[], None], ids=["no volume group", "no LVM tools"])
def test_a_storage_node_without_any_volume_group_fails_naming_the_problem(tmp_path, groups):
    rc, output = run_checks(tmp_path, groups)
    assert rc != 0 and served(output) is None, output
    message = re.search(r'"msg": ("(?:[^"\\]|\\.)*")', output.split("fatal: [localhost]: FAILED!", 1)[1]).group(1)
    assert json.loads(message) == NO_GROUP


def test_a_node_without_the_storage_role_never_lists_volume_groups(tmp_path):
    rc, output = run_checks(tmp_path, None, node_init_roles=["worker"])  # no vgs: listing would find none
    assert rc == 0 and served(output) == "", output
    assert returned(output) == {}
