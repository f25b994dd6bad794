"""What the service hands Ansible is data: every string of a job's inventory and extra vars is read
by ansible-core as unsafe (never rendered), except the operator's own GPUAAS_ANSIBLE_EXTRA_VARS.

The files are the ones ansible-runner writes (its own dump_artifacts), loaded with ansible-core's
DataLoader as ansible-playbook loads them (the inventory's yaml plugin and `-e @file` both call
load_from_file with trusted_as_template=True). Each check is also shown to fail on the wrong
behaviour: with the wrapping off, and with a number wrapped (ansible-core 2.19 then re-reads the
whole file as YAML, where every string is trusted)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import ansible_runner
import pytest
from ansible._internal._datatag._tags import TrustedAsTemplate
from ansible.parsing.dataloader import DataLoader
from ansible_runner.utils import dump_artifacts

from gpuaas_api.jobs import runner
from gpuaas_api.jobs.runner import HostSpec, run_playbook

JINJA = "{{ lookup('pipe', 'id') }}"
HOSTILE_HOST = HostSpec(
    node_id=7, name="node-7", address=f"::1%{JINJA}", port=22, user=f"root{JINJA}", groups=["worker"],
    host_key=None,
    hostvars={"gpuaas_node_name": JINJA, "node_init_roles": ["worker", JINJA],
              "gpu_sharing_by_host": {"node-7": [{"uuid": f"GPU-{JINJA}", "pool_id": 3, "sharing_ratio": 4,
                                                  "time_quantum_in_sec": 30, "security_level": "low",
                                                  "enabled": True, "missing": None}]}})
JOB_VARS = {"gpuaas_targets": "node-7", "gpu_sharing_by_host": HOSTILE_HOST.hostvars["gpu_sharing_by_host"],
            "nested": [[JINJA], {"deeper": {"deepest": JINJA}}], "count": 3, "ratio": 0.5, "flag": False, "none": None}


def trusted_strings(value, path="") -> list[str]:
    """Where in ``value`` a string is trusted as a template (what Ansible would render)."""
    if isinstance(value, str):
        return [path] if TrustedAsTemplate.is_tagged_on(value) else []
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in trusted_strings(item, f"{path}/{key}")]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in trusted_strings(item, f"{path}/{index}")]
    return []


def written(monkeypatch, tmp_path, operator=None) -> dict:
    """The inventory and extra vars of one run_playbook call (HOSTILE_HOST, JOB_VARS), as ansible-playbook
    reads them."""
    loaded: dict = {}

    def ansible_runner_run(**kwargs):
        dump_artifacts(kwargs)  # what ansible_runner.run writes before it starts ansible-playbook
        private, loader = Path(kwargs["private_data_dir"]), DataLoader()
        for name, path in (("inventory", private / "inventory" / "hosts.json"), ("extravars", private / "env" / "extravars")):
            loaded[name] = loader.load_from_file(str(path), cache="none", trusted_as_template=True)
            loaded[name + "_text"] = path.read_text()
        return SimpleNamespace(status="successful", rc=0)

    monkeypatch.setattr(ansible_runner, "run", ansible_runner_run)
    run_playbook(1, "test_conn", [HOSTILE_HOST], JOB_VARS, tmp_path, tmp_path / "key", lambda event: None,
                 lambda: False, operator_extravars=operator)
    return loaded


def test_no_string_of_the_inventory_or_the_extra_vars_is_trusted_as_a_template(monkeypatch, tmp_path):
    loaded = written(monkeypatch, tmp_path)

    host = loaded["inventory"]["all"]["hosts"]["node-7"]
    assert host["ansible_host"] == HOSTILE_HOST.address and host["ansible_user"] == HOSTILE_HOST.user
    assert host["gpu_sharing_by_host"] == HOSTILE_HOST.hostvars["gpu_sharing_by_host"]  # the values, unchanged
    assert loaded["extravars"]["nested"] == JOB_VARS["nested"]
    assert (loaded["extravars"]["count"], loaded["extravars"]["flag"], loaded["extravars"]["none"]) == (3, False, None)
    assert trusted_strings(loaded["inventory"]) == []
    assert trusted_strings(loaded["extravars"]) == []


def test_the_operators_own_extra_vars_stay_templates_and_the_jobs_values_win(monkeypatch, tmp_path):
    operator = {"node_init_apt_proxy": "{{ lookup('env', 'PROXY') }}", "gpuaas_targets": "all"}

    extravars = written(monkeypatch, tmp_path, operator=operator)["extravars"]

    assert trusted_strings(extravars) == ["/node_init_apt_proxy"]  # the one value meant to be rendered
    assert extravars["gpuaas_targets"] == "node-7"


def test_the_check_finds_trusted_strings_when_the_wrapping_is_off(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "as_data", lambda value: value)

    loaded = written(monkeypatch, tmp_path)

    assert "/all/hosts/node-7/ansible_host" in trusted_strings(loaded["inventory"])
    assert "/nested/1/deeper/deepest" in trusted_strings(loaded["extravars"])


def test_a_wrapped_number_makes_ansible_core_read_the_file_as_yaml_where_every_string_is_trusted(monkeypatch, tmp_path):
    """Why as_data wraps only strings: ansible-core 2.19 refuses the marker around a number, and
    falls back to YAML without a word, so the strings beside it are trusted again."""
    def wrap_everything(value):
        if isinstance(value, dict):
            return {key: wrap_everything(item) for key, item in value.items()}
        if isinstance(value, list):
            return [wrap_everything(item) for item in value]
        return {runner.UNSAFE_MARKER: value}

    monkeypatch.setattr(runner, "as_data", wrap_everything)

    extravars = written(monkeypatch, tmp_path)["extravars"]

    assert extravars["count"] == {runner.UNSAFE_MARKER: 3}  # read as YAML: the marker is just a key
    assert "/nested/1/deeper/deepest/__ansible_unsafe" in trusted_strings(extravars)


@pytest.mark.parametrize("wrapped", [True, False], ids=["wrapped", "wrapping-off"])
def test_a_real_run_never_renders_a_hostile_address(monkeypatch, tmp_path, wrapped):
    """The issue's own exploit, through ansible-runner and ansible-playbook for real: an address whose
    IPv6 zone ID holds a lookup. The API refuses it (validation.ip_address); here it reaches the
    runner past the API, as a value in the database could. The node is unreachable either way."""
    marker = tmp_path / "RENDERED"
    host = HostSpec(node_id=7, name="node-7", address=f"::1%{{{{ lookup('pipe', 'touch {marker}') }}}}lo",
                    port=22, user="root", groups=["worker"], host_key=None)
    if not wrapped:
        monkeypatch.setattr(runner, "as_data", lambda value: value)
    (tmp_path / "key").write_text("")

    result = run_playbook(1, "test_conn", [host], {"gpuaas_targets": "node-7"}, tmp_path / "data", tmp_path / "key",
                          lambda event: None, lambda: False, timeout=120)

    assert result.status == "failed"
    assert marker.exists() is not wrapped


def test_only_strings_are_wrapped_and_the_json_says_so():
    assert json.loads(json.dumps(runner.as_data({"a": ["x", 1]}))) == {"a": [{"__ansible_unsafe": "x"}, 1]}


@pytest.mark.parametrize("key", ["__ansible_unsafe", "__ansible_vault"])
def test_a_key_that_ansible_core_reads_as_a_marker_is_refused(key):
    with pytest.raises(ValueError, match="marker"):
        runner.as_data({"gpus": [{key: 5}]})
