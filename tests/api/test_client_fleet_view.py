"""What hosted·ai's admin client reads in its fleet view and provisioning job (compatibility.md, "What
the admin client's fleet view reads"): each test sends the client's exact request (src/lib/gpuaas-admin:
the path under /api, the body as its code builds it) and checks what the client reads of the reply.

Jobs run as the service runs them (claimed, run, finalised by the worker), with a stand-in for
ansible-playbook that answers as the nodes would.
"""
from __future__ import annotations

from sqlalchemy import delete, select

from api_helpers import assert_error
from gpuaas_api.db import session
from gpuaas_api.jobs import worker as worker_module
from gpuaas_api.jobs.inventory import host_spec
from gpuaas_api.jobs.queue import claim_next
from gpuaas_api.jobs.runner import RunResult
from gpuaas_api.models import Gpu, Job, Node
from gpuaas_api.rendering import render_gpu, status_codes
from gpuaas_api.states import NodeStatus


class FakeRuns:
    """run_playbook's stand-in: every host succeeds, except those in ``failing`` (by node id);
    ``reports`` (inventory name -> {stat: value}) is what the hosts return with set_stats, keyed by
    host; ``stats``, what the play returns unkeyed (an enable's gpuaas_cluster)."""

    def __init__(self):
        self.failing, self.reports, self.stats, self.calls = set(), {}, {}, []

    def __call__(self, job_id, playbook, hosts, extravars, *_args, **_kwargs):
        self.calls.append({"playbook": playbook, "hostvars": {host.name: host.hostvars for host in hosts}})
        names = [host.name for host in hosts]
        failed = [host.name for host in hosts if host.node_id in self.failing]
        artifact = dict(self.stats)
        for name in names:
            for stat, value in self.reports.get(name, {}).items():
                artifact.setdefault(stat, {})[name] = value
        stats = {"processed": dict.fromkeys(names, 1), "failures": dict.fromkeys(failed, 1), "dark": {}}
        return RunResult("failed" if failed else "successful", 2 if failed else 0, stats, artifact, {})


def run_jobs(app, monkeypatch, runs: FakeRuns) -> list[Job]:
    """Run every job that can run, as the worker does; the jobs, oldest first."""
    monkeypatch.setattr(worker_module, "run_playbook", runs)
    with app.app_context():
        while batch := claim_next():
            worker_module.JobWorker(app).execute(batch)
        jobs = session().scalars(select(Job).order_by(Job.id)).all()
        session().expunge_all()
        return jobs


def add_node(client, region, name, **roles) -> dict:
    """addNode's body: the fields the form leaves empty are undefined, so JSON.stringify leaves them out."""
    body = {"name": name, "region_id": region["id"], "node_ip": "198.18.0.40", "username": "ubuntu",
            "is_controller_node": False, "is_worker_node": True, "is_gateway_service": False,
            "is_storage_service": False, **roles}
    reply = client.post("/api/gpuaas/node/add", json=body)
    assert reply.status_code == 201, reply.get_json()
    return reply.get_json()


def codes(client, node_id) -> tuple[int, int]:
    node = client.get(f"/api/gpuaas/node/{node_id}").get_json()  # getNode
    listed = [n for n in client.get(f"/api/gpuaas/node/list?region_id={node['region_id']}").get_json()
              if n["id"] == node_id][0]  # listNodes: the cached list path renders alike
    assert (listed["initialize_state_status_code"], listed["k8s_join_state_status_code"]) == \
        (node["initialize_state_status_code"], node["k8s_join_state_status_code"])
    return node["initialize_state_status_code"], node["k8s_join_state_status_code"]


# ---------------------------------------------------------------- the cluster's GPUs, in lower case

def unassigned_the_clients_way(items: list[dict]) -> list[str]:
    """getUnassignedClusterGPUs: `gpu.assignment_status === "unassigned" || !gpu.assignment_status`."""
    return [gpu["uuid"] for gpu in items if gpu["assignment_status"] == "unassigned" or not gpu["assignment_status"]]


def test_the_clusters_gpus_read_unassigned_in_lower_case_and_the_guides_routes_stay_upper(app, client, fleet_db):
    gpuaas_id = fleet_db["gpuaas_id"]
    items = client.get(f"/api/gpuaas/{gpuaas_id}/gpus").json["items"]

    assert unassigned_the_clients_way(items) == fleet_db["uuids"]["w1"] + fleet_db["uuids"]["w2"]
    # The guide's routes keep the guide's upper case, which the client's comparison would miss.
    available = client.get(f"/api/gpuaas/{gpuaas_id}/pool/available_gpus").json["items"]
    assert {gpu["assignment_status"] for gpu in available} == {"UNASSIGNED"}
    assert unassigned_the_clients_way(available) == []  # the control: upper case reads as no GPU at all
    with app.app_context():
        assert unassigned_the_clients_way([render_gpu(gpu) for gpu in session().scalars(select(Gpu))]) == []


