"""The hostedai.gpuaas.pool module, run by ansible-playbook against the service over real HTTP.

The service is this app behind a real WSGI server on loopback. Its pool_apply jobs are
finished by a settler thread as the nodes would answer (the e2e tests run them on the fleet),
so these tests cover the module's logic: idempotence, check mode, diff, every kind of change,
retry after a partial failure, and the service's refusals.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from werkzeug.serving import make_server

from api_helpers import ADMIN
from gpuaas_api.db import release, session
from gpuaas_api.jobs.finalize import finalize
from gpuaas_api.pools import start_pool_deployment
from gpuaas_api.models import Gpu, Job, Node, Pool
from gpuaas_api.states import JobStatus, Operation

ROOT = Path(__file__).resolve().parents[2]


class Settler(threading.Thread):
    """Finishes each pool_apply job as its nodes would: successful, except on the nodes in ``failing``."""

    def __init__(self, app):
        super().__init__(daemon=True)
        self.app, self.failing, self.stopping = app, set(), threading.Event()

    def run(self):
        with self.app.app_context():
            while not self.stopping.is_set():
                job = session().scalars(select(Job).where(Job.operation == Operation.POOL_APPLY.value,
                                                          Job.status == JobStatus.PENDING).limit(1)).first()
                if job is not None:
                    job.status = JobStatus.RUNNING
                    session().commit()
                    start_pool_deployment(job.extravars["pool_id"])
                    names = {n.id: n.name for n in session().scalars(select(Node))}
                    outcomes = {i: names[i] not in self.failing for i in job.extravars["targets"]}
                    failed = not all(outcomes.values())
                    finalize(job.id, "failed" if failed else "successful", 2 if failed else 0, "", {},
                             host_outcomes=outcomes)
                release()
                time.sleep(0.05)


@pytest.fixture
def live(app, fleet_db, token):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settler = Settler(app)
    settler.start()
    yield {"url": f"http://127.0.0.1:{server.server_port}", "token": token, "settler": settler, **fleet_db}
    settler.stopping.set()
    settler.join(5)
    server.shutdown()


def run_module(live, tmp_path, calls: list[dict], check=False, diff=True) -> list[dict]:
    """Run hostedai.gpuaas.pool once per entry of ``calls`` (one play); each task's registered result."""
    tasks = []
    for index, args in enumerate(calls):
        args = {"api_url": live["url"], "api_token": live["token"], "gpuaas_id": live["gpuaas_id"],
                "wait_timeout": 30, **args}
        tasks.append({"name": f"call {index}", "hostedai.gpuaas.pool": args, "register": f"call_{index}",
                      "ignore_errors": True, "check_mode": check, "diff": diff})
    results = tmp_path / "results.json"
    tasks.append({"name": "keep the results", "ansible.builtin.copy": {
        "content": "{{ [%s] | to_json }}" % ", ".join(f"call_{i}" for i in range(len(calls))), "dest": str(results)}})
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".build/collections"),
           "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
           "ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote-tmp"),  # -c local: the "remote" is this machine
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(results.read_text())


def pools(app) -> dict:
    with app.app_context():
        db = session()
        found = {}
        for pool in db.scalars(select(Pool)):
            found[pool.pool_name] = (pool.status.value, pool.sharing_ratio, pool.time_quantum_in_sec,
                                     pool.security_level,
                                     sorted(g.uuid for g in db.scalars(select(Gpu).where(Gpu.pool_id == pool.id))))
        release()
        return found


