"""Alembic, driven from code: `gpuaas-api db upgrade` and the start-up of `serve`.

Several hosts may start together on one database: the upgrade runs under a lock (migration_lock),
so one migrates and the others wait, then find the schema at head and do nothing.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The key of the PostgreSQL advisory lock the upgrade holds: "gpuaasdb" as a (positive) bigint.
MIGRATION_LOCK_KEY = int.from_bytes(b"gpuaasdb", "big")
LOG = logging.getLogger(__name__)


def alembic_config(database_url: str) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    with migration_lock(database_url) as connection:
        config = alembic_config(database_url)
        if connection is not None:  # the migrations run on the session that holds the lock
            config.attributes["connection"] = connection
        command.upgrade(config, revision)


@contextlib.contextmanager
def migration_lock(database_url: str) -> Iterator[Connection | None]:
    """Held by one process at a time per database, until the block ends; the others wait for it.

    PostgreSQL: a session-level advisory lock, on the connection given to the block (the migrations
    must run on it). SQLite: an exclusive flock of a file beside the database (SQLite's own lock
    cannot be held across Alembic's statements, which are not one transaction there). An in-memory
    database is this process's alone: nothing to lock.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        with _advisory_lock(database_url) as connection:
            yield connection
    elif url.database and url.database != ":memory:":
        with _file_lock(Path(url.database).with_name(Path(url.database).name + ".migrate-lock")):
            yield None
    else:
        yield None


@contextlib.contextmanager
def _advisory_lock(database_url: str) -> Iterator[Connection]:
    engine = create_engine(database_url, poolclass=NullPool)  # closing the connection ends the session
    key = {"key": MIGRATION_LOCK_KEY}
    try:
        with engine.connect() as connection:
            if not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
                LOG.info("another process is migrating the database: waiting for it")
                connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
            connection.commit()  # the lock is the session's: it outlives this transaction, and Alembic begins its own
            try:
                yield connection
            finally:
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                connection.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a", encoding="utf-8") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            LOG.info("another process is migrating the database: waiting for it (%s)", path)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