# ---------------------------------------------------------------- init's code after enable or join

def initialised(app, client, region, monkeypatch, runs, name, **roles) -> dict:
    node = add_node(client, region, name, **roles)
    assert client.get(f"/api/gpuaas/node/init?gpuaas_node_id={node['id']}").json["success"] is True  # initializeNode
    run_jobs(app, monkeypatch, runs)
    assert codes(client, node["id"]) == (2, 0)
    return node


def enable(app, client, monkeypatch, runs, node) -> dict:
    reply = client.post(f"/api/gpuaas/enable?controller_node_id={node['id']}")  # enableGPUaaS
    assert reply.status_code == 200, reply.json
    runs.stats = {"gpuaas_cluster": {"api_server_port": 6443}}
    run_jobs(app, monkeypatch, runs)
    return reply.json


def test_a_failed_init_reads_minus_one_and_a_new_init_recovers(app, client, region, monkeypatch):
    runs = FakeRuns()
    node = add_node(client, region, "n1")
    runs.failing = {node["id"]}
    client.get(f"/api/gpuaas/node/init?gpuaas_node_id={node['id']}")
    run_jobs(app, monkeypatch, runs)
    assert codes(client, node["id"]) == (-1, 0)

    runs.failing = set()
    client.get(f"/api/gpuaas/node/init?gpuaas_node_id={node['id']}")
    run_jobs(app, monkeypatch, runs)
    assert codes(client, node["id"]) == (2, 0)


def test_a_failed_enable_keeps_init_done_and_shows_in_the_join_code_and_init_then_enable_recover(
        app, client, region, monkeypatch):
    runs = FakeRuns()
    controller = initialised(app, client, region, monkeypatch, runs, "ctrl")
    runs.failing = {controller["id"]}

    enable(app, client, monkeypatch, runs, controller)

    assert client.get(f"/api/gpuaas/node/{controller['id']}").json["status"] == "error"
    assert codes(client, controller["id"]) == (2, -1)
    # The control: without the failed operation, as before, the client read a failed init.
    assert status_codes(NodeStatus.ERROR, False, None) == (-1, 0)

    runs.failing = set()  # the retry path: init again (allowed from error), then enable
    client.get(f"/api/gpuaas/node/init?gpuaas_node_id={controller['id']}")
    run_jobs(app, monkeypatch, runs)
    assert codes(client, controller["id"]) == (2, 0)
    enable(app, client, monkeypatch, runs, controller)
    assert codes(client, controller["id"]) == (2, 2)


def test_a_failed_join_keeps_init_done_and_shows_in_the_join_code_and_init_then_join_recover(
        app, client, region, monkeypatch):
    runs = FakeRuns()
    controller = initialised(app, client, region, monkeypatch, runs, "ctrl")
    gpuaas_id = enable(app, client, monkeypatch, runs, controller)["gpuaas_id"]
    worker = initialised(app, client, region, monkeypatch, runs, "w1")
    runs.failing = {worker["id"]}

    join = {"gpuaas_id": gpuaas_id, "gpuaas_node_id": worker["id"]}  # joinNode
    assert client.post("/api/gpuaas/node/join", json=join).json["success"] is True
    run_jobs(app, monkeypatch, runs)

    assert codes(client, worker["id"]) == (2, -1)
    assert codes(client, controller["id"]) == (2, 2)  # the controller, a helper of the join, is untouched

    runs.failing = set()
    client.get(f"/api/gpuaas/node/init?gpuaas_node_id={worker['id']}")
    run_jobs(app, monkeypatch, runs)
    assert client.post("/api/gpuaas/node/join", json=join).json["success"] is True
    run_jobs(app, monkeypatch, runs)
    assert codes(client, worker["id"]) == (2, 2)


def test_once_the_failed_job_is_pruned_a_node_in_a_cluster_still_reads_initialised(app, client, region, monkeypatch):
    runs = FakeRuns()
    controller = initialised(app, client, region, monkeypatch, runs, "ctrl")
    enable(app, client, monkeypatch, runs, controller)
    with app.app_context():  # in error (its Kubernetes step failed), and every job since pruned
        session().get(Node, controller["id"]).status = NodeStatus.ERROR
        session().execute(delete(Job))
        session().commit()
    assert codes(client, controller["id"]) == (2, -1)  # it is in a cluster: its init had succeeded


