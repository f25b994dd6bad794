"""The real `gpuaas-agent run` (fake NVML, the kubelet double of test_agent.py) with a PodResources
socket that hangs: the tenants are unknown with the reason in the status, and the device plugin
keeps serving."""
from __future__ import annotations

import socket
import time

# The fixtures (mps_root, node) are test_agent's: the same node, fake NVML and kubelet double.
from test_agent import POOL1, A, mps_root, node  # noqa: F401  pylint: disable=unused-import
from waiting import wait_for


def test_a_hanging_pod_resources_socket_leaves_tenants_unknown_and_the_plugin_serving(node, tmp_path):  # noqa: F811
    node, kubelet = node
    hanging = socket.socket(socket.AF_UNIX)
    hanging.bind(str(tmp_path / "pod-resources.sock"))
    hanging.listen(64)  # connections complete in the kernel; nothing ever answers
    try:
        agent = node.agent(pod_resources_socket=str(tmp_path / "pod-resources.sock"), pod_resources_timeout=0.3,
                           kubeconfig=str(tmp_path / "no-kubeconfig"))
        plugin = kubelet.plugin(POOL1, 8)

        def unknown():
            status = agent.status()
            return status if "did not answer within 0.3 s" in status["tenants"]["reason"] else None
        status = wait_for(unknown, what="tenants unknown because the socket hangs")
        assert status["tenants"]["state"] == "unknown"
        assert {slot["state"] for slot in status["tenants"]["slots"].values()} == {"unknown"}
        assert len(status["tenants"]["slots"]) == 8 + 2 + 1  # pool 1, pool 2, the whole GPU
        # The plugin answers at once, and the loop goes on (polls keep counting).
        started = time.monotonic()
        given = plugin.allocate([f"{A}::1"])
        assert given["envs"]["GPUAAS_POOL_ID"] == "1" and time.monotonic() - started < 0.5
        polls = status["polls"]
        wait_for(lambda: agent.status()["polls"] >= polls + 3, what="three more polls")
        hanging.close()
        (tmp_path / "pod-resources.sock").unlink()
        wait_for(lambda: "does not exist" in agent.status()["tenants"]["reason"], what="the reason to follow the socket")
    finally:
        hanging.close()
