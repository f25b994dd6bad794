"""Tenants in the service: the agents' slot reports collected and stored, `subscribed_teams` as
hosted·ai's admin client calls it, pool capacity in slots, per-team series and /metrics.

The reports are the agent's `tenants` section (docs/agent.md, "Tenants"), delivered the two ways
the service reads them: the collect_metrics job's result (the agent's status file as
ansible.builtin.slurp returns it) and, in one test, the agent's own HTTP server.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import uuid as uuidlib

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from api_helpers import assert_error, create, settle
from gpuaas_api.db import session
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.metrics.collector import submit_collection
from gpuaas_api.models import Gpu, Job, Node, TenantRollup
from gpuaas_api.shared import sharing_policy

H100_MB, H100_TFLOPS = 81559, 989.5
# The client's exact request (packet-oss src/lib/gpuaas-admin/pools.ts, getPoolSubscribedTeams).
CLIENT_QUERY = "sort_least_consumed=1&from_time_seconds=0&page=0&limit=100"


def nvml_uuid(name: str) -> str:
    return f"GPU-{uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name)}"


@pytest.fixture
def fleet(app, client, fleet_db):
    """fleet_db with NVML-format GPU UUIDs (an agent reports no other), and a ratio-4 pool on w1's two GPUs."""
    with app.app_context():
        for gpu in session().scalars(select(Gpu)):
            gpu.uuid = nvml_uuid(gpu.uuid)
        session().commit()
    fleet_db["uuids"] = {name: [nvml_uuid(uuid) for uuid in uuids] for name, uuids in fleet_db["uuids"].items()}
    reply = create(client, fleet_db, attach_gpu_ids=fleet_db["uuids"]["w1"], sharing_ratio=4).get_json()
    settle(app, reply)
    return {**fleet_db, "pool": reply, "resource": sharing_policy.pool_resource_name(
        reply["id"], app.config["GPUAAS"].POOL_RESOURCE_PREFIX)}


