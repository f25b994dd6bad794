"""PostgreSQL under `serve`: cached reads learn of changes by LISTEN/NOTIFY (version_listener.py).

Another process is played by a separate connection writing SQL; this process's own writes go
through the API. Skipped on SQLite, where the version is always read from the table.
"""
from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import create_engine, text

from gpuaas_api.version_listener import APPLICATION_NAME, CHANNEL, start_listener


# LISTEN/NOTIFY is PostgreSQL's (on SQLite the version is always read from the table):
# `make test-api` runs the API tests a second time on PostgreSQL, and these run there.
pytestmark = pytest.mark.skipif(not os.environ.get("GPUAAS_TEST_DATABASE_URL"),
                                reason="PostgreSQL only; make test-api runs it on PostgreSQL")


@pytest.fixture
def listener(app):
    started = start_listener(app)
    assert started.connected.wait(10)
    yield started
    started.stop()
    app.extensions.pop("gpuaas_version_listener", None)


@pytest.fixture
def other_process(migrated_database_url):  # the app's database
    engine = create_engine(migrated_database_url)
    yield engine
    engine.dispose()


def node_name(client, node_id):
    return client.get(f"/gpuaas/node/{node_id}").get_json()["name"]


def rename_elsewhere(engine, node_id, name, notify=True):
    """What another API process's commit does: the change, the version bump and (normally) NOTIFY."""
    with engine.begin() as connection:
        connection.execute(text("UPDATE nodes SET name = :name WHERE id = :id"), {"name": name, "id": node_id})
        connection.execute(text("UPDATE data_version SET version = version + 1 WHERE id = 1"))
        if notify:
            connection.execute(text(f"NOTIFY {CHANNEL}"))


def eventually(probe, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def node(client, region):
    return client.post("/gpuaas/node/add", json={"name": "w1", "region_id": region["id"], "node_ip": "198.18.0.12",
                                                 "username": "root", "is_worker_node": True}).get_json()


def test_another_process_change_is_seen_by_its_notification_not_a_round_trip(client, node, listener, other_process):
    assert node_name(client, node["id"]) == "w1"  # now cached

    rename_elsewhere(other_process, node["id"], "w2", notify=False)
    assert node_name(client, node["id"]) == "w1"  # no notification: the cache is not asked to move

    with other_process.begin() as connection:
        connection.execute(text(f"NOTIFY {CHANNEL}"))
    assert eventually(lambda: node_name(client, node["id"]) == "w2")


def test_this_process_reads_its_own_writes_at_once(client, node, listener):
    assert node_name(client, node["id"]) == "w1"

    edited = client.put(f"/gpuaas/node/{node['id']}/edit", json={"name": "w3"})

    assert edited.status_code == 200, edited.get_json()
    assert node_name(client, node["id"]) == "w3"  # no wait: the commit moved this process's version


def test_a_lost_listener_falls_back_to_the_table_then_reconnects(client, node, listener, other_process):
    assert node_name(client, node["id"]) == "w1"
    generation = listener.generation
    with other_process.begin() as connection:
        killed = connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                         "WHERE application_name = :name"), {"name": APPLICATION_NAME}).all()
    assert killed

    assert eventually(lambda: not listener.connected.is_set() or listener.generation > generation)
    # Unnotified changes are seen while reads fall back, and the reconnection moves the version
    # (notifications may have been missed meanwhile): either way the new name shows.
    rename_elsewhere(other_process, node["id"], "w4", notify=False)
    assert eventually(lambda: node_name(client, node["id"]) == "w4")
    assert listener.connected.wait(10)
