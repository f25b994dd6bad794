"""What the service explains a failure or a refusal as, case by case, from the pure functions that
word it: no database (no fixture), no process.  tests/unit/test_explanations.py has the collection's
modules' and the agent's.

- marshmallow's messages as the error shape's field errors (errors._flatten);
- a node operation refused in a node's status (states.refusal);
- a run's outcome for each of its hosts: unreachable (rc 4), failed (rc 2), or not reached
  (jobs/results.host_outcome; finalize records it per host).
"""
from __future__ import annotations

import pytest

from gpuaas_api.errors import _flatten
from gpuaas_api.jobs.runner import RunResult
from gpuaas_api.jobs.results import host_outcome
from gpuaas_api.states import NodeStatus, Operation, refusal


# id: (marshmallow's messages as webargs passes them, the error shape's errors)
VALIDATION_MESSAGES = {
    "body-field": ({"json": {"name": ["Missing data for required field."]}},
                   [{"field": "name", "message": "Missing data for required field."}]),
    "query-field": ({"query": {"per_page": ["Must be greater than or equal to 1."]}},
                    [{"field": "per_page", "message": "Must be greater than or equal to 1."}]),
    "nested-field": ({"json": {"pool": {"sharing_ratio": ["Must be between 1 and 10."]}}},
                     [{"field": "pool.sharing_ratio", "message": "Must be between 1 and 10."}]),
    "list-item": ({"json": {"attach_gpu_ids": {1: ["Not a valid string."]}}},
                  [{"field": "attach_gpu_ids.1", "message": "Not a valid string."}]),
    "list-of-objects": ({"json": {"gpus": [{"uuid": ["Not a valid string."]}]}},
                        [{"field": "gpus.uuid", "message": "Not a valid string."}]),
    "several-messages": ({"json": {"name": ["Too long.", "Not printable."]}},
                         [{"field": "name", "message": "Too long."}, {"field": "name", "message": "Not printable."}]),
    "several-fields": ({"json": {"a": ["one"], "b": ["two"]}},
                       [{"field": "a", "message": "one"}, {"field": "b", "message": "two"}]),
    "whole-body": ({"json": ["Invalid input type."]}, [{"field": "", "message": "Invalid input type."}]),
    "schema-level": ({"json": {"_schema": ["Give gpuaas_id or cluster_id."]}},
                     [{"field": "_schema", "message": "Give gpuaas_id or cluster_id."}]),
    "not-a-list": ({"json": {"x": "oops"}}, [{"field": "x", "message": "oops"}]),
}


@pytest.mark.parametrize("messages, errors", VALIDATION_MESSAGES.values(), ids=VALIDATION_MESSAGES.keys())
def test_validation_messages_become_field_errors(messages, errors):
    assert _flatten(messages) == errors


# id: (operation, the node's status, the refusal or None)
REFUSALS = {
    "init-twice": (Operation.INIT, NodeStatus.INITIALIZED,
                   "cannot init a node that is initialized (allowed from: error, uninitialized)"),
    "init-again-after-an-error": (Operation.INIT, NodeStatus.ERROR, None),
    "leave-outside-a-cluster": (Operation.LEAVE, NodeStatus.INITIALIZED,
                                "cannot leave a node that is initialized (allowed from: error, healthy, k8_initialized)"),
    "scan-before-init": (Operation.SCAN_GPUS, NodeStatus.UNINITIALIZED,
                         "cannot scan gpus a node that is uninitialized (allowed from: error, healthy, initialized, "
                         "initializing, k8_initialized, k8_initializing, resetting)"),
    "test-conn-always": (Operation.TEST_CONN, NodeStatus.RESETTING, None),
    "deinit-while-resetting": (Operation.DEINIT, NodeStatus.RESETTING,
                               "cannot deinit a node that is resetting (allowed from: error, healthy, initialized, "
                               "k8_initialized, k8_initializing, uninitialized)"),
}


@pytest.mark.parametrize("operation, status, expected", REFUSALS.values(), ids=REFUSALS.keys())
def test_an_operation_refused_in_a_status_says_where_it_may_start(operation, status, expected):
    assert refusal(operation, status) == expected


def run(status: str, rc, **stats) -> RunResult:
    return RunResult(status=status, rc=rc, stats=stats, artifact_data={}, new_host_keys={})


# id: (the run, the outcome for node-1)
HOST_OUTCOMES = {
    "succeeded": (run("successful", 0, processed={"node-1": 1}, ok={"node-1": 5}), ("successful", 0)),
    "unreachable": (run("failed", 4, processed={"node-1": 1}, dark={"node-1": 1}), ("failed", 4)),
    "task-failed": (run("failed", 2, processed={"node-1": 1}, failures={"node-1": 1}), ("failed", 2)),
    "unreachable-wins-over-failed": (run("failed", 2, dark={"node-1": 1}, failures={"node-1": 1}), ("failed", 4)),
    "another-host-failed": (run("failed", 2, processed={"node-1": 1, "node-2": 1}, failures={"node-2": 1}),
                            ("successful", 0)),
    "never-reached": (run("failed", 2, processed={"node-2": 1}, failures={"node-2": 1}), ("failed", 2)),
    "no-stats": (run("failed", 1), ("failed", 1)),
    "canceled": (run("canceled", None, processed={"node-1": 1}), ("canceled", None)),
    "timeout": (run("timeout", None, processed={"node-1": 1}), ("timeout", None)),
    "error": (run("error", None), ("error", None)),
}


@pytest.mark.parametrize("result, outcome", HOST_OUTCOMES.values(), ids=HOST_OUTCOMES.keys())
def test_a_run_s_outcome_for_one_host(result, outcome):
    assert host_outcome(result, "node-1") == outcome