def test_declare_change_and_remove_a_pool(app, live, tmp_path):
    w1, w2 = live["uuids"]["w1"], live["uuids"]["w2"]
    declared = {"pool_name": "inference", "sharing_ratio": 4, "security_level": "medium", "gpus": w1}

    created, again = run_module(live, tmp_path, [declared, declared])

    assert created["changed"] and created["pool"]["status"] == "ACTIVE" and len(created["job_ids"]) == 1
    assert created["diff"] == {"before": {}, "after": {"pool_name": "inference", "time_quantum_in_sec": 30,
                                                       "sharing_ratio": 4, "security_level": "medium", "gpus": w1}}
    assert not again["changed"] and again["job_ids"] == []
    assert pools(app) == {"inference": ("ACTIVE", 4, 30, "medium", w1)}

    changed = {**declared, "sharing_ratio": 2, "security_level": "high", "gpus": [w1[0], w2[0]]}
    [preview] = run_module(live, tmp_path, [changed], check=True)

    assert preview["changed"] and preview["job_ids"] == []
    assert preview["diff"]["before"]["gpus"] == w1 and preview["diff"]["after"]["gpus"] == [w1[0], w2[0]]
    assert preview["diff"]["after"]["sharing_ratio"] == 2
    assert pools(app) == {"inference": ("ACTIVE", 4, 30, "medium", w1)}  # check mode changed nothing

    [applied] = run_module(live, tmp_path, [changed])

    assert applied["changed"] and len(applied["job_ids"]) == 3  # settings, GPUs in, GPUs out: one change each
    assert pools(app) == {"inference": ("ACTIVE", 2, 30, "high", sorted([w1[0], w2[0]]))}
    with app.app_context():
        assert {g.uuid: g.assignment_status.value for g in session().scalars(select(Gpu))}[w1[1]] == "UNASSIGNED"

    removed, absent_again = run_module(live, tmp_path, [{"pool_name": "inference", "state": "absent"}] * 2)

    assert removed["changed"] and removed["pool"] == {} and removed["diff"]["after"] == {}, removed
    assert not absent_again["changed"]
    assert pools(app) == {}


def test_a_partial_failure_fails_the_task_and_the_next_run_retries(app, live, tmp_path):
    w1, w2 = live["uuids"]["w1"], live["uuids"]["w2"]
    declared = {"pool_name": "training", "sharing_ratio": 2, "security_level": "low", "gpus": [w1[0], w2[0]]}
    live["settler"].failing.add("w2")

    [failed] = run_module(live, tmp_path, [declared])

    assert failed["failed"] and "failed on some nodes" in failed["msg"]
    assert pools(app)["training"][0] == "ERROR_WHILE_DEPLOYING"
    live["settler"].failing.clear()

    [retried] = run_module(live, tmp_path, [declared])

    assert retried["changed"] and retried["pool"]["status"] == "ACTIVE"
    assert pools(app)["training"] == ("ACTIVE", 2, 30, "low", sorted([w1[0], w2[0]]))


def test_refusals_fail_the_task_and_change_nothing(app, live, tmp_path):
    w1, x1 = live["uuids"]["w1"], live["uuids"]["x1"]
    run_module(live, tmp_path, [{"pool_name": "taken", "sharing_ratio": 2, "security_level": "low", "gpus": w1}])
    before = pools(app)

    results = run_module(live, tmp_path, [
        {"pool_name": "p", "sharing_ratio": 11, "security_level": "low"},
        {"pool_name": "p", "time_quantum_in_sec": 9, "sharing_ratio": 2, "security_level": "low"},
        {"pool_name": "p", "sharing_ratio": 2},
        {"pool_name": "p", "sharing_ratio": 2, "security_level": "low", "gpus": [w1[0]]},
        {"pool_name": "p", "sharing_ratio": 2, "security_level": "low", "gpus": ["GPU-nobody"]},
        {"pool_name": "p", "sharing_ratio": 2, "security_level": "low", "gpus": x1},
        {"pool_name": "p", "sharing_ratio": 2, "security_level": "low", "api_token": "not-a-token"},
        {"pool_name": "p", "sharing_ratio": 2, "security_level": "max"},
    ])

    assert all(result["failed"] for result in results), results
    messages = [result["msg"] for result in results]
    assert "sharing_ratio must be between 1 and 10" in messages[0]
    assert "time_quantum_in_sec must be between 10 and 120" in messages[1]
    assert "needs security_level" in messages[2]
    assert "HTTP 409" in messages[3] and w1[0] in messages[3]
    assert "HTTP 4" in messages[4] and "GPU-nobody" in messages[4]
    assert "HTTP 4" in messages[5]
    assert "HTTP 401" in messages[6]
    assert "security_level" in messages[7]
    assert pools(app) == before


def test_logging_in_with_a_username_and_password(app, live, tmp_path):
    [created] = run_module(live, tmp_path, [{"pool_name": "by-login", "sharing_ratio": 3, "security_level": "high",
                                             "api_token": None, "api_username": ADMIN["username"],
                                             "api_password": ADMIN["password"]}])

    assert created["changed"], created
    assert pools(app) == {"by-login": ("ACTIVE", 3, 30, "high", [])}
