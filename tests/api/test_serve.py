"""`gpuaas-api serve` for real: gunicorn on a loopback port, the first admin from the environment."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from service import call, free_port, start_service

CLI = Path(sys.executable).parent / "gpuaas-api"


def plain(value):
    return value["__ansible_unsafe"] if isinstance(value, dict) and "__ansible_unsafe" in value else value


@pytest.fixture
def server(tmp_path):
    env = dict(os.environ, GPUAAS_BIND=f"127.0.0.1:{free_port()}", GPUAAS_DATA_DIR=str(tmp_path / "var"),
               GPUAAS_ADMIN_USER="root-admin", GPUAAS_ADMIN_PASSWORD="s3cret-enough")
    env.pop("GPUAAS_DATABASE_URL", None)
    service = start_service([str(CLI), "serve", "--workers", "2"], env, tmp_path / "serve.log")
    yield service.base, tmp_path / "var"
    service.stop()


def test_serve_with_embedded_defaults(server):
    base, data_dir = server

    status, login = call(base, "POST", "/api/login", {"username": "root-admin", "password": "s3cret-enough"})
    assert status == 200
    token = login["token"]
    assert call(base, "GET", "/gpuaas/list/regions")[0] == 401
    status, region = call(base, "POST", "/regions", {"region_name": "lab-1"}, token)
    assert status == 201
    status, node = call(base, "POST", "/api/gpuaas/node/add",
                        {"name": "w1", "region_id": region["id"], "node_ip": "198.18.0.12", "username": "root",
                         "is_worker_node": True}, token)
    assert status == 201 and node["Id"] == node["id"]
    assert (data_dir / "gpuaas.sqlite3").exists()
    assert (data_dir / "gpuaas.sqlite3-wal").exists()  # WAL mode
    status, spec = call(base, "GET", "/api/openapi.json")
    assert status == 200 and spec["info"]["title"].startswith("hosted")


def test_inventory_plugin_reads_the_nodes(server, tmp_path):
    base = server[0]
    token = call(base, "POST", "/api/login", {"username": "root-admin", "password": "s3cret-enough"})[1]["token"]
    region = call(base, "POST", "/regions", {"region_name": "lab-2"}, token)[1]
    for name, roles in (("ctrl-1", {"is_controller_node": True}),
                        ("stor-1", {"is_storage_service": True, "is_gateway_service": True,
                                    "volume_group": "gpuaas", "external_service_ip": "198.18.0.40"})):
        body = {"name": name, "region_id": region["id"], "port": 2222, "node_ip": "198.18.0.30", "username": "ops",
                **roles}
        assert call(base, "POST", "/gpuaas/node/add", body, token)[0] == 201
    source = tmp_path / "fleet.gpuaas.yml"
    source.write_text("plugin: hostedai.gpuaas.gpuaas\n"
                      "keyed_groups: [{key: gpuaas_node.status, prefix: status}]\n"
                      "compose: {gpu_total: gpuaas_node.gpus | length}\n"
                      "groups: {has_storage: \"'storage' in group_names\"}\n")
    # The plugin only reads: a viewer's token is enough (docs of its `token` option).
    assert call(base, "POST", "/api/users", {"username": "inventory", "password": "pw of inventory", "role": "viewer"},
                token)[0] == 201
    viewer_token = call(base, "POST", "/api/tokens", {"username": "inventory"}, token)[1]["token"]
    env = dict(os.environ, GPUAAS_URL=base, GPUAAS_TOKEN=viewer_token,
               ANSIBLE_COLLECTIONS_PATH=str(Path(__file__).resolve().parents[2] / ".build" / "collections"),
               ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_INVENTORY_ENABLED="hostedai.gpuaas.gpuaas")
    listed = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(source), "--list"],
                            capture_output=True, text=True, env=env, check=True)
    inventory = json.loads(listed.stdout)

    # Hosts are named by the node's id (node-<id>); the display name is a variable.
    assert inventory["controller"]["hosts"] == ["node-1"]
    assert sorted(inventory["storage"]["hosts"]) == ["node-2"]
    assert sorted(inventory["gateway"]["hosts"]) == ["node-2"]
    assert sorted(inventory["region_lab_2"]["hosts"]) == ["node-1", "node-2"]
    assert sorted(inventory["status_uninitialized"]["hosts"]) == ["node-1", "node-2"]
    hostvars = inventory["_meta"]["hostvars"]["node-1"]
    assert plain(hostvars["gpuaas_display_name"]) == "ctrl-1"
    # Values from the API are marked unsafe (never templated); ansible-inventory shows the marking.
    assert [plain(hostvars[key]) for key in ("ansible_host", "ansible_port", "ansible_user")] == [
        "198.18.0.30", 2222, "ops"]
    assert hostvars["gpu_total"] == 0 and hostvars["gpuaas_node"]["role"]["is_controller_node"] is True

    refused = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(source), "--list"],
                             capture_output=True, text=True, env={**env, "GPUAAS_TOKEN": "forged"}, check=False)
    assert "did not answer" in refused.stderr


def test_cli_db_upgrade_and_create_token(tmp_path):
    env = dict(os.environ, GPUAAS_DATA_DIR=str(tmp_path / "var"))
    env.pop("GPUAAS_DATABASE_URL", None)
    upgraded = subprocess.run([str(CLI), "db", "upgrade"], env=env, capture_output=True, text=True, check=True)

    def create_token(*arguments):
        return subprocess.run([str(CLI), "create-token", "--user", "ops", *arguments], env=env, capture_output=True, text=True,
                              check=False)

    roleless = create_token("--password", "pw-for-ops")  # a new user needs a role
    first = create_token("--password", "pw-for-ops", "--role", "operator", "--hours", "1").stdout.strip()
    second = create_token("--role", "viewer").stdout.strip()  # narrower than ops's own role: this token only reads
    wider = create_token("--role", "admin")
    tokens = subprocess.run([str(CLI), "tokens", "list"], env=env, capture_output=True, text=True, check=True).stdout

    assert roleless.returncode == 2 and "give --role" in roleless.stderr
    assert wider.returncode == 1 and "can't do more than its user" in wider.stderr
    listed = [line.split("\t") for line in tokens.splitlines()]
    assert [(row[1], row[2]) for row in listed] == [("ops", "operator"), ("ops", "viewer")]
    # --hours 1 expires within the hour; without a lifetime, GPUAAS_API_TOKEN_TTL_DAYS (365) from now.
    expiries = [dt.datetime.fromisoformat(row[3]).replace(tzinfo=dt.timezone.utc) - dt.datetime.now(dt.timezone.utc)
                for row in listed]
    assert dt.timedelta(minutes=58) < expiries[0] <= dt.timedelta(hours=1)
    assert dt.timedelta(days=364) < expiries[1] <= dt.timedelta(days=365)
    assert "database at head" in upgraded.stdout
    assert len(first) >= 40 and first != second
    service = start_service([str(CLI), "serve", "--workers", "1"], {**env, "GPUAAS_BIND": f"127.0.0.1:{free_port()}"},
                            tmp_path / "serve.log")
    base = service.base
    try:
        assert call(base, "GET", "/regions", token=first) == (200, [])
        assert call(base, "GET", "/regions", token=second)[0] == 200
        assert call(base, "POST", "/api/regions", {"region_name": "by-viewer"}, token=second)[0] == 403
        assert call(base, "POST", "/api/regions", {"region_name": "by-operator"}, token=first)[0] == 201
        assert call(base, "GET", "/regions", token=first[:-1] + "x")[0] == 401
        assert call(base, "POST", "/api/login", {"username": "ops", "password": "pw-for-ops"})[0] == 200
    finally:
        service.stop()