# ---------------------------------------------------------------- adding GPUs right after create

def create_pool(client, fleet_db, uuids: list[str]) -> dict:
    """createPool's body, with the provisioning job's settings."""
    reply = client.post("/api/gpuaas/pool/create", json={"gpuaas_id": fleet_db["gpuaas_id"], "pool": {
        "pool_name": "tesla-t4", "sharing_ratio": 1.0, "time_quantum_in_sec": 90, "attach_gpu_ids": uuids,
        "security_level": "low"}})
    assert reply.status_code == 201, reply.json
    return reply.json


def add_gpu(client, pool_id: int, node_id: int, **index):
    """addGPUToPool: {pool_id, gpuaas_node_id, gpu_index}; gpu_index undefined is left out."""
    return client.post("/api/gpuaas/pool/gpu", json={"pool_id": pool_id, "gpuaas_node_id": node_id, **index})


def client_error(response) -> str:
    """The message gpuaasAdminRequest throws: `${message} (${field}: ${message}, …)`."""
    body = response.json
    fields = ", ".join(f"{error['field']}: {error['message']}" for error in body["errors"])
    return f"{body['message']} ({fields})"


def test_the_provisioning_flow_create_then_attach_each_gpu_ends_with_every_job_successful(
        app, client, fleet_db, monkeypatch):
    runs = FakeRuns()
    unassigned = unassigned_the_clients_way(client.get(f"/api/gpuaas/{fleet_db['gpuaas_id']}/gpus").json["items"])
    w1 = [uuid for uuid in unassigned if uuid.startswith("GPU-w1")]
    pool = create_pool(client, fleet_db, w1)
    assert pool["status"] == "DEPLOYMENT_SCHEDULED"

    for index in (0, 1):  # sent while the create's job has not run yet
        attached = add_gpu(client, pool["id"], 1, gpu_index=index)
        # The client tolerates an error saying "already" (or "duplicate"), and nothing is queued to fail later.
        assert attached.status_code == 409 and "already" in client_error(attached)
    jobs = run_jobs(app, monkeypatch, runs)

    assert [(job.operation, job.status.value) for job in jobs] == [("pool_apply", "successful")]
    shown = client.get(f"/api/gpuaas/pool/{pool['id']}").json
    assert shown["status"] == "ACTIVE" and {gpu["uuid"] for gpu in shown["gpus"]} == set(w1)


def test_a_gpu_added_while_the_pool_is_created_is_applied_once_the_create_settles(app, client, fleet_db, monkeypatch):
    runs = FakeRuns()
    pool = create_pool(client, fleet_db, ["GPU-w1-0"])

    queued = add_gpu(client, pool["id"], 2, gpu_index=0)
    again = add_gpu(client, pool["id"], 2, gpu_index=0)  # the same, twice: both queued, the second has nothing to do
    assert queued.status_code == again.status_code == 200
    assert queued.json["queued_behind"] == pool["job_id"]
    jobs = run_jobs(app, monkeypatch, runs)

    assert [job.status.value for job in jobs] == ["successful"] * 3
    assert [job.explanation for job in jobs][2] == "nothing to apply on any node"
    shown = client.get(f"/api/gpuaas/pool/{pool['id']}").json
    assert shown["status"] == "ACTIVE"
    assert [(gpu["uuid"], gpu["assignment_status"]) for gpu in shown["gpus"]] == [
        ("GPU-w1-0", "ASSIGNED"), ("GPU-w2-0", "ASSIGNED")]
    # Once it is in, the same request says so at once.
    assert "already in pool" in client_error(add_gpu(client, pool["id"], 2, gpu_index=0))


# ---------------------------------------------------------------- gpu_index optional

def test_without_gpu_index_the_nodes_only_free_gpu_is_added(app, client, fleet_db, monkeypatch):
    runs = FakeRuns()
    pool = create_pool(client, fleet_db, ["GPU-w1-0"])
    run_jobs(app, monkeypatch, runs)

    added = add_gpu(client, pool["id"], 1)

    assert added.status_code == 200, added.json
    run_jobs(app, monkeypatch, runs)
    assert {gpu["uuid"] for gpu in client.get(f"/api/gpuaas/pool/{pool['id']}").json["gpus"]} == {"GPU-w1-0", "GPU-w1-1"}
    # Now none of w1 is free, and both are this pool's: "already", which the client counts as success.
    assert "already in pool" in client_error(assert_response(add_gpu(client, pool["id"], 1), 409))


