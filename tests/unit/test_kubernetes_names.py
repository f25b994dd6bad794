"""The rule for a node's Kubernetes name (api/gpuaas_api/kubernetes_names.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "api"))
from gpuaas_api.kubernetes_names import derive  # noqa: E402
from gpuaas_api.validation import NODE_NAME  # noqa: E402


@pytest.mark.parametrize("hostname, expected", [
    ("node1", "node1"),
    ("GPU-H100-01", "gpu-h100-01"),
    ("gpu-01.dc1.example.com", "gpu-01"),
    ("gpu_01", "gpu-01"),
    ("-edge-", "edge"),
    ("x" * 80, "x" * 63),
    ("___", "node-17"),
    ("", "node-17"),
])
def test_a_hostname_becomes_a_dns_label(hostname, expected):
    assert derive(hostname, 17, set()) == expected
    assert NODE_NAME.match(derive(hostname, 17, set()))


def test_a_label_taken_in_the_region_gets_the_node_id():
    assert derive("gpu-01", 17, {"gpu-01"}) == "gpu-01-17"
    long = derive("y" * 70, 123456, {"y" * 63})
    assert long == "y" * 56 + "-123456" and len(long) == 63 and NODE_NAME.match(long)
