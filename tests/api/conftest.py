"""API tests: the app factory over a real database, migrated with Alembic.

SQLite by default; set GPUAAS_TEST_DATABASE_URL to a PostgreSQL URL to run the
same tests there (CI does both).
"""
from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, make_url, text

from gpuaas_api import create_app
from gpuaas_api.auth import ensure_admin
from gpuaas_api.config import Config
from gpuaas_api.migrate import upgrade

ADMIN = {"username": "admin", "password": "correct horse battery staple"}


@pytest.fixture
def database_url(tmp_path):
    base = os.environ.get("GPUAAS_TEST_DATABASE_URL")
    if not base:
        yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
        return
    # One throw-away PostgreSQL database per test.
    name = f"gpuaas_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def app(tmp_path, database_url):
    config = Config({"GPUAAS_DATA_DIR": str(tmp_path / "data"), "GPUAAS_DATABASE_URL": database_url})
    config.TESTING = True
    upgrade(database_url)
    application = create_app(config)
    with application.app_context():
        ensure_admin(ADMIN["username"], ADMIN["password"])
    yield application
    application.extensions["gpuaas_engine"].dispose()


@pytest.fixture
def anonymous(app):
    return app.test_client()


@pytest.fixture
def token(anonymous):
    return anonymous.post("/api/login", json=ADMIN).get_json()["token"]


@pytest.fixture
def client(app, token):
    """A client that sends the token as a Bearer header."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return test_client


@pytest.fixture
def region(client):
    return client.post("/api/regions", json={"region_name": "eu-west-1", "city": "Dublin"}).get_json()


def assert_error(response, status, field=None):
    """Every error has the one shape: {code, message, errors: [{field, message}]}."""
    body = response.get_json()
    assert response.status_code == status, body
    assert set(body) == {"code", "message", "errors"}
    assert body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        assert field in [error["field"] for error in body["errors"]], body
    return body
