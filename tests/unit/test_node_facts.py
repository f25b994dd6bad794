"""The node_facts role, run by ansible-runner as the REST service runs it, against this machine.

Every host is local (ansible_connection=local), so the values it reports can be compared with
what this machine's kernel says: nproc, /proc/meminfo, /sys/block.  The result is read where the
service reads it: the set_stats data of the run's final stats event (``gpuaas_node_facts``).
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import ansible_runner
import pytest
import yaml

from module_runner import COLLECTIONS, REPO

KEYS = {"cpu_model", "cores", "total_memory_in_mb", "total_disk_in_mb"}
DEFAULTS = yaml.safe_load((REPO / "roles/node_facts/defaults/main.yml").read_text())


def run_plays(tmp_path: Path, plays: list[dict], hosts=("node-1", "node-2"), envvars: dict | None = None):
    """Run ``plays`` on local hosts; return (runner, artifact data, {task name: [host events]})."""
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                         "hosts": {host: {} for host in hosts}}}
    home = tmp_path / "ansible-home"
    (tmp_path / "runner").mkdir()
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps(plays))
    runner = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"), playbook=str(playbook), inventory=inventory, quiet=True,
        envvars={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                 "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_HOME": str(home),
                 "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), **(envvars or {})},
    )
    events: dict[str, list] = {}
    for event in runner.events:
        data = event.get("event_data", {})
        if event["event"] in ("runner_on_ok", "runner_on_skipped", "runner_on_failed", "runner_on_unreachable"):
            events.setdefault(data["task"], []).append((event["event"], data["host"]))
    stats = [e for e in runner.events if e["event"] == "playbook_on_stats"][-1]["event_data"]
    return runner, stats.get("artifact_data", {}), events


def role_play(name="Node facts", **variables) -> dict:
    return {"name": name, "hosts": "all", "gather_facts": False,
            "roles": [{"role": "hostedai.gpuaas.node_facts", "vars": variables}]}


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def this_machine() -> dict:
    """What the kernel says, read without Ansible."""
    memtotal_kib = int(re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M).group(1))
    models = re.findall(r"^model name\s*:\s*(.+?)\s*$", Path("/proc/cpuinfo").read_text(), re.M)
    disk_bytes = 0
    for device in Path("/sys/block").iterdir():
        if not re.match(DEFAULTS["node_facts_disk_exclude_pattern"], device.name):
            disk_bytes += int((device / "size").read_text()) * 512  # sysfs counts 512-byte sectors
    return {"cpu_model": models[-1] if models else None, "cores": len(os.sched_getaffinity(0)),
            "total_memory_in_mb": memtotal_kib // 1024, "total_disk_in_mb": disk_bytes // 1048576}


def test_each_host_reports_its_cpu_memory_and_disks_once_per_play(tmp_path):
    runner, artifact_data, events = run_plays(tmp_path, [role_play(node_facts_report_dir=str(tmp_path / "reports"))])

    assert runner.status == "successful"
    assert set(artifact_data) == {"gpuaas_node_facts"}
    facts = artifact_data["gpuaas_node_facts"]
    assert set(facts) == {"node-1", "node-2"}
    expected = this_machine()
    for host, result in facts.items():
        assert set(result) == KEYS
        assert result == expected, host
        assert all(is_int(result[key]) for key in ("cores", "total_memory_in_mb", "total_disk_in_mb"))  # never "8"
        assert result["cpu_model"] is None or isinstance(result["cpu_model"], str)
        assert json.loads((tmp_path / "reports/gpuaas_node_facts" / f"{host}.json").read_text()) == result
    assert [kind for kind, host in events["Return the node facts"]] == ["runner_on_ok"]  # run_once: one action


def test_a_second_play_of_the_same_run_publishes_the_first_result_without_gathering_again(tmp_path):
    runner, artifact_data, events = run_plays(tmp_path, [role_play("First"), role_play("Second")])

    assert runner.status == "successful"
    assert artifact_data["gpuaas_node_facts"]["node-1"] == this_machine()
    gathered = events["Gather the hardware facts"]
    assert sorted(kind for kind, host in gathered) == ["runner_on_ok"] * 2 + ["runner_on_skipped"] * 2


@pytest.mark.parametrize("present, expected", [
    ({}, {"cpu_model": None, "cores": None, "total_memory_in_mb": None, "total_disk_in_mb": None}),
    ({"processor_nproc": 64, "memtotal_mb": "lots", "processor": ["0", "GenuineIntel", "Intel(R) Xeon(R) Gold 6338"],
      "devices": {"loop0": {"sectors": 2048, "sectorsize": "512"},
                  "nvme0n1": {"sectors": 937703088, "sectorsize": "512"},
                  "nvme1n1": {"sectors": 468851544, "sectorsize": "4096"},
                  "dm-0": {"sectors": 937701040, "sectorsize": "512"}}},
     {"cpu_model": "Intel(R) Xeon(R) Gold 6338", "cores": 64, "total_memory_in_mb": None,
      "total_disk_in_mb": (937703088 * 512 + 468851544 * 4096) // 1048576}),
    ({"processor": ["0", "1"], "processor_nproc": 0, "memtotal_mb": 515703, "devices": {"zram0": {"sectors": 8}}},
     {"cpu_model": None, "cores": None, "total_memory_in_mb": 515703, "total_disk_in_mb": None}),
], ids=["no facts", "partial and malformed", "arm64 without a model name"])
def test_partial_or_malformed_facts_are_null_and_never_fail_the_play(tmp_path, present, expected):
    """node_facts_gather=false uses the facts the play has: here exactly ``present``, set by a test module."""
    library = tmp_path / "library"
    library.mkdir()
    (library / "fake_facts.py").write_text(FAKE_FACTS_MODULE)
    plays = [{"name": "Facts as a fact cache or gather_facts left them", "hosts": "all", "gather_facts": False,
              "tasks": [{"name": "Set the facts", "fake_facts": {"facts": present}}]},
             role_play(node_facts_gather=False)]
    runner, artifact_data, unused_events = run_plays(tmp_path, plays, envvars={"ANSIBLE_LIBRARY": str(library)})

    assert runner.status == "successful"
    assert artifact_data["gpuaas_node_facts"] == {"node-1": expected, "node-2": expected}


FAKE_FACTS_MODULE = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={"facts": {"type": "dict", "required": True}})
module.exit_json(changed=False, ansible_facts=module.params["facts"])
"""
