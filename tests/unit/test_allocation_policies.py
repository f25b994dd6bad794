"""The agent's allocation policies (GetPreferredAllocation: gpuaas_agent.devices.preferred), case by
case: which slots the kubelet is told to give a container.  No agent runs here; test_agent.py asks
the running agent over gRPC."""
from __future__ import annotations

import pytest
from gpuaas_agent.config import ALLOCATION_POLICIES
from gpuaas_agent.devices import ResourcePlan, Slot, preferred

# A pool's slots on three GPUs, advertised in this order: A and B with four slots, C with two.
SLOTS = {"A": 4, "B": 4, "C": 2}
POOL = ResourcePlan("gpuaas.hosted.ai/pool-1", "pool-1.sock",
                    tuple(Slot(f"{gpu}::{n}", gpu) for gpu, count in SLOTS.items() for n in range(1, count + 1)), {})
# GPUs in no pool: one device each, its ID the GPU's.
WHOLE = ResourcePlan("nvidia.com/gpu", "gpu.sock", tuple(Slot(uuid, uuid) for uuid in ("U1", "U2", "U3")), {})


def slots(gpu: str, *numbers: int) -> list[str]:
    return [f"{gpu}::{n}" for n in numbers]


ALL_A, ALL_B, ALL_C = slots("A", 1, 2, 3, 4), slots("B", 1, 2, 3, 4), slots("C", 1, 2)

# id: (policy, plan, available, must_include, size, expected)
CASES = {
    # binpack: the GPU with the fewest free slots first, whole GPUs kept free.
    "binpack-fewest-free-first": ("binpack", POOL, slots("A", 4) + ALL_B, [], 2, ["A::4", "B::1"]),
    "binpack-fills-one-gpu": ("binpack", POOL, ALL_A + ALL_B, [], 3, ["A::1", "A::2", "A::3"]),
    "binpack-spills-to-the-next": ("binpack", POOL, slots("A", 3, 4) + ALL_B, [], 3, ["A::3", "A::4", "B::1"]),
    "binpack-tie-in-advertising-order": ("binpack", POOL, slots("B", 1, 2) + slots("A", 1, 2), [], 1, ["A::1"]),
    "binpack-must-include-first": ("binpack", POOL, slots("A", 4) + ALL_B, ["B::3"], 2, ["B::3", "B::1"]),
    "binpack-stays-on-the-must-include-gpu": ("binpack", POOL, ALL_A + ALL_C, ["A::1"], 3, ["A::1", "A::2", "A::3"]),
    "binpack-must-include-not-available": ("binpack", POOL, slots("A", 1), ["B::1"], 1, ["A::1"]),
    "binpack-must-include-cut-to-size": ("binpack", POOL, ALL_A, slots("A", 1, 2, 3), 2, ["A::1", "A::2"]),
    "binpack-fewer-available-than-asked": ("binpack", POOL, ["A::1", "B::1"], [], 5, ["A::1", "B::1"]),
    "binpack-size-0": ("binpack", POOL, ALL_A, ["A::1"], 0, []),
    "binpack-unknown-ids-ignored": ("binpack", POOL, ["made-up", "C::2"], [], 2, ["C::2"]),
    "binpack-whole-gpus-in-order": ("binpack", WHOLE, ["U3", "U1"], [], 1, ["U1"]),
    # spread: one slot from each GPU in turn, the GPU with the most free slots first.
    "spread-one-per-gpu": ("spread", POOL, ALL_A + ALL_B, [], 2, ["A::1", "B::1"]),
    "spread-most-free-first": ("spread", POOL, slots("A", 4) + ALL_B, [], 2, ["B::1", "A::4"]),
    "spread-round-robin": ("spread", POOL, ALL_A + ALL_B + ALL_C, [], 5, ["A::1", "B::1", "C::1", "A::2", "B::2"]),
    "spread-goes-on-when-a-gpu-runs-out": ("spread", POOL, slots("A", 1) + slots("B", 1, 2, 3), [], 4,
                                           ["B::1", "A::1", "B::2", "B::3"]),
    "spread-must-include-first": ("spread", POOL, ALL_A + ALL_B, ["A::2"], 3, ["A::2", "B::1", "A::1"]),
    "spread-fewer-available-than-asked": ("spread", POOL, ["A::1", "B::1"], [], 3, ["A::1", "B::1"]),
    "spread-whole-gpus": ("spread", WHOLE, ["U2", "U3"], [], 2, ["U2", "U3"]),
}


@pytest.mark.parametrize("policy, plan, available, must_include, size, expected", CASES.values(), ids=CASES.keys())
def test_preferred_allocation(policy, plan, available, must_include, size, expected):
    assert preferred(plan, available, must_include, size, policy) == expected


def test_every_policy_has_cases():
    assert {case[0] for case in CASES.values()} == set(ALLOCATION_POLICIES)


@pytest.mark.parametrize("policy", ALLOCATION_POLICIES)
@pytest.mark.parametrize("size", range(0, 12))
def test_the_answer_is_size_ids_of_available_must_include_first_no_repeats(policy, size):
    available, must_include = slots("A", 2, 3) + ALL_B + slots("C", 1), ["B::4", "C::1"]
    chosen = preferred(POOL, available, must_include, size, policy)
    assert len(chosen) == min(size, len(available)) and len(set(chosen)) == len(chosen)
    assert set(chosen) <= set(available)
    assert chosen[:min(size, 2)] == must_include[:size]