def held(resource: str, gpu: str, slot: int, team: str, pod: str, running=True, vram=0.0, seconds=0.0,
         uid: str | None = None, container="main") -> tuple[str, dict]:
    """One held slot as the agent reports it."""
    return f"{gpu}::{slot}", {
        "resource": resource, "gpu": gpu, "state": "running" if running else "idle",
        "tenant": {"namespace": team, "pod": pod, "container": container,
                   "uid": uid or str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{team}/{pod}"))},
        "processes": [], "vram_used_mb": vram, "gpu_seconds": seconds, "shared_with": []}


def tenants(*slots, state="ok") -> dict:
    return {"state": state, "reason": "", "sampled_at": 1796688407.34, "slots": dict(slots), "flagged": [],
            "unknown": [], "infrastructure": []}


def slurped(report: dict | None) -> dict:
    """The agent's status file as ansible.builtin.slurp returns it."""
    status = {"gpus": {}, "tenants": report}
    return {"content": base64.b64encode(json.dumps(status).encode()).decode(), "encoding": "base64",
            "source": "/run/gpuaas/agent/status.json"}


def collect(app, fleet, reports: dict, raw: dict | None = None) -> Job:
    """One collect_metrics job to its end: every pool GPU healthy, ``reports`` per node name (its
    agent's tenants), or ``raw`` per node name (the slurp result as is)."""
    with app.app_context():
        job = submit_collection()
        nodes = {node.name: node for node in session().scalars(select(Node))}
        scan = {node.inventory_name: {"gpus": [
            {"uuid": uuid, "status": "ok", "metrics": {"utilization_gpu_percent": 50, "utilization_memory_percent": 5,
                                                       "memory_used_mb": 2048, "temperature_c": 51, "power_w": 200}}
            for uuid in fleet["uuids"][name]]} for name, node in nodes.items() if name in fleet["uuids"]}
        statuses = {nodes[name].inventory_name: slurped(report) for name, report in reports.items()}
        statuses.update({nodes[name].inventory_name: value for name, value in (raw or {}).items()})
        finalize(job.id, "successful", 0, "", {"gpuaas_gpu_scan": scan, "gpuaas_agent_status": statuses},
                 host_outcomes={node_id: True for node_id in job.extravars["targets"]})
        return session().get(Job, job.id)


def teams(client, pool_id: int, query: str = CLIENT_QUERY) -> dict:
    reply = client.get(f"/gpuaas/pool/{pool_id}/subscribed_teams?{query}")
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def by_team(reply: dict) -> dict:
    return {team["team_id"]: team for team in reply["data"]}


def test_the_client_reads_each_namespace_with_its_slots_ram_and_tflops(app, client, fleet):
    gpu0, gpu1 = fleet["uuids"]["w1"]
    resource, pool_id = fleet["resource"], fleet["pool"]["id"]
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "train-0", vram=3000.0, seconds=12.5),
                                       held(resource, gpu0, 2, "team-a", "train-0", vram=3000.0, seconds=12.5),
                                       held(resource, gpu1, 1, "team-b", "infer", running=False))})

    reply = teams(client, pool_id)

    assert (reply["total"], reply["page"], reply["limit"]) == (3, 0, 100)  # occupied slots, not teams
    found = by_team(reply)
    assert set(found) == {"team-a", "team-b"}
    a, b = found["team-a"], found["team-b"]
    assert (a["team_name"], a["status"], a["slots"], a["pods"]) == ("team-a", "running", 2, 1)
    assert a["total_ram_mb"] == 2 * (H100_MB // 4) and b["total_ram_mb"] == H100_MB // 4
    assert a["total_tflops"] == round(2 * H100_TFLOPS / 4, 2) and b["total_tflops"] == round(H100_TFLOPS / 4, 2)
    assert (a["vram_used_mb"], a["gpu_seconds"]) == (6000.0, 25.0)
    assert (b["status"], b["gpu_seconds"]) == ("idle", 0.0)
    assert isinstance(a["team_id"], str)
    # least consumed first, as the client asks; most first otherwise
    assert [team["team_id"] for team in reply["data"]] == ["team-b", "team-a"]
    assert [team["team_id"] for team in teams(client, pool_id, "sort_least_consumed=0")["data"]] == ["team-a", "team-b"]


def test_pool_capacity_counts_slots_held_and_free_on_healthy_gpus(app, client, fleet):
    gpu0, gpu1 = fleet["uuids"]["w1"]
    resource, pool_id = fleet["resource"], fleet["pool"]["id"]
    before = client.get(f"/gpuaas/pool/{pool_id}").get_json()
    assert (before["total_gpus"], before["allocated_gpus"], before["available_gpus"]) == (8, 0, 8)
    assert before["region_id"] == client.get(f"/gpuaas/{fleet['gpuaas_id']}").get_json()["region_id"]
    assert dt.datetime.fromisoformat(before["created_at"]).tzinfo is not None

    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p"), held(resource, gpu1, 3, "team-b", "q"))})
    listed = client.get(f"/gpuaas/{fleet['gpuaas_id']}/pool/list").get_json()["items"]
    pool = next(item for item in listed if item["id"] == pool_id)
    assert (pool["total_gpus"], pool["allocated_gpus"], pool["available_gpus"]) == (8, 2, 6)
    # The client: allocated ÷ total as a percentage, available > 0 as "has capacity".
    assert round(pool["allocated_gpus"] / pool["total_gpus"] * 100) == 25

    with app.app_context():  # gpu1 stops answering: its slots offer nothing, its held slot stays counted
        session().scalars(select(Gpu).where(Gpu.uuid == gpu1)).one().assignment_status = "UNAVAILABLE"
        session().commit()
    pool = client.get(f"/gpuaas/pool/{pool_id}").get_json()
    assert (pool["total_gpus"], pool["allocated_gpus"], pool["available_gpus"]) == (8, 2, 3)


def test_a_deleted_pods_team_leaves_the_list_and_stays_in_an_earlier_window(app, client, fleet):
    gpu0, gpu1 = fleet["uuids"]["w1"]
    resource, pool_id = fleet["resource"], fleet["pool"]["id"]
    started = int(dt.datetime.now(dt.timezone.utc).timestamp()) - 1
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p", seconds=4.0),
                                       held(resource, gpu1, 1, "team-b", "q", seconds=7.0))})
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p", seconds=6.0))})

    now = teams(client, pool_id)
    assert set(by_team(now)) == {"team-a"} and now["total"] == 1

    since = teams(client, pool_id, f"from_time_seconds={started}")
    assert set(by_team(since)) == {"team-a", "team-b"} and since["total"] == 1
    ended = by_team(since)["team-b"]
    assert (ended["status"], ended["slots"], ended["total_ram_mb"], ended["gpu_seconds"]) == ("ended", 0, 0, 7.0)
    assert ended["last_seen"] is not None
    later = int(dt.datetime.now(dt.timezone.utc).timestamp()) + 3600
    assert set(by_team(teams(client, pool_id, f"from_time_seconds={later}"))) == {"team-a"}  # held now: listed


