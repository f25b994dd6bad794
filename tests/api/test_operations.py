"""Node operations at the API edge: state machine, one mutating job per node, jobs, scans, logs.

Nothing here runs ansible: the jobs stay pending (no worker runs in these tests), and
finalisation is driven directly. tests/e2e runs the same operations on the fleet.
"""
from __future__ import annotations

from sqlalchemy import select

from api_helpers import GPU_A, GPU_B, add_node, assert_error, gpu, gpu_report, set_created, set_status
from gpuaas_api.db import session
from gpuaas_api.jobs.finalize import finalize, reconcile_orphans
from gpuaas_api.jobs.queue import claim_next
from gpuaas_api.models import Gpu, Job, JobEvent, Node, Scan
from gpuaas_api.states import GpuAssignment, JobStatus, NodeStatus


def test_init_records_a_job_and_moves_the_node(app, client, region):
    node = add_node(client, region)

    reply = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()

    assert reply["success"] is True
    job = client.get(f"/api/jobs/{reply['job_id']}").get_json()
    assert (job["operation"], job["status"], job["node_id"]) == ("node_init", "pending", node["id"])
    after = client.get(f"/gpuaas/node/{node['id']}").get_json()
    assert after["status"] == "initializing" and after["initialize_state_status_code"] == 1


def test_a_second_mutating_operation_on_a_busy_node_queues_behind_the_first(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    reboot = client.post(f"/gpuaas/node/reboot?node_id={node['id']}").get_json()  # leaves the status as it is

    queued = client.post(f"/gpuaas/node/{node['id']}/disable")
    assert queued.status_code == 200 and queued.get_json()["success"] is True
    assert f"queued behind job {reboot['job_id']}" in queued.get_json()["message"]
    with app.app_context():
        assert session().get(Node, node["id"]).busy_job_id == reboot["job_id"]  # the reboot still holds it
    # read-only operations may still run beside it
    assert client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}").status_code == 200
    # What the node's state forbids whatever the reboot does is still refused at once.
    assert "cannot init" in assert_error(client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}"), 409)["message"]


def test_state_machine_refusals(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)

    assert "cannot init" in assert_error(client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}"), 409)["message"]
    join = client.post("/gpuaas/node/join", json={"joinee_node_id": node["id"], "region_id": region["id"]})
    assert "no active GPUaaS cluster" in assert_error(join, 409)["message"]
    assert_error(client.post(f"/gpuaas/node/leave?node_id={node['id']}"), 409)


def test_join_accepts_both_bodies_and_checks_them(app, client, region):
    controller = add_node(client, region, name="ctrl", is_controller_node=True, is_worker_node=False)
    worker = add_node(client, region, name="w1")
    set_status(app, controller["id"], NodeStatus.INITIALIZED)
    set_status(app, worker["id"], NodeStatus.INITIALIZED)
    enabled = client.post(f"/gpuaas/enable?controller_node_id={controller['id']}").get_json()
    gpuaas_id = enabled["gpuaas_id"]
    with app.app_context():
        finalize(enabled["job_id"], "successful", 0, "", {"gpuaas_cluster": {"api_server_port": 6443,
                                                                             "api_server_address": "198.18.0.11"}})
    cluster = client.get(f"/gpuaas/{gpuaas_id}").get_json()
    assert cluster["status"] == "GPUAAS_ACTIVE" and cluster["k8s_api_server_port"] == 6443
    assert client.get("/gpuaas").get_json() == [cluster]

    assert_error(client.post("/gpuaas/node/join", json={}), 422, field="joinee_node_id")
    assert_error(client.post("/gpuaas/node/join", json={"gpuaas_id": 999, "gpuaas_node_id": worker["id"]}), 409,
                 field="gpuaas_id")
    reply = client.post("/gpuaas/node/join", json={"gpuaas_id": gpuaas_id, "gpuaas_node_id": worker["id"]})
    assert reply.status_code == 200
    with app.app_context():
        job = session().get(Job, reply.get_json()["job_id"])
        assert job.extravars["hosts"] == [worker["id"], controller["id"]]
        assert job.extravars["vars"] == {"cluster_join_controller": f"node-{controller['id']}"}
    assert client.get(f"/gpuaas/node/{worker['id']}").get_json()["status"] == "k8_initializing"
    assert_error(client.delete(f"/gpuaas/{gpuaas_id}"), 409)


