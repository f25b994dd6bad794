"""Helpers of the API tests (tests/api): the app's test client and its database, no process.

The fixtures they take (app, client, region, fleet_db) are tests/api/conftest.py's."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update

from gpuaas_api.db import session
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.models import Job, Node
from gpuaas_api.pools import start_pool_deployment

ADMIN = {"username": "admin", "password": "correct horse battery staple"}

# GPU UUIDs in NVML's format: a scan stores no other (node_reports.py).
GPU_A, GPU_B = "GPU-00000000-0000-4000-8000-00000000000a", "GPU-00000000-0000-4000-8000-00000000000b"


def assert_error(response, status, field=None):
    """Every error has the one shape: {code, message, errors: [{field, message}]}."""
    body = response.get_json()
    assert response.status_code == status, body
    assert set(body) == {"code", "message", "errors"}
    assert body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        assert field in [error["field"] for error in body["errors"]], body
    return body


def create(client, fleet_db, **pool):
    body = {"pool_name": "high-throughput-pool", "attach_gpu_ids": fleet_db["uuids"]["w1"], "sharing_ratio": 4,
            "time_quantum_in_sec": 30, "security_level": "medium"}
    body.update(pool)
    return client.post("/gpuaas/pool/create", json={"gpuaas_id": fleet_db["gpuaas_id"], "pool": body})


def settle(app, reply: dict, failed_nodes=()) -> dict:
    """Finish the change's pool_apply job as the nodes would: all succeed, or the named ones fail."""
    with app.app_context():
        job = session().get(Job, reply["job_id"])
        start_pool_deployment(job.extravars["pool_id"])
        nodes = session().scalars(select(Node)).all()
        names = {n.id: n.name for n in nodes}
        display = {n.inventory_name: n.name for n in nodes}
        outcomes = {node_id: names[node_id] not in failed_nodes for node_id in job.extravars["targets"]}
        finalize(job.id, "failed" if failed_nodes else "successful", 2 if failed_nodes else 0, "", {},
                 host_outcomes=outcomes)
        # The variables are keyed by inventory name (node-<id>); shown here by display name, for reading.
        by_display = {key: ({display[host]: value for host, value in hosts.items()} if key.endswith("_by_host")
                            else hosts) for key, hosts in job.extravars["vars"].items()}
        return {"targets": sorted(names[i] for i in job.extravars["targets"]), "vars": by_display,
                "hosts": sorted(names[i] for i in job.extravars["hosts"]),
                "raw_vars": job.extravars["vars"]}


def add_node(client, region, name="w1", **roles):
    body = {"name": name, "region_id": region["id"], "node_ip": "198.18.0.12", "username": "root",
            "is_worker_node": True}
    body.update(roles)
    return client.post("/gpuaas/node/add", json=body).get_json()


def set_status(app, node_id, status):
    with app.app_context():
        session().get(Node, node_id).status = status
        session().commit()


def gpu_report(*gpus):
    report = {"driver_state": "present", "driver_version": "550.54.15", "cuda_version": "12.4",
              "gpu_count": len(gpus), "gpus": list(gpus)}
    return {"gpuaas_gpu_scan": {"node-1": report}}  # by inventory name: add_node's first node is node-1


def gpu(index, uuid, status="ok"):
    return {"index": index, "uuid": uuid, "vendor": "NVIDIA", "model": "NVIDIA L40S", "memory_mb": 46068,
            "pci_bus_id": f"00000000:{index:02X}:00.0", "compute_mode": "DEFAULT", "mig_mode": "disabled",
            "status": status}


def set_created(app, seconds_from_now: dict[int, float]) -> None:
    """Backdate (or postdate) jobs' submission times: the batching rules depend only on them."""
    now = dt.datetime.now(dt.timezone.utc)
    with app.app_context():
        for job_id, offset in seconds_from_now.items():
            session().execute(update(Job).where(Job.id == job_id).values(created_at=now + dt.timedelta(seconds=offset)))
        session().commit()
