"""API tests: the app factory over a real database, migrated with Alembic.

SQLite by default; set GPUAAS_TEST_DATABASE_URL to a PostgreSQL URL to run the
same tests there (CI does both).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sqlite3
import uuid

import pytest
from api_helpers import ADMIN
from sqlalchemy import create_engine, make_url, text

from gpuaas_api import create_app, credentials
from gpuaas_api.credentials import ensure_admin
from gpuaas_api.config import Config
from gpuaas_api.db import session
from gpuaas_api.migrate import upgrade
from gpuaas_api.models import Cluster, Gpu, Node
from gpuaas_api.states import ClusterStatus, NodeStatus


def postgres_admin(statement: str) -> None:
    """A statement on the test PostgreSQL server, outside any database of the tests'."""
    admin = create_engine(os.environ["GPUAAS_TEST_DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(statement))
    admin.dispose()


def create_postgres_database(template: str | None = None) -> str:
    """A new database on the test PostgreSQL server (a copy of `template` if given): its URL."""
    name = f"gpuaas_test_{uuid.uuid4().hex[:12]}"
    postgres_admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return make_url(os.environ["GPUAAS_TEST_DATABASE_URL"]).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str) -> None:
    postgres_admin(f'DROP DATABASE "{make_url(url).database}" WITH (FORCE)')


@pytest.fixture
def database_url(tmp_path):
    """An empty database of its own for the test."""
    if not os.environ.get("GPUAAS_TEST_DATABASE_URL"):
        yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
        return
    url = create_postgres_database()
    yield url
    drop_postgres_database(url)


@dataclasses.dataclass
class DatabaseTemplate:
    url: str
    token: str  # a login token of ADMIN's, as POST /api/login issued it


@pytest.fixture(scope="session")
def database_template(tmp_path_factory):
    """A database migrated with Alembic, holding ADMIN and one login token of theirs, made once:
    each app test gets a copy.  Made for each test, the migrations, the admin's scrypt hash and
    the login's check of it took about 0.55 s of CPU (measured), 120 times per database."""
    directory = tmp_path_factory.mktemp("template")
    if not os.environ.get("GPUAAS_TEST_DATABASE_URL"):
        yield make_template(f"sqlite:///{directory / 'template.sqlite3'}", directory)
        return
    url = create_postgres_database()
    yield make_template(url, directory)
    drop_postgres_database(url)


def make_template(url: str, directory) -> DatabaseTemplate:
    upgrade(url)
    config = Config({"GPUAAS_DATA_DIR": str(directory / "data"), "GPUAAS_DATABASE_URL": url})
    config.TESTING = True
    application = create_app(config)
    with application.app_context():
        ensure_admin(ADMIN["username"], ADMIN["password"])
    token = application.test_client().post("/api/login", json=ADMIN).get_json()["token"]
    # PostgreSQL copies a template only while nobody is connected to it; a SQLite copy is of the
    # file alone, so what the WAL holds is written back into it first.
    application.extensions["gpuaas_engine"].dispose()
    if make_url(url).get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(make_url(url).database)) as connection:
            busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        assert busy == 0, "a connection to the template is still open"
    return DatabaseTemplate(url, token)


@pytest.fixture
def migrated_database_url(tmp_path, database_template):
    """The test's own copy of the template database."""
    if not os.environ.get("GPUAAS_TEST_DATABASE_URL"):
        copy = tmp_path / "test.sqlite3"
        shutil.copyfile(make_url(database_template.url).database, copy)
        yield f"sqlite:///{copy}"
        return
    url = create_postgres_database(template=make_url(database_template.url).database)
    yield url
    drop_postgres_database(url)


@pytest.fixture
def app(tmp_path, migrated_database_url):
    # Node operations are claimable as soon as they are submitted (no batching pause), so that a
    # test can claim what it just submitted; the batching tests date their jobs into a burst.
    config = Config({"GPUAAS_DATA_DIR": str(tmp_path / "data"), "GPUAAS_DATABASE_URL": migrated_database_url,
                     "GPUAAS_NODE_BATCH_QUIET_SECONDS": "0"})
    config.TESTING = True
    # Every test's database holds the same token: nothing one test's lookups cached may answer for
    # another's database.
    credentials.forget_cached_tokens()
    application = create_app(config)
    yield application
    application.extensions["gpuaas_engine"].dispose()


@pytest.fixture
def anonymous(app):
    return app.test_client()


@pytest.fixture
def token(app, database_template):
    """ADMIN's login token (the template's: each login is a scrypt check; test_auth logs in for real)."""
    return database_template.token


@pytest.fixture
def client(app, token):
    """A client that sends the token as a Bearer header."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return test_client


@pytest.fixture
def region(client):
    return client.post("/api/regions", json={"region_name": "eu-west-1", "city": "Dublin"}).get_json()


@pytest.fixture
def fleet_db(app, client, region):
    """An ACTIVE cluster with two workers (2 + 2 GPUs), and a second cluster's node with one GPU."""
    other_region = client.post("/api/regions", json={"region_name": "us-1"}).get_json()
    with app.app_context():
        db = session()
        cluster = Cluster(region_id=region["id"], status=ClusterStatus.ACTIVE)
        other = Cluster(region_id=other_region["id"], status=ClusterStatus.ACTIVE)
        db.add_all([cluster, other])
        db.flush()
        uuids = {}
        for name, cluster_id, count in (("w1", cluster.id, 2), ("w2", cluster.id, 2), ("x1", other.id, 1)):
            node = Node(name=name, region_id=region["id"] if cluster_id == cluster.id else other_region["id"],
                        node_ip="198.18.0.20", username="root", is_worker_node=True, cluster_id=cluster_id,
                        joined=True, status=NodeStatus.HEALTHY)
            db.add(node)
            db.flush()
            for index in range(count):
                uuid = f"GPU-{name}-{index}"
                db.add(Gpu(node_id=node.id, index=index, uuid=uuid, model="NVIDIA H100 80GB HBM3", memory_in_mb=81559))
                uuids.setdefault(name, []).append(uuid)
        db.commit()
        return {"gpuaas_id": cluster.id, "other_id": other.id, "uuids": uuids}


@pytest.fixture
def storage_node(app, region) -> int:
    """A HEALTHY storage-service node "s1" (volume group gpuaas) in ``region``; its id."""
    with app.app_context():
        node = Node(name="s1", region_id=region["id"], node_ip="198.18.0.30", username="root",
                    is_storage_service=True, volume_group="gpuaas", status=NodeStatus.HEALTHY)
        session().add(node)
        session().commit()
        return node.id