def test_each_job_is_claimed_once(app, client, region):
    node = add_node(client, region)
    job_id = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]

    with app.app_context():
        first, second = claim_next(), claim_next()
        job = session().get(Job, job_id)
    assert (first, second) == ([job_id], [])
    assert job.status is JobStatus.RUNNING and job.claimed_by


def test_cancel_and_finished_jobs(app, client, region):
    node = add_node(client, region)
    job_id = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]

    canceled = client.post(f"/api/jobs/{job_id}/cancel")
    assert canceled.status_code == 202 and canceled.get_json()["cancel_requested"] is True
    with app.app_context():
        finalize(job_id, "canceled", None, "canceled on request", {})
    assert_error(client.post(f"/api/jobs/{job_id}/cancel"), 409)
    after = client.get(f"/gpuaas/node/{node['id']}").get_json()
    assert after["status"] == "error"  # the init did not finish: the node says so
    assert client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").status_code == 200  # and can retry
    assert_error(client.get("/api/jobs/9999"), 404)


def test_orphaned_jobs_are_finalised_after_a_restart(app, client, region):
    """Only a claimant of this PID namespace that no longer runs is an orphan: not this process, and
    not a process of another namespace (whose pids mean other processes)."""
    import dataclasses
    import subprocess

    from gpuaas_api.jobs.identity import this_process

    child = subprocess.Popen(["true"])
    child.wait()  # a pid of this namespace that ran and is gone
    dead = dataclasses.replace(this_process(), pid=child.pid, start=1)
    claimants = {"dead": str(dead), "alive": str(this_process()),
                 "elsewhere": str(dataclasses.replace(dead, scope="0" * 8))}
    jobs = {}
    for name, claimed_by in claimants.items():
        node = add_node(client, region, name=f"orphan-{name}")
        jobs[name] = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]
        with app.app_context():
            job = session().get(Job, jobs[name])
            job.status, job.claimed_by = JobStatus.RUNNING, claimed_by
            session().commit()
    with app.app_context():
        orphans = reconcile_orphans()
    job = client.get(f"/api/jobs/{jobs['dead']}").get_json()

    assert orphans == [jobs["dead"]]
    assert job["status"] == "error" and "stopped before it finished" in job["explanation"]
    assert client.get(f"/gpuaas/node/{job['node_id']}").get_json()["status"] == "error"
    assert [client.get(f"/api/jobs/{jobs[name]}").get_json()["status"] for name in ("alive", "elsewhere")] == ["running"] * 2
    assert client.get(f"/gpuaas/node/reboot?node_id={job['node_id']}").status_code == 405  # POST only


def test_run_dirs_no_running_job_owns_are_removed(app, client, region):
    """A killed process leaves its run's private dir (inventory, variables); the sweep removes it,
    and only it: the dir of a running job, or of a job that starts after the listing, stays."""
    from gpuaas_api.jobs.runner import remove_stale_job_dirs
    from gpuaas_api.jobs.housekeeper import sweep_job_dirs

    first, second = (client.get(f"/gpuaas/node/init?gpuaas_node_id={add_node(client, region, name)['id']}")
                     .get_json()["job_id"] for name in ("w1", "w2"))
    with app.app_context():
        session().get(Job, second).status = JobStatus.RUNNING
        session().commit()
        config = app.config["GPUAAS"]
        jobs_dir = config.DATA_DIR / "jobs"
        for name in (f"job-{first}-abc", f"job-{second}-def", "not-a-run"):
            (jobs_dir / name).mkdir(parents=True)
            (jobs_dir / name / "inventory").write_text("secret")
        finalize(first, "error", 1, "killed", {})

        assert sweep_job_dirs(config) == [f"job-{first}-abc"]
        assert sorted(p.name for p in jobs_dir.iterdir()) == [f"job-{second}-def", "not-a-run"]
        # A dir whose job is running when the running jobs are asked (after the listing) stays.
        (jobs_dir / f"job-{first}-ghi").mkdir()
        assert remove_stale_job_dirs(config.DATA_DIR, lambda: {first, second}) == []
        assert (jobs_dir / f"job-{first}-ghi").is_dir()


