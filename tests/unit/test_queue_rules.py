"""The job engine's pure rules, table-driven, with no database: which node statuses a queued request
may meet (statuses_after), which jobs wait in their burst (bursts), which share a run (joinable),
where a pending job stands (standing_of), whether a run stopped before a host, and the explanation of a failed task
(tests/api/test_run_explanations.py has each host's outcome)."""
from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from gpuaas_api.jobs.finalize import failed_task_line
from gpuaas_api.jobs.queue import BurstTiming, Standing, bursts, joinable, standing_of
from gpuaas_api.jobs.results import host_artifact, stopped_before
from gpuaas_api.models import Job
from gpuaas_api.operations.nodes import refusal_whatever_happens, statuses_after
from gpuaas_api.states import JobStatus, NodeStatus, Operation

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
S = NodeStatus


def job(job_id: int, operation: Operation | str = Operation.INIT, status=JobStatus.PENDING, node_id: int | None = 1,
        mutating: bool = True, age: float = 0.0, hosts: list[int] | None = None, variables: dict | None = None,
        **extravars) -> Job:
    operation = operation.value if isinstance(operation, Operation) else operation
    return Job(id=job_id, operation=operation, status=status, node_id=node_id, mutating=mutating,
               created_at=T0 - dt.timedelta(seconds=age),
               extravars={"hosts": hosts if hosts is not None else [node_id], "vars": variables or {}, **extravars})


# ------------------------------------------------------------------ statuses_after / refusals
@pytest.mark.parametrize("status, ahead, holder, expected", [
    (S.UNINITIALIZED, [], None, {S.UNINITIALIZED}),
    # A running init ends either way: initialized or error.
    (S.INITIALIZING, [job(1, Operation.INIT, JobStatus.RUNNING)], 1, {S.INITIALIZED, S.ERROR}),
    # A queued init may also be refused at its turn: the node may stay as it is.
    (S.UNINITIALIZED, [job(1, Operation.INIT)], None, {S.UNINITIALIZED, S.INITIALIZED, S.ERROR}),
    # Refused from where it stands: a queued enable behind nothing that moves the node changes nothing.
    (S.UNINITIALIZED, [job(1, Operation.ENABLE)], None, {S.UNINITIALIZED}),
    # A pool change leaves the node's status as it is.
    (S.HEALTHY, [job(1, "pool_apply", node_id=None, targets=[1])], None, {S.HEALTHY}),
    # Two in a row: init (holding) then deinit (queued).
    (S.INITIALIZING, [job(1, Operation.INIT, JobStatus.RUNNING), job(2, Operation.DEINIT)], 1,
     {S.INITIALIZED, S.ERROR, S.UNINITIALIZED}),
    # A reboot moves nothing: its transition has no target status.
    (S.HEALTHY, [job(1, Operation.REBOOT, JobStatus.RUNNING)], 1, {S.HEALTHY}),
], ids=["nothing-ahead", "running-init", "queued-init", "refused-enable", "pool-change", "init-then-deinit", "reboot"])
def test_statuses_after(status, ahead, holder, expected):
    assert statuses_after(status, ahead, holder) == expected


@pytest.mark.parametrize("operation, status, ahead, holder, refused", [
    # join needs initialized: behind a running init it may be, so it is accepted (queued).
    (Operation.JOIN, S.INITIALIZING, [job(1, Operation.INIT, JobStatus.RUNNING)], 1, False),
    # enable from uninitialized behind a reboot: never allowed, whatever the reboot does.
    (Operation.ENABLE, S.UNINITIALIZED, [job(1, Operation.REBOOT, JobStatus.RUNNING)], 1, True),
    # init behind a running deinit: the deinit leaves uninitialized (or error): init allowed from both.
    (Operation.INIT, S.RESETTING, [job(1, Operation.DEINIT, JobStatus.RUNNING)], 1, False),
    # disable behind a running init that may fail (error): allowed only from initialized: possible.
    (Operation.DISABLE, S.INITIALIZING, [job(1, Operation.INIT, JobStatus.RUNNING)], 1, False),
], ids=["join-behind-init", "enable-never", "init-behind-deinit", "disable-behind-init"])
def test_refusal_whatever_happens(operation, status, ahead, holder, refused):
    assert (refusal_whatever_happens(operation, status, ahead, holder) is not None) is refused


# ------------------------------------------------------------------ bursts
TIMING = BurstTiming(read_only=(0.03, 0.2), node_operations=(0.25, 2.0))


def shares_all(pending_job: Job) -> bool:
    return pending_job.extravars.get("shares", True)


