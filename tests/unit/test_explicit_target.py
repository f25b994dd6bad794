"""The destructive playbooks' guard (role explicit_target), run by the real ansible-playbook.

Every host is local (ansible_connection=local): the guard itself contacts no host, and the play
after it only prints which hosts reached it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from module_runner import COLLECTIONS

INVENTORY = """
all:
  vars: {ansible_connection: local, ansible_python_interpreter: %s}
  children:
    controller: {hosts: {ctrl-01: {}}}
    worker: {hosts: {gpu-01: {}, gpu-02: {}}}
"""
PLAYBOOK = """
- name: A destructive play
  hosts: "{{ gpuaas_targets | default('all') }}"
  gather_facts: false
  roles:
    - role: hostedai.gpuaas.explicit_target
      explicit_target_operation: the test play wipes nodes
  tasks:
    - name: Reached
      ansible.builtin.debug:
        msg: "reached {{ inventory_hostname }}"
"""


@pytest.fixture
def play(tmp_path):
    (tmp_path / "hosts.yml").write_text(INVENTORY % sys.executable)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    home = tmp_path / "ansible-home"
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_HOME": str(home),
           "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}

    def run(*args: str) -> tuple[int, str, set[str]]:
        done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "hosts.yml", *args,
                               "play.yml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        reached = set(re.findall(r'"msg": "reached (\S+)"', done.stdout))
        return done.returncode, done.stdout, reached
    return run


def test_no_target_refuses_in_one_message_and_reaches_no_host(play):
    rc, out, reached = play()
    assert rc == 2
    assert reached == set()
    assert ("Refused: the test play wipes nodes, so it needs an explicit target: run it with "
            "-e gpuaas_targets=HOSTS or --limit HOSTS") in out
    assert out.count("fatal: [") == 1, "one failure (run_once), not one per host"


@pytest.mark.parametrize("args, hosts", [
    (["-e", "gpuaas_targets=gpu-01"], {"gpu-01"}),
    (["--limit", "gpu-01,gpu-02"], {"gpu-01", "gpu-02"}),
    (["-e", '{"gpuaas_targets": ["gpu-02"]}'], {"gpu-02"}),
    (["-e", "gpuaas_targets=worker:!gpu-02"], {"gpu-01"}),
    # The controller only when named, by its name or its group:
    (["-e", "gpuaas_targets=all"], {"gpu-01", "gpu-02"}),
    (["-e", "gpuaas_targets=*"], {"gpu-01", "gpu-02"}),
    (["--limit", "all"], {"gpu-01", "gpu-02"}),
    (["-e", "gpuaas_targets=ctrl-01,gpu-01"], {"ctrl-01", "gpu-01"}),
    (["--limit", "controller"], {"ctrl-01"}),
])
def test_an_explicit_target_runs_there_and_the_controller_only_when_named(play, args, hosts):
    rc, out, reached = play(*args)
    assert rc == 0, out
    assert reached == hosts
