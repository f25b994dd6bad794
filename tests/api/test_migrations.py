"""The Alembic migrations produce exactly the schema the models describe."""
from __future__ import annotations

import os
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, make_url, text

from alembic import command

from gpuaas_api.migrate import alembic_config, upgrade
from gpuaas_api.models import Base


def test_migrated_schema_matches_the_models(database_url):
    upgrade(database_url)
    engine = create_engine(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()

    assert differences == []


def test_downgrade_to_base_and_up_again(database_url):
    upgrade(database_url)
    command.downgrade(alembic_config(database_url), "base")
    engine = create_engine(database_url)
    with engine.connect() as connection:
        left = set(engine.dialect.get_table_names(connection)) - {"alembic_version"}
    engine.dispose()
    upgrade(database_url)

    assert left == set()


# `make test-api` runs the API tests a second time on PostgreSQL, and this one runs there.
@pytest.mark.skipif(not os.environ.get("GPUAAS_TEST_DATABASE_URL"),
                    reason="PostgreSQL only: SQLite has no server sessions to leave open")
def test_an_upgrade_leaves_no_session_open(database_url):
    # `serve` and `db upgrade` migrate first; an idle session left behind holds a PostgreSQL
    # connection slot, and keeps the database from being copied (CREATE DATABASE ... TEMPLATE).
    url = make_url(database_url)
    upgrade(database_url)
    engine = create_engine(url.set(database="postgres"))
    deadline = time.monotonic() + 3  # a closed session's server process may take a moment to exit
    with engine.connect() as connection:
        while (sessions := connection.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
                                              {"name": url.database}).scalar()) and time.monotonic() < deadline:
            time.sleep(0.1)
    engine.dispose()

    assert sessions == 0


def test_existing_users_become_admins_and_their_tokens_do_not_change(database_url):
    # Before roles, every user was made with role "admin"; one row that says otherwise shows the
    # upgrade sets them all, rather than leaving what it found.
    upgrade(database_url, "0006")
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO users (id, username, email, password_hash, role, is_super_admin) VALUES "
                                "(1, 'ops', '', 'h', 'admin', TRUE), (2, 'odd', '', 'h', 'user', FALSE)"))
        connection.execute(text("INSERT INTO api_tokens (user_id, token_hash, description, expires_at) VALUES "
                                "(1, 'a1', 'create-token', NULL), (2, 'b2', 'login', '2030-01-01 00:00:00')"))
        before = connection.execute(text("SELECT user_id, token_hash, description, expires_at FROM api_tokens "
                                         "ORDER BY id")).all()
    upgrade(database_url)
    with engine.connect() as connection:
        roles = connection.execute(text("SELECT username, role, is_super_admin FROM users ORDER BY id")).all()
        after = connection.execute(text("SELECT user_id, token_hash, description, expires_at FROM api_tokens "
                                        "ORDER BY id")).all()
        token_roles = connection.execute(text("SELECT role FROM api_tokens")).scalars().all()
    engine.dispose()

    assert [tuple(row) for row in roles] == [("ops", "admin", True), ("odd", "admin", True)]
    assert after == before
    assert token_roles == [None, None]
