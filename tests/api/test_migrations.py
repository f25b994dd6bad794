"""The Alembic migrations produce exactly the schema the models describe."""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session

from alembic import command

import gpuaas_api
from gpuaas_api.migrate import MIGRATIONS, alembic_config, migration_lock, upgrade
from gpuaas_api.models import Base, Job, JobEvent, Node, Region


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


# Each process migrates as `serve` does at start-up, logging what Alembic runs ("Running upgrade A -> B").
MIGRATE = ("import logging, sys, time\n"
           "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
           "from gpuaas_api.migrate import upgrade\n"
           "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
           "upgrade(sys.argv[1])\n")
REVISIONS = len(list((MIGRATIONS / "versions").glob("0*.py")))


def migrating(database_url: str, at: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(gpuaas_api.__file__).parents[1]), *sys.path])}
    return subprocess.Popen([sys.executable, "-c", MIGRATE, database_url, str(at)], env=env, stderr=subprocess.PIPE,
                            text=True)


def at_head(database_url: str) -> bool:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    return current == ScriptDirectory.from_config(alembic_config(database_url)).get_current_head() and differences == []


def test_two_hosts_starting_together_migrate_once(database_url):
    start = time.time() + 1.5  # both have imported everything by then, and start at the same moment
    hosts = [migrating(database_url, start) for _host in range(2)]
    logs = [host.communicate(timeout=120)[1] for host in hosts]

    assert [host.returncode for host in hosts] == [0, 0], logs
    ran = re.findall(r"Running upgrade (\w*) -> (\w+)", "".join(logs))
    assert len(ran) == REVISIONS and len(set(ran)) == REVISIONS, ran  # each migration once, by one host
    assert at_head(database_url)


def test_an_upgrade_waits_while_another_holds_the_lock(database_url):
    with migration_lock(database_url):
        waiting = migrating(database_url, 0)
        waited = ""
        while "waiting for it" not in waited and waiting.poll() is None:
            waited += waiting.stderr.readline()
        engine = create_engine(database_url)
        with engine.connect() as connection:
            tables = set(engine.dialect.get_table_names(connection))
        engine.dispose()
    log = waited + waiting.communicate(timeout=120)[1]

    assert "waiting for it" in waited, log
    assert tables == set()  # nothing migrated while the lock was held
    assert waiting.returncode == 0, log
    assert at_head(database_url)


def test_events_of_a_deleted_or_earlier_node_are_filed_under_none(database_url):
    # Before 0008 a node could be given a deleted node's id (SQLite reuses the highest) and show its
    # events: the upgrade files under no node those older than the node, and those of a node that is gone.
    upgrade(database_url, "0007")
    engine = create_engine(database_url)
    added = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)
    with Session(engine) as db:
        db.add(Region(id=1, region_name="r1"))
        db.add(Node(id=1, name="reused", region_id=1, node_ip="198.18.0.1", username="root", is_worker_node=True,
                    created_at=added))
        db.flush()  # no relationship tells the session the order
        db.add(Job(id=1, operation="test_conn", node_id=1))
        db.flush()
        db.add_all([JobEvent(job_id=1, counter=counter, event="runner_on_ok", node_id=node_id, created_at=at)
                    for counter, (node_id, at) in enumerate([(1, added - dt.timedelta(days=1)), (1, added + dt.timedelta(hours=1)),
                                                             (99, added + dt.timedelta(hours=1)), (None, added)])])
        db.commit()
    upgrade(database_url)
    with engine.connect() as connection:
        filed = connection.execute(text("SELECT counter, node_id FROM job_events ORDER BY counter")).all()
    engine.dispose()

    assert [tuple(row) for row in filed] == [(0, None), (1, 1), (2, None), (3, None)]
