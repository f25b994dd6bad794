"""What a node reports is checked against the real formats before it is stored (node_reports.py): a
report with one bad value fails the scan, says why, and stores none of it, not even in the job."""
from __future__ import annotations

import itertools
import json

import pytest
from sqlalchemy import select

from api_helpers import add_node, set_status
from gpuaas_api.db import session
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.models import Cluster, Gpu, Job, Node, Npu
from gpuaas_api.states import NodeStatus

JINJA = "{{ lookup('pipe', 'id') }}"
UUID0 = "GPU-6b2d3c1e-9f7a-4e1b-8c3d-2a1f0e9d8c7b"
UUID1 = "GPU-0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
NAMES = (f"node {number}" for number in itertools.count())


def gpu(index=0, uuid=UUID0, **changes):
    entry = {"index": index, "uuid": uuid, "vendor": "NVIDIA", "model": "NVIDIA H100 80GB HBM3", "memory_mb": 81559,
             "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0", "compute_mode": "DEFAULT", "mig_mode": "disabled",
             "status": "ok"}
    return {**entry, **changes}


def gpu_scan(node_id, *gpus, **driver):
    report = {"driver_state": "present", "driver_version": "550.54.15", "cuda_version": "12.4", "gpus": list(gpus),
              **driver}
    return {"gpuaas_gpu_scan": {f"node-{node_id}": report}}