def assert_response(response, status: int):
    assert response.status_code == status, response.json
    return response


def test_without_gpu_index_several_free_gpus_are_a_field_error_naming_their_count(client, fleet_db):
    pool = create_pool(client, fleet_db, [])

    refused = assert_error(add_gpu(client, pool["id"], 2), 422, field="gpu_index")

    assert "2 free GPUs (indexes 0, 1)" in refused["message"]


def test_a_gpu_named_by_uuid_or_its_alias(app, client, fleet_db, monkeypatch):
    runs = FakeRuns()
    pool = create_pool(client, fleet_db, [])

    assert add_gpu(client, pool["id"], 2, gpu_uuid="GPU-w2-1").status_code == 200
    assert add_gpu(client, pool["id"], 1, uuid="GPU-w1-1").status_code == 200
    run_jobs(app, monkeypatch, runs)
    assert {gpu["uuid"] for gpu in client.get(f"/api/gpuaas/pool/{pool['id']}").json["gpus"]} == {"GPU-w2-1", "GPU-w1-1"}

    assert_error(add_gpu(client, pool["id"], 1, gpu_uuid="GPU-w2-0"), 404, field="gpu_uuid")  # not this node's
    assert_error(add_gpu(client, pool["id"], 1, gpu_index=0, gpu_uuid="GPU-w1-0"), 422, field="gpu_uuid")


def test_without_gpu_index_a_node_without_a_free_gpu_is_refused_clearly(app, client, fleet_db):
    pool = create_pool(client, fleet_db, [])
    with app.app_context():
        for gpu in session().scalars(select(Gpu).where(Gpu.node_id == 2)):
            gpu.assignment_status = "UNAVAILABLE"
        session().commit()

    refused = assert_error(add_gpu(client, pool["id"], 2), 409, field="gpu_index")

    assert refused["errors"][0]["message"] == "node 2 has no free GPU (unassigned and answering) to add"
    assert_error(add_gpu(client, pool["id"], 4242), 404)


# ---------------------------------------------------------------- a storage node without volume_group

def test_a_storage_node_registers_without_a_volume_group_and_init_records_the_one_it_serves(
        app, client, region, monkeypatch):
    runs = FakeRuns()
    node = add_node(client, region, "stor-1", is_worker_node=False, is_storage_service=True)  # no volume_group sent
    assert node["volume_group"] is None and node["role"]["is_storage_service"] is True
    runs.reports = {node["inventory_name"]: {"gpuaas_node_volume_groups": "data"}}

    client.get(f"/api/gpuaas/node/init?gpuaas_node_id={node['id']}")
    run_jobs(app, monkeypatch, runs)

    assert "node_init_volume_group" not in runs.calls[0]["hostvars"][node["inventory_name"]]  # the role discovers it
    shown = client.get(f"/api/gpuaas/node/{node['id']}").json
    assert shown["volume_group"] == "data" and shown["initialize_state_status_code"] == 2
    with app.app_context():  # every later job is given it
        hostvars = host_spec(session().get(Node, node["id"])).hostvars
    assert hostvars["node_init_volume_group"] == hostvars["storage_metrics_volume_group"] == "data"


def test_a_volume_group_the_node_has_is_never_replaced_and_a_hostile_report_is_refused(
        app, client, region, monkeypatch):
    runs = FakeRuns()
    given = add_node(client, region, "stor-1", is_storage_service=True, volume_group="gpuaas")
    hostile = add_node(client, region, "stor-2", is_storage_service=True)
    runs.reports = {given["inventory_name"]: {"gpuaas_node_volume_groups": "other"},
                    hostile["inventory_name"]: {"gpuaas_node_volume_groups": "{{ lookup('pipe', 'id') }}"}}
    for node in (given, hostile):
        client.get(f"/api/gpuaas/node/init?gpuaas_node_id={node['id']}")

    jobs = run_jobs(app, monkeypatch, runs)

    assert client.get(f"/api/gpuaas/node/{given['id']}").json["volume_group"] == "gpuaas"
    refused = [job for job in jobs if job.node_id == hostile["id"]][0]
    assert refused.status.value == "failed" and "invalid volume group" in refused.explanation
    shown = client.get(f"/api/gpuaas/node/{hostile['id']}").json
    assert shown["volume_group"] is None and shown["initialize_state_status_code"] == -1