def test_scans_update_the_gpu_inventory_without_deleting(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    first = client.get(f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}").get_json()
    assert first["status"] == "processing" and first["scan_id"]
    with app.app_context():
        finalize(first["job_id"], "successful", 0, "", gpu_report(gpu(0, GPU_A), gpu(1, GPU_B)))
    done = client.get(f"/gpuaas/node/scan_gpus/status?scan_id={first['scan_id']}").get_json()
    assert done["status"] == "completed"
    assert done["resources"]["gpus"][0] == {"uuid": GPU_A, "vendor": "NVIDIA", "gpu_model": "NVIDIA L40S",
                                            "memory_in_mb": 46068}

    second = client.get(f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(second["job_id"], "successful", 0, "", gpu_report(gpu(0, GPU_A), gpu(1, GPU_B, "lost")))
        statuses = {g.uuid: g.assignment_status for g in session().scalars(select(Gpu)).all()}
    assert statuses == {GPU_A: GpuAssignment.UNASSIGNED, GPU_B: GpuAssignment.UNAVAILABLE}
    shown = client.get(f"/gpuaas/node/{node['id']}").get_json()
    assert [(g["uuid"], g["assignment_status"]) for g in shown["gpus"]] == [(GPU_A, "UNASSIGNED"),
                                                                            (GPU_B, "UNAVAILABLE")]
    assert shown["nvidia_driver_version"] == "550.54.15"
    assert_error(client.get("/gpuaas/node/scan_gpus/status?scan_id=nope"), 404)
    assert_error(client.get(f"/gpuaas/node/scan_npus/status?scan_id={first['scan_id']}"), 404)  # wrong kind


def test_failed_scan_marks_gpus_unavailable(app, client, region):
    node = add_node(client, region)
    set_status(app, node["id"], NodeStatus.INITIALIZED)
    scan = client.get(f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(scan["job_id"], "successful", 0, "", gpu_report(gpu(0, GPU_A)))
    again = client.get(f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(again["job_id"], "failed", 4, "", {})
        assert session().scalar(select(Scan.status).where(Scan.request_id == again["scan_id"])) == "failed"
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["gpus"][0]["assignment_status"] == "UNAVAILABLE"
    assert "could not be reached" in client.get(f"/api/jobs/{again['job_id']}").get_json()["explanation"]


def test_a_failed_job_names_its_first_failed_task_and_message(app, client, region):
    node = add_node(client, region)
    job_id = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]
    with app.app_context():
        db = session()
        db.add_all([
            JobEvent(job_id=job_id, node_id=node["id"], counter=1, event="runner_on_ok", host="w1", task="Probe",
                     data={"res": {"msg": "fine"}}),
            JobEvent(job_id=job_id, node_id=node["id"], counter=2, event="runner_on_failed", host="w1",
                     task="Install kubelet", data={"res": {"msg": "No package matching 'kubelet'\nsecond line"}}),
            JobEvent(job_id=job_id, node_id=node["id"], counter=3, event="runner_on_failed", host="w1",
                     task="Later", data={"res": {"msg": "not the first"}}),
        ])
        db.commit()
        finalize(job_id, "failed", 2, "", {})

    job = client.get(f"/api/jobs/{job_id}").get_json()
    assert job["explanation"] == "w1: task 'Install kubelet' failed: No package matching 'kubelet'"
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["status"] == "error"


def test_logs_are_paginated_in_a_stable_order(app, client, region):
    node = add_node(client, region)
    first = client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}").get_json()["job_id"]
    with app.app_context():
        finalize(first, "successful", 0, "", {})  # while it is pending, the same request is answered with it
    second = client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}").get_json()["job_id"]
    with app.app_context():
        for job_id in (second, first):  # stored out of order on purpose
            for counter in (3, 1, 2):
                session().add(JobEvent(job_id=job_id, node_id=node["id"], counter=counter, event="runner_on_ok",
                                       stdout=f"{job_id}-{counter}"))
        session().commit()

    page1 = client.get(f"/gpuaas/node/{node['id']}/logs?page=1&per_page=4").get_json()
    page2 = client.get(f"/gpuaas/node/{node['id']}/logs?page=2&per_page=4").get_json()

    assert page1["total"] == 6
    order = [item["stdout"] for item in page1["items"] + page2["items"]]
    assert order == [f"{first}-1", f"{first}-2", f"{first}-3", f"{second}-1", f"{second}-2", f"{second}-3"]
    assert_error(client.get(f"/gpuaas/node/{node['id']}/logs?per_page=0"), 422, field="per_page")


def test_read_only_jobs_on_several_nodes_share_one_run(app, client, region):
    nodes = [add_node(client, region, name=f"w{i}") for i in range(3)]
    for node in nodes:
        set_status(app, node["id"], NodeStatus.INITIALIZED)
    scans = [client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}").get_json()["job_id"] for node in nodes]
    reboot = client.post(f"/gpuaas/node/reboot?node_id={nodes[0]['id']}").get_json()["job_id"]
    with app.app_context():
        # The same request again is answered with the pending job; two at the very same moment may both be
        # recorded (SQLite locks no row), as this one is.
        twin = session().get(Job, scans[0])
        again = Job(operation=twin.operation, mutating=False, node_id=twin.node_id, extravars=dict(twin.extravars))
        session().add(again)
        session().commit()
        again = again.id
    set_created(app, {job_id: 5.0 for job_id in [*scans, again]})  # requests still arriving: a burst

    with app.app_context():
        assert claim_next() == [reboot]  # mutating jobs start at once, and alone
        assert claim_next() == []  # read-only ones wait while their burst goes on
    set_created(app, {job_id: -0.1 for job_id in [*scans, again]})  # burst over, well within the window
    with app.app_context():
        batch = claim_next()
        statuses = {job.id: job.status for job in session().scalars(select(Job))}
    assert batch == scans  # the same node twice never joins a batch
    assert statuses[again] is JobStatus.PENDING


def test_a_burst_that_never_ends_does_not_hold_its_first_jobs_past_the_window(app, client, region):
    from gpuaas_api.jobs.queue import BATCH_WINDOW_SECONDS

    nodes = [add_node(client, region, name=f"w{i}") for i in range(2)]
    for node in nodes:
        set_status(app, node["id"], NodeStatus.INITIALIZED)
    old, new = [client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}").get_json()["job_id"]
                for node in nodes]
    set_created(app, {old: -2 * BATCH_WINDOW_SECONDS, new: 5.0})

    with app.app_context():
        assert claim_next() == [old, new]  # the old one goes, and takes the newcomer along