def scanned(app, client, region, operation, artifact) -> tuple[dict, dict, int]:
    """A node whose scan finished with ``artifact``: its scan status reply, its node reply, its job id."""
    node = add_node(client, region, name=next(NAMES))
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    reply = client.get(f"/gpuaas/node/{operation}?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(reply["job_id"], "successful", 0, "", artifact(node["id"]))
    status = client.get(f"/gpuaas/node/{operation}/status?scan_id={reply['scan_id']}").get_json()
    return status, client.get(f"/gpuaas/node/{node['id']}").get_json(), reply["job_id"]


@pytest.mark.parametrize("uuid", [UUID0, "MIG-5c4b3a29-1807-4f6e-9d5c-4b3a29180716",
                                  f"MIG-{UUID0}/7/0"], ids=["gpu", "mig", "mig-before-r470"])
def test_real_reports_are_stored(app, client, region, uuid):
    status, node, _job = scanned(app, client, region, "scan_gpus",
                                 lambda node_id: gpu_scan(node_id, gpu(0, uuid, model="Tesla V100-SXM2-32GB"),
                                                          gpu(1, UUID1, model="NVIDIA RTX A6000")))

    assert status["status"] == "completed"
    assert [(g["uuid"], g["gpu_model"]) for g in node["gpus"]] == [(uuid, "Tesla V100-SXM2-32GB"),
                                                                   (UUID1, "NVIDIA RTX A6000")]


HOSTILE_GPU_VALUES = [
    ("UUID", {"uuid": f"GPU-{JINJA}"}),
    ("UUID", {"uuid": "GPU-6b2d3c1e-9f7a-4e1b-8c3d-2a1f0e9d8c7b\n"}),
    ("UUID", {"uuid": "GPU-" + "a" * 100}),
    ("model name", {"model": f"NVIDIA {JINJA}"}),
    ("model name", {"model": "NVIDIA H100\x1b[31m"}),
    ("model name", {"model": "N" * 97}),
    ("PCI bus id", {"pci_bus_id": "00000000:18:00.0; id"}),
    ("compute mode", {"compute_mode": "{% raw %}"}),
    ("memory", {"memory_mb": "81559"}),
    ("index", {"index": -1}),
]


@pytest.mark.parametrize("what,change", HOSTILE_GPU_VALUES, ids=[f"{w}-{i}" for i, (w, _c) in enumerate(HOSTILE_GPU_VALUES)])
def test_a_gpu_report_with_one_bad_value_fails_the_scan_and_stores_nothing(app, client, region, what, change):
    status, node, job_id = scanned(app, client, region, "scan_gpus",
                                   lambda node_id: gpu_scan(node_id, gpu(0), {**gpu(1, UUID1), **change}))

    assert status["status"] == "failed"
    assert f"GPU #1's {what}" in status["error_msg"] and "nothing of its report was stored" in status["error_msg"]
    assert node["gpus"] == [] and node["nvidia_driver_version"] is None  # GPU #0 was fine: not stored either
    with app.app_context():
        job = session().get(Job, job_id)
        assert job.status.value == "failed" and job.explanation == status["error_msg"]
        assert "gpuaas_gpu_scan" not in job.result  # the report is kept nowhere
        assert session().scalars(select(Gpu)).all() == []


@pytest.mark.parametrize("driver", [{"driver_version": f"550.{JINJA}"}, {"cuda_version": "12.4 && id"}])
def test_a_bad_driver_version_fails_the_scan(app, client, region, driver):
    status, node, _job = scanned(app, client, region, "scan_gpus", lambda node_id: gpu_scan(node_id, gpu(0), **driver))

    assert status["status"] == "failed" and "version" in status["error_msg"]
    assert node["gpus"] == []


def test_a_gpu_that_did_not_answer_is_not_checked_for_what_it_could_not_tell(app, client, region):
    status, node, _job = scanned(app, client, region, "scan_gpus", lambda node_id: gpu_scan(
        node_id, gpu(0), {"index": 1, "vendor": "NVIDIA", "status": "lost", "error": "GPU is lost {{ x }}"}))

    assert status["status"] == "completed" and [g["uuid"] for g in node["gpus"]] == [UUID0]


def npu_scan(node_id, *npus):
    return {"gpuaas_npu_scan": {f"node-{node_id}": {"source": "npu-smi", "npus": list(npus)}}}


def test_npu_reports_are_checked(app, client, region):
    good = {"id": 0, "chip_name": "910B3", "memory_mb": 65536, "health": "OK"}
    status, _node, _job = scanned(app, client, region, "scan_npus", lambda node_id: npu_scan(node_id, good))
    assert status["status"] == "completed" and status["resources"]["npus"][0]["chip_name"] == "910B3"

    for change in ({"chip_name": f"910B{JINJA}"}, {"health": "OK\nWarning"}, {"id": "0"}):
        status, _node, _job = scanned(app, client, region, "scan_npus",
                                      lambda node_id: npu_scan(node_id, good, {**good, "id": 1, **change}))
        assert status["status"] == "failed" and "NPU #1's" in status["error_msg"], change
    with app.app_context():
        assert [npu.chip_name for npu in session().scalars(select(Npu))] == ["910B3"]


def test_a_scan_with_a_bad_cpu_model_fails_and_an_init_keeps_the_last_one(app, client, region):
    facts = {"cpu_model": f"AMD EPYC {JINJA}", "cores": 8, "total_memory_in_mb": 1000, "total_disk_in_mb": 1000}
    status, node, _job = scanned(app, client, region, "scan_gpus", lambda node_id: {
        **gpu_scan(node_id, gpu(0)), "gpuaas_node_facts": {f"node-{node_id}": facts}})
    assert status["status"] == "failed" and "CPU model" in status["error_msg"]
    assert node["cpu_model"] is None and node["gpus"] == []

    # An init gathers the facts on the way: the bad one is not stored, the others are.
    set_status(app, node["id"], NodeStatus.UNINITIALIZED)
    init = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(init["job_id"], "successful", 0, "", {"gpuaas_node_facts": {f"node-{node['id']}": facts}})
    shown = client.get(f"/gpuaas/node/{node['id']}").get_json()
    assert (shown["cpu_model"], shown["cores"], shown["status"]) == (None, 8, "initialized")


@pytest.mark.parametrize("hostname,expected", [
    ("gpu-01.dc1.example.com", "gpu-01"),
    (f"gpu{JINJA}", None),
    ("gpu-01\nEvil", None),
    ("-leading-dash", None),
])
def test_a_hostname_that_is_not_one_names_the_node_after_its_id(app, client, region, hostname, expected):
    node = add_node(client, region)
    probe = client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(probe["job_id"], "successful", 0, "", {"gpuaas_conn_check": {
            f"node-{node['id']}": {"ssh": "ok", "python": "ok", "hostname": hostname}}})
        assert session().get(Node, node["id"]).kubernetes_name == (expected or f"node-{node['id']}")


def test_the_check_fails_without_the_formats(app, client, region, monkeypatch):
    """The checks above can fail: with the UUID format accepting anything, the hostile UUID is stored."""
    import re

    from gpuaas_api import validation
    monkeypatch.setattr(validation, "GPU_UUID", re.compile(r"^.*$", re.S))
    status, node, _job = scanned(app, client, region, "scan_gpus",
                                 lambda node_id: gpu_scan(node_id, gpu(0, f"GPU-{JINJA}")))
    assert status["status"] == "completed" and node["gpus"][0]["uuid"] == f"GPU-{JINJA}"
    assert json.dumps(JINJA)[1:-1] in json.dumps(node)


def test_a_uuid_listed_twice_or_held_by_another_node_fails_the_scan(app, client, region):
    """Both would break the unique UUID column mid-finalisation; both are a node's claim on GPUs that
    are not its own."""
    status, _node, _job = scanned(app, client, region, "scan_gpus", lambda node_id: gpu_scan(node_id, gpu(0), gpu(1)))
    assert status["status"] == "failed" and "GPU #1's UUID" in status["error_msg"] and "twice" in status["error_msg"]

    first, _node, _job = scanned(app, client, region, "scan_gpus", lambda node_id: gpu_scan(node_id, gpu(0)))
    other, node, job_id = scanned(app, client, region, "scan_gpus", lambda node_id: gpu_scan(node_id, gpu(0, UUID1), gpu(1)))
    assert first["status"] == "completed"
    assert other["status"] == "failed" and "GPU #1's UUID" in other["error_msg"] and "another node" in other["error_msg"]
    assert node["gpus"] == []
    with app.app_context():
        assert session().get(Job, job_id).finished_at is not None  # finalised, not left running
        assert [gpu.uuid for gpu in session().scalars(select(Gpu))] == [UUID0]


def storage_scan(node_id, report):
    return {**gpu_scan(node_id), "gpuaas_storage_metrics": {f"node-{node_id}": report}}


def test_storage_reports_are_checked_and_stored_as_checked(app, client, region):
    group = {"name": "gpuaas", "size_bytes": 1099511627776, "free_bytes": 412316860416, "used_bytes": 687194767360}
    good = {"volume_groups": [group], "volume_group": group, "filesystems": [{"path": "/", "size_bytes": 10,
                                                                             "free_bytes": 4, "used_bytes": 6}],
            "msg": JINJA}
    status, _node, _job = scanned(app, client, region, "scan_resources", lambda node_id: storage_scan(node_id, good))
    assert status["status"] == "completed" and status["resources"]["volume"] == [group]

    for change in ({"volume_groups": [{**group, "name": f"vg{JINJA}"}]}, {"volume_groups": [{**group, "free_bytes": -1}]},
                   {"filesystems": [{"path": "relative", "size_bytes": 1, "free_bytes": 1, "used_bytes": 0}]},
                   {"volume_groups": [group] * 1025}):
        status, _node, _job = scanned(app, client, region, "scan_resources",
                                      lambda node_id: storage_scan(node_id, {**good, **change}))
        assert status["status"] == "failed" and "nothing of its report was stored" in status["error_msg"], change


def test_a_storage_sample_keeps_only_the_checked_report(app):
    from gpuaas_api.metrics.store import record_storage_sample
    from gpuaas_api.models import Region, StorageSample
    import datetime as dt

    group = {"name": "gpuaas", "size_bytes": 2, "free_bytes": 1, "used_bytes": 1}
    with app.app_context():
        db = session()
        region = Region(region_name="r")
        db.add(region)
        db.flush()
        node = Node(name="s", region_id=region.id, node_ip="198.18.0.9", username="root", is_storage_service=True)
        db.add(node)
        db.flush()
        now = dt.datetime.now(dt.timezone.utc)
        record_storage_sample(node.id, now, {"volume_groups": [group], "extra": JINJA})
        record_storage_sample(node.id, now, {"volume_groups": [{**group, "name": JINJA}]})
        db.commit()
        assert [sample.data for sample in db.scalars(select(StorageSample))] == [{"volume_groups": [group],
                                                                                  "filesystems": []}]


@pytest.mark.parametrize("facts,refused", [
    ({"api_server_address": "198.18.0.5", "api_server_port": "6443", "pod_network_cidr": "10.244.0.0/16",
      "service_cidr": "10.96.0.0/12", "controller": "ctl-01"}, None),
    ({"api_server_address": f"10.0.0.1{JINJA}", "api_server_port": 6443}, "API server address"),
    ({"api_server_address": "::1%eth0", "api_server_port": 6443}, "API server address"),
    ({"api_server_address": "198.18.0.5", "api_server_port": "6443; id"}, "API server port"),
    ({"api_server_address": "198.18.0.5", "api_server_port": 6443, "service_cidr": "10.96.0.0/12 && id"},
     "service cidr"),
])
def test_an_enables_cluster_facts_are_checked(app, client, region, facts, refused):
    controller = add_node(client, region, name=next(NAMES), is_controller_node=True)
    set_status(app, controller["id"], NodeStatus.INITIALIZED)
    enabled = client.post(f"/gpuaas/enable?controller_node_id={controller['id']}").get_json()
    with app.app_context():
        job = finalize(enabled["job_id"], "successful", 0, "", {"gpuaas_cluster": facts})
        cluster = session().get(Cluster, enabled["gpuaas_id"])
        if refused is None:
            assert job.status.value == "successful" and cluster.status.value == "GPUAAS_ACTIVE"
            assert (cluster.k8s_api_server_address, cluster.k8s_api_server_port) == ("198.18.0.5", 6443)
            assert cluster.facts == {**facts, "api_server_port": 6443}
        else:
            assert job.status.value == "failed" and refused in job.explanation
            assert cluster.status.value != "GPUAAS_ACTIVE" and cluster.facts in ({}, None)
            assert "gpuaas_cluster" not in job.result