@pytest.mark.parametrize("pending, held", [
    ([], set()),
    # A lone request waits its quiet interval, then runs.
    ([job(1, age=0.1)], {1}),
    ([job(1, age=0.3)], set()),
    # Requests still arriving hold the whole burst, the oldest too...
    ([job(1, age=1.0), job(2, node_id=2, age=0.1)], {1, 2}),
    # ...but never past the window: the oldest goes, the newest waits on.
    ([job(1, age=2.5), job(2, node_id=2, age=0.1)], {2}),
    # Read-only jobs wait little: 30 ms quiet, 200 ms window.
    ([job(1, Operation.TEST_CONN, mutating=False, age=0.02)], {1}),
    ([job(1, Operation.TEST_CONN, mutating=False, age=0.05)], set()),
    # Each operation has its own burst: a new test_conn does not hold an old init.
    ([job(1, age=0.3), job(2, Operation.TEST_CONN, node_id=2, mutating=False, age=0.01)], {2}),
    # A job that shares no run never waits.
    ([job(1, age=0.0, shares=False)], set()),
], ids=["none", "lone-young", "lone-quiet", "burst-holds-all", "window-passed", "read-only-young",
        "read-only-quiet", "per-operation", "not-sharing"])
def test_bursts(pending, held):
    assert bursts(pending, T0, TIMING, shares=shares_all) == held


def test_bursts_reads_naive_times_as_utc():
    naive = job(1, age=0.1)
    naive.created_at = naive.created_at.replace(tzinfo=None)  # as SQLite gives it back
    assert bursts([naive], T0, TIMING, shares=shares_all) == {1}


# ------------------------------------------------------------------ joinable (batch_of's rule)
@pytest.mark.parametrize("first, candidates, batch", [
    (job(1), [job(2, node_id=2), job(3, node_id=3)], [1, 2, 3]),
    # A node appears once in a run.
    (job(1), [job(2, node_id=1), job(3, node_id=3)], [1, 3]),
    # Other variables: another run.
    (job(1, variables={"x": 1}), [job(2, node_id=2, variables={"x": 2}), job(3, node_id=3, variables={"x": 1})], [1, 3]),
    # The same helper (a join's controller), or none of it.
    (job(1, hosts=[1, 9]), [job(2, node_id=2, hosts=[2, 9]), job(3, node_id=3, hosts=[3, 8])], [1, 2]),
    # A helper is not also a target.
    (job(1, hosts=[1, 9]), [job(2, node_id=9, hosts=[9, 9])], [1]),
], ids=["three-nodes", "node-once", "same-vars", "same-helper", "helper-not-target"])
def test_joinable(first, candidates, batch):
    assert joinable(first, candidates) == batch


# ------------------------------------------------------------------ standing_of
@pytest.mark.parametrize("pending, holders, in_burst, standing", [
    (job(1), {1: 1}, set(), Standing.READY),
    (job(1), {1: 1}, {1}, Standing.IN_BURST),
    (job(1, Operation.TEST_CONN, mutating=False), {}, set(), Standing.READY),
    (job(1), {1: 7}, set(), Standing.BEHIND),
    (job(1), {1: None}, set(), Standing.QUEUED),
    # Its node was deleted: nothing to hold, its turn is checked (and its operation refuses it).
    (job(1), {}, set(), Standing.QUEUED),
    (job(1, "pool_apply", node_id=None, targets=[1, 2]), {1: 1, 2: 1}, set(), Standing.READY),
    (job(1, "pool_apply", node_id=None, targets=[1, 2]), {1: None, 2: 5}, set(), Standing.BEHIND),
], ids=["holds", "holds-in-burst", "read-only", "held-by-another", "free", "deleted-node", "pool-holds-all",
        "pool-one-held"])
def test_standing_of(pending, holders, in_burst, standing):
    assert standing_of(pending, holders, in_burst) is standing


# ------------------------------------------------------------------ a host's part of a run
def run(status="failed", rc=2, **stats):
    return SimpleNamespace(status=status, rc=rc, stats={kind: dict.fromkeys(hosts, 1) for kind, hosts in stats.items()})


@pytest.mark.parametrize("result, host, stopped", [
    (run(processed=["a"], failures=["a"]), "b", True),  # a rolling reboot stopped before b
    (run(processed=["a", "b"], failures=["a"]), "b", False),
    (run(processed=["a"]), "b", False),  # nobody failed: b's own problem
    (run("successful", 0, processed=["a"]), "b", False),
], ids=["stopped-before", "reached", "nobody-failed", "successful"])
def test_stopped_before(result, host, stopped):
    assert stopped_before(result, host) is stopped


def test_host_artifact_keeps_only_the_hosts_part():
    artifact = {"gpuaas_gpu_scan": {"a": {"gpus": []}, "b": {"gpus": [1]}}, "gpuaas_cluster": {"x": 1}, "count": 3}
    assert host_artifact(artifact, "b") == {"gpuaas_gpu_scan": {"b": {"gpus": [1]}}}


@pytest.mark.parametrize("event, res, line", [
    ("runner_on_failed", {"msg": "apt failed\nmore"}, "n1: task 'install' failed: apt failed"),
    ("runner_on_unreachable", {"msg": "ssh: timeout"}, "n1: task 'install' unreachable: ssh: timeout"),
    ("runner_on_failed", {"stderr": "E: boom"}, "n1: task 'install' failed: E: boom"),
    ("runner_on_failed", {}, "n1: task 'install' failed"),
    ("runner_on_failed", {"msg": "x" * 400}, "n1: task 'install' failed: " + "x" * 300),
], ids=["msg-first-line", "unreachable", "stderr", "no-message", "capped"])
def test_failed_task_line(event, res, line):
    assert failed_task_line("n1", "install", event, res) == line