def test_workers_racing_for_one_burst_never_split_it(app, client, region):
    import threading

    from gpuaas_api.db import release

    nodes = [add_node(client, region, name=f"w{i}") for i in range(10)]
    for node in nodes:
        set_status(app, node["id"], NodeStatus.INITIALIZED)
    burst = [client.get(f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}").get_json()["job_id"] for node in nodes]
    set_created(app, {job_id: -0.1 for job_id in burst})
    start, claims = threading.Barrier(4), []

    def worker():
        with app.app_context():
            start.wait()
            try:
                claims.append(claim_next())
            except Exception:  # a writer that lost the race on SQLite: claimed nothing
                claims.append([])
            finally:
                release()

    threads = [threading.Thread(target=worker) for _thread in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(claims, key=len) == [[], [], [], burst]


def test_deinit_of_the_controller_takes_its_cluster_down(app, client, region):
    controller = add_node(client, region, name="ctrl", is_controller_node=True, is_worker_node=False)
    set_status(app, controller["id"], NodeStatus.INITIALIZED)
    enabled = client.post(f"/gpuaas/enable?controller_node_id={controller['id']}").get_json()
    with app.app_context():
        finalize(enabled["job_id"], "successful", 0, "", {"gpuaas_cluster": {"api_server_port": 6443}})

    deinit = client.get(f"/gpuaas/node/deinit?gpuaas_node_id={controller['id']}").get_json()
    with app.app_context():
        finalize(deinit["job_id"], "successful", 0, "", {})

    assert client.get(f"/gpuaas/{enabled['gpuaas_id']}").get_json()["status"] == "GPUAAS_INACTIVE"
    assert client.get(f"/gpuaas/node/{controller['id']}").get_json()["status"] == "uninitialized"
    again = client.post(f"/gpuaas/enable?controller_node_id={controller['id']}")
    assert_error(again, 409)  # uninitialized: init it first


def test_the_kubernetes_name_is_derived_once_from_the_hostname_at_first_contact(app, client, region):
    node = add_node(client, region, name="acc-wrk")
    other = add_node(client, region, name="acc-wrk-2")
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["kubernetes_name"] is None

    probe = client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(probe["job_id"], "successful", 0, "", {"gpuaas_conn_check": {
            f"node-{node['id']}": {"ssh": "ok", "python": "ok", "hostname": "GPU-H100-01.dc1.example.com"}}})
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["kubernetes_name"] == "gpu-h100-01"
    listed = {n["id"]: n for n in client.get("/gpuaas/node/list").get_json()}
    assert listed[node["id"]]["kubernetes_name"] == "gpu-h100-01"

    # Later contacts never rename it; the jobs carry it to the roles.
    init = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(init["job_id"], "successful", 0, "", {"gpuaas_node_hostnames": {f"node-{node['id']}": "renamed-host"}})
        from gpuaas_api.jobs.inventory import host_spec
        assert host_spec(session().get(Node, node["id"])).hostvars["gpuaas_node_name"] == "gpu-h100-01"
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["kubernetes_name"] == "gpu-h100-01"

    # A second host with the same hostname in the region gets its id appended (node_init reports it).
    set_status(app, other["id"], NodeStatus.UNINITIALIZED)
    init_other = client.get(f"/gpuaas/node/init?gpuaas_node_id={other['id']}").get_json()
    with app.app_context():
        finalize(init_other["job_id"], "successful", 0, "", {"gpuaas_node_hostnames": {f"node-{other['id']}": "gpu-h100-01"}})
    assert client.get(f"/gpuaas/node/{other['id']}").get_json()["kubernetes_name"] == f"gpu-h100-01-{other['id']}"


def test_a_failed_or_silent_first_contact_leaves_the_kubernetes_name_unset(app, client, region):
    node = add_node(client, region, name="quiet")
    probe = client.get(f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(probe["job_id"], "failed", 4, "", {"gpuaas_conn_check": {
            "quiet": {"ssh": "failed", "python": "skipped", "hostname": None}}})
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["kubernetes_name"] is None


def test_a_reboot_of_a_node_in_a_cluster_brings_its_controller_to_drain_it(app, client, region):
    controller = add_node(client, region, name="ctrl", is_controller_node=True, is_worker_node=False)
    worker = add_node(client, region, name="w1")
    loner = add_node(client, region, name="w2")
    for node in (controller, worker, loner):
        set_status(app, node["id"], NodeStatus.INITIALIZED)
    enabled = client.post(f"/gpuaas/enable?controller_node_id={controller['id']}").get_json()
    with app.app_context():
        finalize(enabled["job_id"], "successful", 0, "", {"gpuaas_cluster": {"api_server_port": 6443}})
    joined = client.post("/gpuaas/node/join", json={"joinee_node_id": worker["id"], "region_id": region["id"]})
    with app.app_context():
        finalize(joined.get_json()["job_id"], "successful", 0, "", {})

    def reboot_job(node):
        reply = client.post(f"/gpuaas/node/reboot?node_id={node['id']}").get_json()
        with app.app_context():
            job = session().get(Job, reply["job_id"])
            hosts, variables = job.extravars["hosts"], job.extravars["vars"]
            finalize(job.id, "successful", 0, "", {})
        return hosts, variables

    assert reboot_job(worker) == ([worker["id"], controller["id"]], {"node_reboot_controller": f"node-{controller['id']}"})
    assert reboot_job(controller) == ([controller["id"]], {"node_reboot_controller": f"node-{controller['id']}"})
    assert reboot_job(loner) == ([loner["id"]], {})  # not in a cluster: nothing to drain


def test_init_and_every_scan_fill_in_the_node_facts(app, client, region):
    node = add_node(client, region)
    facts = {"cpu_model": "AMD EPYC 9454 48-Core Processor", "cores": 96, "total_memory_in_mb": 773_000,
             "total_disk_in_mb": 3_815_447}
    init = client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()
    with app.app_context():
        finalize(init["job_id"], "successful", 0, "", {"gpuaas_node_facts": {f"node-{node['id']}": facts}})
    shown = client.get(f"/gpuaas/node/{node['id']}").get_json()
    assert {name: shown[name] for name in facts} == facts

    # A later scan updates what it could read, and a fact it could not tell (null) keeps its value.
    scan = client.get(f"/gpuaas/node/scan_gpus?gpuaas_node_id={node['id']}").get_json()
    later = {**facts, "cpu_model": None, "total_memory_in_mb": 1_547_000}
    with app.app_context():
        finalize(scan["job_id"], "successful", 0, "", {**gpu_report(gpu(0, GPU_A)),
                                                       "gpuaas_node_facts": {f"node-{node['id']}": later}})
    shown = client.get(f"/gpuaas/node/{node['id']}").get_json()
    assert (shown["cpu_model"], shown["total_memory_in_mb"], shown["cores"]) == (facts["cpu_model"], 1_547_000, 96)
    # Another host's facts in the same artifact never land on this node.
    assert client.get("/gpuaas/node/list").get_json()[0]["total_disk_in_mb"] == facts["total_disk_in_mb"]
