"""PostgreSQL: learn of data changes by LISTEN/NOTIFY, so that a cached read makes no round trip.

Cached GETs (reply_cache.cached_reply) are valid while the data version has not moved. On SQLite
reading it is an in-process file read; on PostgreSQL it is a round trip per request (with the
pool's checkout and reset, most of a cached read's cost). Under `serve`, each PostgreSQL
process runs one VersionListener instead:

- every transaction that bumps the version also sends NOTIFY (db._watch_data_version); the
  listener counts notifications into a per-process generation;
- a commit in this process moves the generation itself, before its reply is sent, so a client
  reads its own writes from the process that made them;
- another process's change is seen once its notification is read: normally within a
  millisecond of its commit. That is the staleness this trades for the round trip, and why it
  is PostgreSQL under `serve` only (tests and other commands read the version from the table);
- while the listener is not connected (start-up, a lost connection, a database restart),
  readers fall back to reading the table, and each (re)connection moves the generation,
  since notifications may have been missed meanwhile.
"""
from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)
CHANNEL = "gpuaas_data_version"
KEEPALIVE_SECONDS = 1.0  # how often an idle listener checks that its connection still works
RECONNECT_SECONDS = 1.0
APPLICATION_NAME = "gpuaas-version-listener"  # how it shows in pg_stat_activity


class VersionListener(threading.Thread):
    def __init__(self, engine: Engine):
        super().__init__(name="gpuaas-version-listener", daemon=True)
        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.generation = 0
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def version(self) -> tuple | None:
        """This process's view of the data version, or None when it must be read from the table."""
        if not self.connected.is_set():
            return None
        return ("notified", id(self), self.generation)

    def moved(self) -> None:
        with self._lock:
            self.generation += 1

    def run(self) -> None:
        import psycopg

        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, application_name=APPLICATION_NAME) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self.moved()  # whatever changed while nobody listened
                    self.connected.set()
                    while not self.stopping.is_set():
                        for _notification in connection.notifies(timeout=KEEPALIVE_SECONDS):
                            self.moved()
                        connection.execute("SELECT 1")  # a dead connection raises here
            except Exception as error:  # connection lost or refused: fall back, then try again
                if not self.stopping.is_set():
                    log.warning("data version listener: %s; reading the version from the table meanwhile", error)
            finally:
                self.connected.clear()
            self.stopping.wait(RECONNECT_SECONDS)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=KEEPALIVE_SECONDS * 3)


def start_listener(app) -> VersionListener | None:
    """Start the listener for ``app`` when its database is PostgreSQL (under `serve`)."""
    engine = app.extensions["gpuaas_engine"]
    if engine.dialect.name != "postgresql":
        return None
    listener = VersionListener(engine)
    app.extensions["gpuaas_version_listener"] = listener
    listener.start()
    return listener