def test_gpu_time_stores_the_counters_increases_and_detects_resets(app, client, fleet):
    gpu0 = fleet["uuids"]["w1"][0]
    resource, pool_id = fleet["resource"], fleet["pool"]["id"]
    for seconds in (10.0, 25.0, 5.0):  # 25 -> 5: the agent restarted; its counter counts from 0 again
        collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p", seconds=seconds))})
    assert by_team(teams(client, pool_id))["team-a"]["gpu_seconds"] == 10.0 + 15.0 + 5.0

    # Another Pod takes the slot: its counter started at 0, so all of it is new, however it compares.
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p2", seconds=8.0))})
    assert by_team(teams(client, pool_id))["team-a"]["gpu_seconds"] == 30.0 + 8.0
    # A control: had the service stored counters instead of increases, the sum would be 48 (10+25+5+8).
    with app.app_context():
        assert session().scalar(select(func.sum(TenantRollup.gpu_seconds)).where(
            TenantRollup.width_seconds == 60)) == pytest.approx(38.0)


@pytest.mark.parametrize("query, expected", [
    ("page=0&limit=1", (["team-b"], 3)),
    ("page=1&limit=1", (["team-a"], 3)),
    ("page=7&limit=1", ([], 3)),  # beyond the end: empty, with the right total
    ("team_id=team-a", (["team-a"], 2)),
    ("team_id=nobody", ([], 0)),  # an unknown team: an empty page, not an error
    ("team_id=%7B%7B%20lookup('pipe','id')%20%7D%7D", ([], 0)),
])
def test_pages_and_the_team_filter(app, client, fleet, query, expected):
    gpu0, gpu1 = fleet["uuids"]["w1"]
    resource, pool_id = fleet["resource"], fleet["pool"]["id"]
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p", seconds=9.0),
                                       held(resource, gpu0, 2, "team-a", "p", seconds=9.0),
                                       held(resource, gpu1, 1, "team-b", "q", seconds=1.0))})
    reply = teams(client, pool_id, "sort_least_consumed=1&" + query)
    assert ([team["team_id"] for team in reply["data"]], reply["total"]) == expected


@pytest.mark.parametrize("query, field", [
    ("page=-1", "page"), ("limit=0", "limit"), ("limit=1001", "limit"), ("from_time_seconds=-5", "from_time_seconds"),
    ("sort_least_consumed=2", "sort_least_consumed"), ("from_time_seconds=abc", "from_time_seconds"),
])
def test_a_bad_query_is_a_field_error(client, fleet, query, field):
    assert_error(client.get(f"/gpuaas/pool/{fleet['pool']['id']}/subscribed_teams?{query}"), 422, field)


def test_an_unknown_pool_is_404(client, fleet):
    assert_error(client.get("/gpuaas/pool/999999/subscribed_teams?" + CLIENT_QUERY), 404)


