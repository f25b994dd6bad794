from __future__ import annotations

import pytest

from api_helpers import assert_error


def worker(region_id, **overrides):
    body = {"name": "gpu-worker-01", "region_id": region_id, "node_ip": "198.18.0.12", "username": "root",
            "port": 22, "is_controller_node": False, "is_worker_node": True, "is_gateway_service": False,
            "is_storage_service": False}
    body.update(overrides)
    return body


def test_add_get_list(client, region):
    added = client.post("/gpuaas/node/add", json=worker(region["id"]))

    assert added.status_code == 201
    node = added.get_json()
    assert node["Id"] == node["id"]
    assert node["status"] == "uninitialized"
    assert node["initialize_state_status_code"] == 0
    assert node["k8s_join_state_status_code"] == 0
    assert node["role"] == {"is_controller_node": False, "is_worker_node": True, "is_gateway_service": False,
                            "is_storage_service": False}
    assert node["gpus"] == []
    assert node["region"]["region_name"] == "eu-west-1"
    assert client.get(f"/api/gpuaas/node/{node['id']}").get_json() == node
    assert client.get(f"/gpuaas/node/list?region_id={region['id']}").get_json() == [node]
    assert client.get("/gpuaas/node/list?region_id=999").get_json() == []


# Display names the API accepts as they are: none of them is ever an inventory host name, a
# command-line word or a file name (the fleet's e2e test runs jobs on nodes named so).
HOSTILE_DISPLAY_NAMES = ["x ansible_connection=local", "-oProxyCommand=touch /tmp/pwned", "$(reboot)",
                         "{{ lookup('pipe', 'id') }}", "Acme Corp.GPU-01.example.com", "10.0.0.7", "ünïcode ✓"]


@pytest.mark.parametrize("name", HOSTILE_DISPLAY_NAMES)
def test_a_display_name_is_stored_as_given_and_the_inventory_name_comes_from_the_id(client, region, name):
    node = client.post("/gpuaas/node/add", json=worker(region["id"], name=name)).get_json()

    assert node["name"] == name
    assert node["inventory_name"] == f"node-{node['id']}"
    assert client.get(f"/gpuaas/node/{node['id']}").get_json()["name"] == name


@pytest.mark.parametrize("name", ["", "   ", "node\nansible_host=127.0.0.1", "tab\there", "bell\x07", "x" * 129])
def test_a_display_name_is_printable_text_of_sane_length(client, region, name):
    assert_error(client.post("/gpuaas/node/add", json=worker(region["id"], name=name)), 422, field="name")
    assert client.get("/gpuaas/node/list").get_json() == []


@pytest.mark.parametrize("field, value", [
    ("username", "-oProxyCommand=sh"),
    ("username", "root ansible_become_password=x"),
    ("username", "$(reboot)"),
    ("node_ip", "198.18.0.12 -oProxyCommand=sh"),
    ("node_ip", "-oProxyCommand=sh"),
    ("node_ip", "example.com"),
    ("node_ip", "198.18.0.12\n"),
    ("port", 0),
    ("port", 65536),
    ("port", "22 -p 23"),
    ("volume_group", "-ff"),
    ("volume_group", "vg0; reboot"),
    ("external_service_ip", "$(reboot)"),
])
def test_hostile_values_are_refused_and_nothing_is_stored(client, region, field, value):
    response = client.post("/gpuaas/node/add", json=worker(region["id"], **{field: value}))

    assert_error(response, 422, field=field)
    assert client.get("/gpuaas/node/list").get_json() == []


def test_role_requirements(client, region):
    # A storage node may come without a volume group: its init serves the host's largest
    # (tests/api/test_client_fleet_view.py).
    bare_storage = client.post("/gpuaas/node/add", json=worker(region["id"], name="stor-0", is_storage_service=True))
    assert bare_storage.status_code == 201 and bare_storage.get_json()["volume_group"] is None
    assert_error(client.post("/gpuaas/node/add", json=worker(region["id"], is_gateway_service=True)), 422,
                 field="external_service_ip")
    assert_error(client.post("/gpuaas/node/add", json=worker(region["id"], is_worker_node=False)), 422)
    storage = client.post("/gpuaas/node/add", json=worker(region["id"], name="stor-1", is_storage_service=True,
                                                          volume_group="gpuaas"))
    assert storage.status_code == 201


