"""A playbook run's events, stored as they arrive (off the runner's thread)."""
from __future__ import annotations

import queue
import threading

from flask import Flask
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from ..db import release, session
from ..models import JobEvent, Node

EVENT_FLUSH_SECONDS = 0.2


_WAKE = (None, None)  # put on an EventWriter's queue to end its wait at once


class EventWriter:
    """Stores a run's events as they arrive, off the runner's thread (a slow handler stalls the runner).

    One writer per playbook run, however many jobs its batch holds: one thread, one
    connection, at most one transaction per EVENT_FLUSH_SECONDS. (A writer per job meant ten
    threads each committing every event it got, fighting over SQLite's single write lock:
    the largest share of the service's CPU in bench/api_overhead.py.)
    """

    def __init__(self, app: Flask, node_of_job: dict[int, int | None], node_of_host: dict[str, int] | None = None):
        # A multi-node job has no node: given ``node_of_host``, each of its events is filed under
        # its host's node, so that it shows in that node's logs (pool_apply; see execute).
        self.app, self.node_of_job = app, node_of_job
        self.node_of_host = node_of_host or {}
        self.counts = dict.fromkeys(node_of_job, 0)
        self.events: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._drain, name=f"events-{min(node_of_job)}", daemon=True)
        self.thread.start()

    def put(self, job_id: int, event: dict) -> None:
        self.events.put((job_id, event))

    def _drain(self) -> None:
        with self.app.app_context():
            while not (self.stopping.is_set() and self.events.empty()):
                try:
                    batch = [self.events.get(timeout=EVENT_FLUSH_SECONDS)]
                except queue.Empty:
                    continue
                self.stopping.wait(EVENT_FLUSH_SECONDS)  # what follows within the interval joins this transaction
                while True:
                    try:
                        batch.append(self.events.get_nowait())
                    except queue.Empty:
                        break
                self._store(batch)
            release()

    def _store(self, batch: list[tuple[int, dict]]) -> None:
        rows = []
        for job_id, event in batch:
            if job_id is None:  # _WAKE
                continue
            self.counts[job_id] += 1
            data = event.get("event_data", {})
            rows.append({"job_id": job_id, "node_id": self.node_of_job[job_id] or self.node_of_host.get(data.get("host")),
                         "counter": event.get("counter", self.counts[job_id]), "event": event.get("event", "unknown"),
                         "host": data.get("host"), "task": data.get("task"), "stdout": event.get("stdout", ""),
                         "data": {k: data[k] for k in ("res",) if k in data and isinstance(data[k], dict)
                                  and not data[k].get("_ansible_no_log")}})
        if rows:
            # One executemany of the table's INSERT: no ORM objects, since this thread shares
            # the GIL with the runner's.
            db = session()
            try:
                db.execute(insert(JobEvent.__table__), rows)
                db.commit()
            except IntegrityError:
                db.rollback()
                self._insert_without_deleted_nodes(rows)

    @staticmethod
    def _insert_without_deleted_nodes(rows: list[dict]) -> None:
        """A node deleted during the run (a read-only job does not hold its node) fails the events' foreign key:
        its events are stored under no node, with their job alone."""
        db = session()
        present = set(db.scalars(select(Node.id).where(Node.id.in_({row["node_id"] for row in rows} - {None}))))
        db.execute(insert(JobEvent.__table__), [{**row, "node_id": row["node_id"] if row["node_id"] in present else None}
                                                for row in rows])
        db.commit()

    def close(self) -> dict[int, int]:
        """Store what is queued, stop; the number of events stored per job."""
        self.stopping.set()
        self.events.put(_WAKE)  # no need to wait out the flush interval
        self.thread.join(timeout=30)
        return self.counts