def _hostile_variants(resource: str, gpu0: str, other_gpu: str):
    good = held(resource, gpu0, 1, "team-a", "p")

    def changed(slot=None, **tenant_or_slot):
        key, entry = slot or good
        entry = json.loads(json.dumps(entry))
        for name, value in tenant_or_slot.items():
            (entry["tenant"] if name in ("namespace", "pod", "container", "uid") else entry)[name] = value
        return key, entry
    return {
        "template in a namespace": changed(namespace="{{ lookup('pipe', 'id') }}"),
        "upper-case namespace": changed(namespace="Team-A"),
        "namespace too long": changed(namespace="a" * 64),
        "pod name with a slash": changed(pod="../../etc/passwd"),
        "container with a newline": changed(container="main\nx"),
        "uid not a UUID": changed(uid="0; rm -rf /"),
        "negative GPU time": changed(gpu_seconds=-1),
        "GPU time beyond any GPU": changed(gpu_seconds=1e300),
        "vRAM as text": changed(vram_used_mb="3000"),
        "vRAM as a boolean": changed(vram_used_mb=True),
        "a state the agent has not": changed(state="owned"),
        "device ID not a slot's": ("GPU-../../x::1", good[1]),
        "slot 0": (f"{gpu0}::0", good[1]),
        "device ID of another node's GPU with a bad slot": (f"{other_gpu}::abc", good[1]),
    }


@pytest.mark.parametrize("variant", list(_hostile_variants("r", "g", "o")))
def test_a_hostile_report_is_refused_whole_and_the_last_rows_stay(app, client, fleet, variant, caplog):
    gpu0, gpu1 = fleet["uuids"]["w1"]
    resource, pool_id = fleet["resource"], fleet["pool"]["id"]
    collect(app, fleet, {"w1": tenants(held(resource, gpu1, 1, "team-b", "q", seconds=2.0))})
    bad = _hostile_variants(resource, gpu0, fleet["uuids"]["w2"][0])[variant]

    collect(app, fleet, {"w1": tenants(held(resource, gpu1, 1, "team-b", "q", seconds=3.0), bad)})

    reply = teams(client, pool_id)
    assert set(by_team(reply)) == {"team-b"} and reply["total"] == 1
    assert by_team(reply)["team-b"]["gpu_seconds"] == 2.0  # nothing of the refused report counted
    assert "nothing of its report was stored" in caplog.text


def test_the_hostile_reports_control_a_valid_report_of_the_same_shape_is_stored(app, client, fleet):
    """The refusals above are the checks', not a broken report builder's."""
    gpu0, gpu1 = fleet["uuids"]["w1"]
    resource = fleet["resource"]
    collect(app, fleet, {"w1": tenants(held(resource, gpu1, 1, "team-b", "q", seconds=3.0),
                                       held(resource, gpu0, 1, "team-a", "p"))})
    assert set(by_team(teams(client, fleet["pool"]["id"]))) == {"team-a", "team-b"}


def test_slots_outside_the_pool_or_its_resource_or_ratio_are_not_counted(app, client, fleet):
    gpu0 = fleet["uuids"]["w1"][0]
    w2_gpu = fleet["uuids"]["w2"][0]  # not in the pool
    resource, pool_id = fleet["resource"], fleet["pool"]["id"]
    whole_key, whole = held("nvidia.com/gpu", w2_gpu, 1, "whole-gpu", "w")
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 5, "over-ratio", "p"),  # ratio 4
                                       (whole_key.split("::", maxsplit=1)[0], whole),  # a whole GPU's device: its UUID alone
                                       held("nvidia.com/gpu", gpu0, 2, "whole-gpu", "p"),
                                       held(resource, w2_gpu, 1, "other-node", "p"),
                                       held(resource, gpu0, 1, "team-a", "p"))})
    assert set(by_team(teams(client, pool_id))) == {"team-a"}


def test_an_unknown_report_or_a_node_not_read_keeps_its_last_rows(app, client, fleet):
    gpu0 = fleet["uuids"]["w1"][0]
    resource, pool_id = fleet["resource"], fleet["pool"]["id"]
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p"))})
    collect(app, fleet, {"w1": tenants(state="unknown")})  # the kubelet did not answer the agent
    assert set(by_team(teams(client, pool_id))) == {"team-a"}
    collect(app, fleet, {}, raw={"w1": {"failed": True, "msg": "file not found"}})  # no status file
    assert set(by_team(teams(client, pool_id))) == {"team-a"}
    collect(app, fleet, {}, raw={"w1": {"content": "not base64!"}})
    assert set(by_team(teams(client, pool_id))) == {"team-a"}
    collect(app, fleet, {"w1": tenants()})  # a report: every slot free now
    assert teams(client, pool_id) == {"data": [], "total": 0, "page": 0, "limit": 100}