def test_unknown_region_is_404(client):
    assert_error(client.post("/gpuaas/node/add", json=worker(4242)), 404)


def test_duplicate_name_in_a_region_is_409(client, region):
    client.post("/gpuaas/node/add", json=worker(region["id"]))
    assert_error(client.post("/gpuaas/node/add", json=worker(region["id"], node_ip="198.18.0.13")), 409, field="name")


def test_edit_validates_and_repins_the_host_key(app, client, region):
    node = client.post("/gpuaas/node/add", json=worker(region["id"])).get_json()
    from gpuaas_api.db import session
    from gpuaas_api.models import Node

    with app.app_context():
        session().get(Node, node["id"]).ssh_host_key = "ssh-ed25519 AAAA"
        session().commit()

    edited = client.put(f"/gpuaas/node/{node['id']}/edit", json={"node_ip": "198.18.0.14", "port": 2222})
    assert edited.status_code == 200
    assert (edited.get_json()["node_ip"], edited.get_json()["port"]) == ("198.18.0.14", 2222)
    with app.app_context():
        assert session().get(Node, node["id"]).ssh_host_key is None
    assert_error(client.put(f"/gpuaas/node/{node['id']}/edit", json={"username": "a b"}), 422, field="username")
    assert_error(client.put("/gpuaas/node/999/edit", json={"port": 22}), 404)


def test_delete_with_delete_or_get_and_refuse_an_initialised_node(app, client, region):
    first = client.post("/gpuaas/node/add", json=worker(region["id"])).get_json()
    second = client.post("/gpuaas/node/add", json=worker(region["id"], name="w2")).get_json()
    from gpuaas_api.db import session
    from gpuaas_api.models import Node
    from gpuaas_api.states import NodeStatus

    with app.app_context():
        session().get(Node, second["id"]).status = NodeStatus.INITIALIZED
        session().commit()

    assert client.delete(f"/gpuaas/node/{first['id']}/delete").get_json()["success"] is True
    body = assert_error(client.get(f"/gpuaas/node/{second['id']}/delete"), 409)
    assert "deinitialize" in body["message"]
    assert client.get(f"/gpuaas/node/{second['id']}").status_code == 200
    assert_error(client.get(f"/gpuaas/node/{first['id']}/delete"), 404)


def test_ssh_keys_returns_the_controller_public_key(client, region):
    node = client.post("/gpuaas/node/add", json=worker(region["id"])).get_json()

    keys = client.get(f"/gpuaas/node/{node['id']}/ssh_keys").get_json()

    assert isinstance(keys, list) and len(keys) == 1
    assert keys[0].startswith("ssh-ed25519 ") and keys[0].endswith(" gpuaas-controller")
    assert client.get(f"/gpuaas/node/{node['id']}/ssh_keys").get_json() == keys  # made once, then kept


def test_deleting_a_node_takes_its_gpus_npus_and_their_samples(app, client, region):
    import datetime as dt

    from sqlalchemy import func, select

    from gpuaas_api.db import session
    from gpuaas_api.metrics.store import record_gpu_samples
    from gpuaas_api.models import Gpu, GpuReading, MetricSample, Npu

    node = client.post("/gpuaas/node/add", json=worker(region["id"])).get_json()
    with app.app_context():
        gpu = Gpu(node_id=node["id"], index=0, uuid="GPU-gone-0", model="NVIDIA L40S", memory_in_mb=46068)
        session().add_all([gpu, Npu(node_id=node["id"], index=0, chip_name="910B3", memory_in_mb=65536, health="OK")])
        session().flush()
        record_gpu_samples([{"gpu_id": gpu.id, "pool_id": None, "sampled_at": dt.datetime.now(dt.timezone.utc),
                             "utilization_gpu_percent": 1, "memory_used_mb": 2, "temperature_c": 3, "power_w": 4}])
        session().commit()

    assert client.delete(f"/gpuaas/node/{node['id']}/delete").get_json()["success"] is True

    with app.app_context():
        db = session()
        assert [db.scalar(select(func.count()).select_from(model)) for model in (Gpu, Npu, MetricSample, GpuReading)] \
            == [0, 0, 0, 0]
