"""Where the gpu_sharing role takes the agent from (tasks/agent_source.yml; issue #28, section 5):
a wheel, or an index with hash-pinned requirements, never a bare name from a public index.

The real ansible-playbook runs the role on a local host in check mode: the checks come before any
task that changes the node, so a refused source fails there and nothing else runs.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from module_runner import run_local_play

HASH = "--hash=sha256:" + "ab" * 32
AGENT = f"gpuaas-agent==0.1.0 {HASH}"
INDEX = "https://pypi.example.internal/simple/"
NO_SOURCE = "The gpuaas agent has no source"
TWO_SOURCES = "set together; set the wheel, or the index with its requirements"
UNPINNED = "gpu_sharing_agent_requirements must name gpuaas-agent once"

PLAYBOOK = """
- name: The agent's source
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: The role's entry point under test
      ansible.builtin.include_role:
        name: hostedai.gpuaas.gpu_sharing
        tasks_from: "{{ entry }}"
    - name: Reached
      ansible.builtin.debug:
        msg: source accepted
"""


def run_role(tmp_path: Path, entry: str, source: dict) -> tuple[int, str]:
    return run_local_play(tmp_path, PLAYBOOK, {"entry": entry, "gpu_sharing_gpus": [], **source})


@pytest.mark.parametrize("source, refusal", [
    ({}, NO_SOURCE),
    # An index alone, or requirements alone, is no source: pip would take the newest of that name.
    ({"gpu_sharing_agent_index_url": INDEX}, UNPINNED),
    ({"gpu_sharing_agent_requirements": [AGENT]}, NO_SOURCE),
    ({"gpu_sharing_agent_index_url": INDEX, "gpu_sharing_agent_requirements": ["gpuaas-agent==0.1.0"]}, UNPINNED),
    ({"gpu_sharing_agent_index_url": INDEX, "gpu_sharing_agent_requirements": [f"gpuaas-agent>=0.1 {HASH}"]},
     UNPINNED),
    ({"gpu_sharing_agent_index_url": INDEX, "gpu_sharing_agent_requirements": [AGENT, "grpcio==1.85.1"]},
     UNPINNED),
    ({"gpu_sharing_agent_index_url": INDEX, "gpu_sharing_agent_requirements": [f"grpcio==1.85.1 {HASH}"]},
     UNPINNED),
    ({"gpu_sharing_agent_wheel": "/srv/gpuaas_agent-0.1.0-py3-none-any.whl", "gpu_sharing_agent_index_url": INDEX,
      "gpu_sharing_agent_requirements": [AGENT]}, TWO_SOURCES),
], ids=["nothing", "an index without requirements", "requirements without an index", "no hash",
        "not pinned to a version", "a dependency without a hash", "no agent", "a wheel and an index"])
def test_the_role_refuses_to_install_the_agent_without_one_pinned_source(tmp_path, source, refusal):
    rc, out = run_role(tmp_path, "agent_source", source)

    assert rc == 2, out
    assert refusal in out
    assert "source accepted" not in out


@pytest.mark.parametrize("source", [
    {"gpu_sharing_agent_wheel": "/srv/gpuaas_agent-0.1.0-py3-none-any.whl"},
    {"gpu_sharing_agent_index_url": INDEX,
     "gpu_sharing_agent_requirements": [AGENT, f"grpcio==1.85.1 {HASH} --hash=sha256:{'cd' * 32}",
                                        f"PyYAML==6.0.3 {HASH}"]},
], ids=["a wheel", "a hash-pinned index"])
def test_a_wheel_or_a_hash_pinned_index_is_accepted(tmp_path, source):
    rc, out = run_role(tmp_path, "agent_source", source)

    assert rc == 0, out
    assert "source accepted" in out


@pytest.mark.parametrize("entry", ["main", "agent"])
def test_every_way_into_the_role_checks_the_source_before_it_changes_anything(tmp_path, entry):
    # main (gpu_sharing, pool_apply) and agent (gpuaas_enable, node_join): both refuse first.
    rc, out = run_role(tmp_path, entry, {})

    assert rc == 2, out
    assert NO_SOURCE in out
    assert "Install Python's venv module" not in out
