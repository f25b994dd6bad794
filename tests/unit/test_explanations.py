"""What a failure or a refusal is explained as, case by case, from the pure functions that word it:
no database, no process.  The service's own are tests/api/test_run_explanations.py's.

- the collection's API modules: a reply outside 2xx as one line (module_utils/gpuaas_api.explain);
- the agent: why Allocate refuses a container's devices (devices.container_allocation).
"""
from __future__ import annotations

import importlib.util

import pytest
from gpuaas_agent.config import GpuShare, Settings
from gpuaas_agent.devices import AllocationRefused, ResourcePlan, Slot, container_allocation
from module_runner import REPO

_spec = importlib.util.spec_from_file_location("gpuaas_module_utils_api", REPO / "plugins/module_utils/gpuaas_api.py")
module_utils = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(module_utils)


# id: (status, message, errors, explanation)
API_ERRORS = {
    "message-only": (409, "node 3 is busy with job 7", None, "node 3 is busy with job 7 (HTTP 409)"),
    "no-errors-listed": (404, "pool 9 not found", [], "pool 9 not found (HTTP 404)"),
    "one-field": (422, "pool.sharing_ratio: Must be between 1 and 10.",
                  [{"field": "pool.sharing_ratio", "message": "Must be between 1 and 10."}],
                  "pool.sharing_ratio: Must be between 1 and 10. (HTTP 422): pool.sharing_ratio: Must be between 1 and 10."),
    "two-fields": (422, "name: Missing data for required field.",
                   [{"field": "name", "message": "Missing data for required field."},
                    {"field": "node_ip", "message": "Not a valid IP address."}],
                   "name: Missing data for required field. (HTTP 422): name: Missing data for required field.; "
                   "node_ip: Not a valid IP address."),
    "body-level-field": (422, "Invalid JSON body.", [{"field": "", "message": "Invalid JSON body."}],
                         "Invalid JSON body. (HTTP 422): : Invalid JSON body."),
    "unreachable-service": (-1, "cannot reach https://gpuaas.example/api: <urlopen error [Errno 111] Connection refused>",
                            None, "cannot reach https://gpuaas.example/api: <urlopen error [Errno 111] Connection refused> "
                                  "(HTTP -1)"),
}


@pytest.mark.parametrize("status, message, errors, explanation", API_ERRORS.values(), ids=API_ERRORS.keys())
def test_a_module_explains_an_api_error_in_one_line(status, message, errors, explanation):
    assert module_utils.explain(module_utils.ApiError(status, message, errors)) == explanation


def share(uuid: str, level: str) -> GpuShare:
    return GpuShare(uuid=uuid, pool_id=7, resource="gpuaas.hosted.ai/pool-7", slots=2, security_level=level,
                    compute_mode="DEFAULT", memory_limit_mb=1024, compute_share_percent=25)


def pool(level: str) -> ResourcePlan:
    return ResourcePlan("gpuaas.hosted.ai/pool-7", "pool-7.sock",
                        tuple(Slot(f"{gpu}::{n}", gpu) for gpu in ("A", "B") for n in (1, 2)),
                        {gpu: share(gpu, level) for gpu in ("A", "B")})


# id: (the pool's level, the devices asked for, the refusal)
ALLOCATE_REFUSALS = {
    "unknown-device": ("low", ["A::1", "C::1"], "unknown device C::1 for gpuaas.hosted.ai/pool-7"),
    "unknown-slot": ("medium", ["A::3"], "unknown device A::3 for gpuaas.hosted.ai/pool-7"),
    "medium-on-two-gpus": ("medium", ["A::1", "B::1"],
                           "gpuaas.hosted.ai/pool-7: medium (MPS) slots of one container must be on one GPU, not 2"),
}


@pytest.mark.parametrize("level, devices, explanation", ALLOCATE_REFUSALS.values(), ids=ALLOCATE_REFUSALS.keys())
def test_allocate_says_why_it_refuses(level, devices, explanation):
    with pytest.raises(AllocationRefused) as refused:
        container_allocation(pool(level), devices, Settings())
    assert str(refused.value) == explanation


@pytest.mark.parametrize("level, devices", [("low", ["A::1", "B::1"]), ("high", ["A::1", "B::2"]),
                                            ("medium", ["A::1", "A::2"])],
                         ids=["low-on-two-gpus", "high-on-two-gpus", "medium-on-one-gpu"])
def test_allocate_gives_what_it_does_not_refuse(level, devices):
    assert container_allocation(pool(level), devices, Settings(device_list_strategy=("envvar",)))["envs"]["NVIDIA_VISIBLE_DEVICES"] == \
        ",".join(sorted({device.split("::")[0] for device in devices}))
