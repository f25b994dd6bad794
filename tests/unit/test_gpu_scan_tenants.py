"""The gpu_scan role's tenant part, as collect_metrics.yml runs it: the agent's status file read
by slurp, returned per host, and parsed by the service's own checks (metrics.agent_http,
node_reports.tenant_report)."""
from __future__ import annotations

import base64
import json

import yaml

from module_runner import run_local_play
from gpuaas_api import node_reports
from gpuaas_api.metrics.agent_http import status_from_bytes, tenant_section

GPU = "GPU-5a3c2a1e-0000-4000-8000-000000000001"
STATUS = {"gpus": {}, "tenants": {"state": "ok", "slots": {f"{GPU}::1": {
    "resource": "gpuaas.hosted.ai/pool-1", "gpu": GPU, "state": "running",
    "tenant": {"namespace": "team-a", "pod": "train-0", "container": "main", "uid": None},
    "vram_used_mb": 1.0, "gpu_seconds": 2.0}}}}


def play(out: str) -> str:
    return yaml.safe_dump([{
        "hosts": "localhost", "gather_facts": False, "connection": "local",
        "roles": [{"role": "hostedai.gpuaas.gpu_scan"}],
        "post_tasks": [{"name": "What set_stats returned", "ansible.builtin.copy": {
            "content": "{{ {'statuses': gpu_scan_agent_statuses if gpu_scan_include_tenants else none} | to_json }}",
            "dest": out}}]}])


def run(tmp_path, status_file, include=True) -> dict:
    out = tmp_path / "out.json"
    variables = {"gpu_scan_agent_status_file": str(status_file), "gpu_scan_include_metrics": True,
                 "gpu_scan_include_tenants": include}
    rc, output = run_local_play(tmp_path, play(str(out)), variables, check=False)
    assert rc == 0, output
    return json.loads(out.read_text())["statuses"]


def test_the_agents_status_file_reaches_the_service_checks_as_written(tmp_path):
    status_file = tmp_path / "status.json"
    status_file.write_text(json.dumps(STATUS))

    statuses = run(tmp_path, status_file)

    assert list(statuses) == ["localhost"]
    parsed = status_from_bytes(base64.b64decode(statuses["localhost"]["content"]))
    slots = node_reports.tenant_report(tenant_section(parsed))
    assert [(slot.gpu_uuid, slot.slot, slot.team, slot.pod, slot.gpu_seconds) for slot in slots] == \
        [(GPU, 1, "team-a", "train-0", 2.0)]


def test_a_host_without_the_file_is_left_out_and_the_play_goes_on(tmp_path):
    assert run(tmp_path, tmp_path / "absent.json") == {}


def test_without_tenants_the_file_is_not_read(tmp_path):
    status_file = tmp_path / "status.json"
    status_file.write_text(json.dumps(STATUS))
    assert run(tmp_path, status_file, include=False) is None
