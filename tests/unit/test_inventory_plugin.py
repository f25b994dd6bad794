"""The hostedai.gpuaas.gpuaas inventory plugin against a stand-in of GET /api/gpuaas/node/list.

The stand-in is a loopback HTTP server that answers what the REST service answers for three nodes
whose display names are hostile.  The real ansible-inventory and ansible-playbook read it: each
host must be node-<id>, the display name only the variable gpuaas_display_name, never templated.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from module_runner import COLLECTIONS

BIN = Path(sys.executable).parent
TOKEN = "test-token"


def node(node_id, name, **fields):
    return {"id": node_id, "Id": node_id, "name": name, "node_ip": "127.0.0.1", "port": 22, "username": "ops",
            "status": "uninitialized", "kubernetes_name": None, "gpuaas_id": None, "gpus": [],
            "region": {"id": 1, "region_name": "lab 1"},
            "role": {"is_controller_node": False, "is_worker_node": True, "is_gateway_service": False,
                     "is_storage_service": False},
            **fields}


HOSTILE = {
    17: "Acme Corp.gpu-01; rm -rf /",
    18: "{{ lookup('pipe', 'touch TEMPLATED') }}",
    19: "gpu-03\nnode-17 ansible_host=203.0.113.66",
}
NODES = [node(17, HOSTILE[17], kubernetes_name="gpu-01"),
         node(18, HOSTILE[18], role={"is_controller_node": True, "is_worker_node": False,
                                     "is_gateway_service": False, "is_storage_service": False}),
         node(19, HOSTILE[19], gpuaas_id=3)]


def plain(value):
    return value["__ansible_unsafe"] if isinstance(value, dict) and "__ansible_unsafe" in value else value


@pytest.fixture
def api():
    """The node list, served on loopback to a caller with the token."""
    answer = {"nodes": NODES}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps(answer["nodes"] if self.path == "/api/gpuaas/node/list" else []).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answer
    server.shutdown()
    server.server_close()


@pytest.fixture
def ansible(api, tmp_path):
    """Run an Ansible command line against the plugin's inventory (in tmp_path, which is its cwd)."""
    url = api[0]
    source = tmp_path / "fleet.gpuaas.yml"
    source.write_text("plugin: hostedai.gpuaas.gpuaas\n"
                      "keyed_groups: [{key: gpuaas_node.status, prefix: status}]\n"
                      "compose: {ansible_connection: \"'local'\", ansible_python_interpreter: \"'%s'\"}\n"
                      % sys.executable)
    home = tmp_path / "ansible-home"
    env = {**os.environ, "GPUAAS_URL": url, "GPUAAS_TOKEN": TOKEN, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
           "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_INVENTORY_ENABLED": "hostedai.gpuaas.gpuaas", "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"}

    def run(command, *args, check=True):
        return subprocess.run([str(BIN / command), "-i", str(source), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120, check=check)
    return run


def test_hosts_are_named_by_node_id_and_carry_the_display_name(ansible):
    inventory = json.loads(ansible("ansible-inventory", "--list").stdout)
    hostvars = inventory["_meta"]["hostvars"]

    assert sorted(hostvars) == ["node-17", "node-18", "node-19"]
    assert inventory["worker"]["hosts"] == ["node-17", "node-19"]
    assert inventory["controller"]["hosts"] == ["node-18"]
    assert inventory["gpuaas_3"]["hosts"] == ["node-19"]
    assert sorted(inventory["region_lab_1"]["hosts"]) == ["node-17", "node-18", "node-19"]
    assert sorted(inventory["status_uninitialized"]["hosts"]) == ["node-17", "node-18", "node-19"]
    for node_id, name in HOSTILE.items():
        variables = hostvars[f"node-{node_id}"]
        assert plain(variables["gpuaas_display_name"]) == name
        assert plain(variables["gpuaas_node"]["name"]) == name and variables["gpuaas_node"]["id"] == node_id
        assert plain(variables["ansible_host"]) == "127.0.0.1"  # the newline's "ansible_host=" went nowhere
    assert plain(hostvars["node-17"]["gpuaas_node_name"]) == "gpu-01"
    assert "gpuaas_node_name" not in hostvars["node-18"]  # not derived yet: the roles fall back to the host name
    every_name = set(hostvars) | {host for group in inventory.values() for host in group.get("hosts", [])}
    assert every_name == {"node-17", "node-18", "node-19"}


def test_a_display_name_is_never_templated_nor_a_host_pattern(ansible, tmp_path):
    (tmp_path / "play.yml").write_text(json.dumps([{
        "name": "Say each node's names", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Say", "ansible.builtin.debug": {"msg": "{{ inventory_hostname }}={{ gpuaas_display_name }}"}}],
    }]))
    done = ansible("ansible-playbook", "play.yml")

    assert not (tmp_path / "TEMPLATED").exists()
    said = [line.strip() for line in done.stdout.splitlines() if '"msg":' in line]
    assert len(said) == 3
    assert json.dumps("node-18=" + HOSTILE[18]) in done.stdout  # the text itself, as data
    assert json.dumps("node-19=" + HOSTILE[19]) in done.stdout
    # A display name selects no host; the alias does.
    assert ansible("ansible", "Acme*", "--list-hosts", check=False).stdout.split() == ["hosts", "(0):"]
    assert ansible("ansible", "node-17", "--list-hosts").stdout.split() == ["hosts", "(1):", "node-17"]


@pytest.mark.parametrize("bad_id", [None, "17; rm -rf /", 0, True, 1.5])
def test_a_node_without_a_usable_id_fails_the_inventory_in_one_sentence(ansible, api, bad_id):
    api[1]["nodes"] = [node(bad_id, "gpu-01")]
    listed = ansible("ansible-inventory", "--list", check=False)

    assert listed.returncode != 0
    assert "listed a node without a usable id" in listed.stderr
