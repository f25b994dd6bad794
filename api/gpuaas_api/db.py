"""One SQLAlchemy engine and scoped session per app; SQLite in WAL mode by default."""
from __future__ import annotations

from flask import Flask, current_app
from sqlalchemy import create_engine, event, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from .domain_errors import Conflict
from .models import Cluster, DataVersion, Gpu, Node, Region
from .version_listener import CHANNEL


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def _watch_data_version(factory: sessionmaker, app: Flask) -> None:
    """Bump data_version in the transaction of any change to nodes, GPUs, regions or clusters.

    On PostgreSQL the bump also sends NOTIFY (delivered at commit) for the other processes'
    version listeners, and a commit moves this process's own listener at once
    (version_listener.py).
    """
    watched = (Node, Gpu, Region, Cluster)
    table = DataVersion.__table__
    bump = update(table).where(table.c.id == 1).values(version=table.c.version + 1)
    notify = text(f"NOTIFY {CHANNEL}")

    def _bump(db: Session) -> None:
        connection = db.connection()
        connection.execute(bump)
        if connection.dialect.name == "postgresql":
            connection.execute(notify)
        db.info["data_version_bumped"] = True

    @event.listens_for(factory, "after_flush")
    def _after_flush(db, _context):
        if any(isinstance(obj, watched) for obj in (*db.new, *db.dirty, *db.deleted)):
            _bump(db)

    @event.listens_for(factory, "do_orm_execute")
    def _bulk_statements(state):
        if (state.is_update or state.is_delete) and state.bind_mapper is not None \
                and state.bind_mapper.class_ in watched:
            _bump(state.session)

    @event.listens_for(factory, "after_commit")
    def _after_commit(db):
        listener = app.extensions.get("gpuaas_version_listener")
        if db.info.pop("data_version_bumped", False) and listener is not None:
            listener.moved()

    @event.listens_for(factory, "after_rollback")
    def _after_rollback(db):
        db.info.pop("data_version_bumped", None)


def init_app(app: Flask, url: str) -> None:
    engine = make_engine(url)
    app.extensions["gpuaas_engine"] = engine
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    _watch_data_version(factory, app)
    app.extensions["gpuaas_session"] = scoped_session(factory)

    @app.teardown_appcontext
    def _remove_session(_exc):
        app.extensions["gpuaas_session"].remove()


def session() -> Session:
    return current_app.extensions["gpuaas_session"]()


def commit_unique(field: str, message: str) -> None:
    """Commit; a unique-constraint violation becomes a Conflict about ``field`` (the race-free duplicate check)."""
    try:
        session().commit()
    except IntegrityError:
        session().rollback()
        raise Conflict(message, field) from None


def release() -> None:
    """End this thread's session (worker threads live outside requests)."""
    current_app.extensions["gpuaas_session"].remove()


def first_line(error: Exception) -> str:
    """A database error in one line, for a log: drivers' messages run to several (the SQL, a link)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