def test_the_collection_job_keeps_no_status_file_in_its_record(app, client, fleet):
    gpu0 = fleet["uuids"]["w1"][0]
    job = collect(app, fleet, {"w1": tenants(held(fleet["resource"], gpu0, 1, "team-a", "p"))})
    assert "gpuaas_agent_status" not in job.result and "gpuaas_gpu_scan" in job.result


def test_an_unknown_gpu_model_has_no_tflops(app, client, fleet):
    gpu0, gpu1 = fleet["uuids"]["w1"]
    with app.app_context():
        session().scalars(select(Gpu).where(Gpu.uuid == gpu1)).one().model = "NVIDIA Imaginary 9000"
        session().commit()
    resource = fleet["resource"]
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p"), held(resource, gpu1, 1, "team-b", "q"),
                                       held(resource, gpu0, 2, "team-b", "q"))})
    found = by_team(teams(client, fleet["pool"]["id"]))
    assert found["team-a"]["total_tflops"] == round(H100_TFLOPS / 4, 2)
    assert found["team-b"]["total_tflops"] is None  # one slot on a GPU the table lacks: no guess


def test_per_team_series_in_the_pool_metrics(app, client, fleet):
    gpu0, gpu1 = fleet["uuids"]["w1"]
    resource, pool_id = fleet["resource"], fleet["pool"]["id"]
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p", vram=100.0, seconds=1.0),
                                       held(resource, gpu0, 2, "team-a", "p", vram=100.0, seconds=1.0),
                                       held(resource, gpu1, 1, "team-b", "q", vram=50.0, seconds=4.0))})
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p", vram=300.0, seconds=3.0),
                                       held(resource, gpu1, 1, "team-b", "q", vram=50.0, seconds=5.0))})

    reply = client.get(f"/gpuaas/pool/{pool_id}/metrics?time_grouping=day").get_json()

    a, b = reply["teams"]["team-a"], reply["teams"]["team-b"]
    assert len(a) == 1 and len(b) == 1
    # team-a: 2 slots then 1 (avg 1.5, max 2); vRAM 200 then 300; GPU time 2 then +1 (slot 2 left; slot 1 1 -> 3)
    assert (a[0]["samples"], a[0]["slots"], a[0]["vram_used_mb"], a[0]["gpu_seconds"]) == \
        (2, {"avg": 1.5, "max": 2.0}, {"avg": 250.0, "max": 300.0}, 4.0)
    assert (b[0]["slots"], b[0]["gpu_seconds"]) == ({"avg": 1.0, "max": 1.0}, 5.0)


def _families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_prometheus_has_each_teams_slots_vram_and_gpu_time(app, client, fleet):
    gpu0, gpu1 = fleet["uuids"]["w1"]
    resource, pool_id = fleet["resource"], fleet["pool"]["id"]
    collect(app, fleet, {"w1": tenants(held(resource, gpu0, 1, "team-a", "p", vram=1024.0, seconds=6.0),
                                       held(resource, gpu1, 1, "team-a", "p2", vram=1024.0, seconds=1.5))})
    families = _families(client.get("/metrics").get_data(as_text=True))

    def value(family: str, suffix: str = "") -> float:
        samples = [s for s in families[family].samples if s.name == family + suffix and s.labels["team"] == "team-a"]
        assert len(samples) == 1 and samples[0].labels["pool_id"] == str(pool_id)
        return samples[0].value
    assert value("gpuaas_pool_team_slots") == 2
    assert value("gpuaas_pool_team_vram_used_bytes") == 2048 * 1024 * 1024
    assert families["gpuaas_pool_team_gpu_seconds"].type == "counter"
    assert value("gpuaas_pool_team_gpu_seconds", "_total") == 7.5
