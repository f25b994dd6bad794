"""A playbook run's events, stored as they arrive (off the runner's thread)."""
from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time

from flask import Flask
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..db import first_line, release, session
from ..models import JobEvent, Node

log = logging.getLogger(__name__)
EVENT_FLUSH_SECONDS = 0.2
STORE_RETRY_SECONDS = 1.0
# Output held while the database can't be reached, for one run: beyond it the newest lines are dropped.
MAX_UNSTORED_BYTES = 64 * 2**20


_WAKE = (None, None)  # put on an EventWriter's queue to end its wait at once


def happened_at(event: dict) -> dt.datetime:
    """When the event happened on the controller (ansible-runner's `created`, UTC), not when it was
    stored: a line written after a database outage still shows its own time."""
    try:
        created = dt.datetime.fromisoformat(event["created"])
    except (KeyError, TypeError, ValueError):
        return dt.datetime.now(dt.timezone.utc)
    return created if created.tzinfo else created.replace(tzinfo=dt.timezone.utc)


class EventWriter:
    """Stores a run's events as they arrive, off the runner's thread (a slow handler stalls the runner).

    One writer per playbook run, however many jobs its batch holds: one thread, one
    connection, at most one transaction per EVENT_FLUSH_SECONDS. (A writer per job meant ten
    threads each committing every event it got, fighting over SQLite's single write lock:
    the largest share of the service's CPU in bench/api_overhead.py.)

    While the database can't be reached the rows wait, in order, and are written once it is back:
    an outage loses no line of the log. Only past MAX_UNSTORED_BYTES of waiting output are the newest
    dropped; they are counted, logged, and said in the job's log once it can be written.
    """

    def __init__(self, app: Flask, node_of_job: dict[int, int | None], node_of_host: dict[str, int] | None = None,
                 counter_base: dict[int, int] | None = None):
        # A multi-node job has no node: given ``node_of_host``, each of its events is filed under
        # its host's node, so that it shows in that node's logs (pool_apply; see execute).
        # ``counter_base``: a job run again (put back) numbers its new events after its old ones.
        self.app, self.node_of_job = app, node_of_job
        self.node_of_host = node_of_host or {}
        self.counter_base = counter_base or {}
        self.counts = dict.fromkeys(node_of_job, 0)
        self.dropped = dict.fromkeys(node_of_job, 0)
        self.highest = dict.fromkeys(node_of_job, 0)  # each job's highest counter yet
        self.unstored: list[dict] = []  # rows not yet written, oldest first
        self.unstored_bytes = 0
        self.failures = 0  # tries in a row that the database refused
        self.events: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.give_up_at = float("inf")  # set by close(): when waiting rows are abandoned
        self.thread = threading.Thread(target=self._drain, name=f"events-{min(node_of_job)}", daemon=True)
        self.thread.start()

    def put(self, job_id: int, event: dict) -> None:
        self.events.put((job_id, event))

    def _drain(self) -> None:
        with self.app.app_context():
            while not (self.stopping.is_set() and self.events.empty() and not self.unstored):
                if self.unstored and time.monotonic() >= self.give_up_at:
                    log.error("jobs %s: %d log lines could not be stored before the run's lease ran out; lost",
                              sorted(self.counts), len(self.unstored))
                    break
                self._take(self._gather())
                if self.unstored and not self._store():
                    time.sleep(STORE_RETRY_SECONDS)  # not stopping.wait(): once stopping, that returns at once
            release()

    def _gather(self) -> list[tuple[int, dict]]:
        """What arrived: waits for a first event (unless rows wait to be stored), then what follows within the interval."""
        batch = []
        if not self.unstored:
            try:
                batch.append(self.events.get(timeout=EVENT_FLUSH_SECONDS))
            except queue.Empty:
                return []
            self.stopping.wait(EVENT_FLUSH_SECONDS)  # what follows within the interval joins this transaction
        while True:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                return batch

    def _take(self, batch: list[tuple[int, dict]]) -> None:
        for job_id, event in batch:
            if job_id is None:  # _WAKE
                continue
            self.counts[job_id] += 1
            row = self._row(job_id, event)
            self.highest[job_id] = max(self.highest[job_id], row["counter"])
            if self.unstored_bytes + len(row["stdout"]) > MAX_UNSTORED_BYTES:
                self.dropped[job_id] += 1
                continue
            self.unstored.append(row)
            self.unstored_bytes += len(row["stdout"])

    def _row(self, job_id: int, event: dict) -> dict:
        data = event.get("event_data", {})
        return {"job_id": job_id, "node_id": self.node_of_job[job_id] or self.node_of_host.get(data.get("host")),
                "counter": self.counter_base.get(job_id, 0) + event.get("counter", self.counts[job_id]),
                "event": event.get("event", "unknown"), "host": data.get("host"), "task": data.get("task"),
                "stdout": event.get("stdout", ""), "created_at": happened_at(event),
                "data": {k: data[k] for k in ("res",) if k in data and isinstance(data[k], dict)
                         and not data[k].get("_ansible_no_log")}}

    def _store(self) -> bool:
        """Write the waiting rows in one transaction; False (they wait on) when the database can't be reached."""
        ending = self.stopping.is_set() and self.events.empty()
        rows = self.unstored + (self._drop_notes() if ending else [])
        db = session()
        try:
            # One executemany of the table's INSERT: no ORM objects, since this thread shares
            # the GIL with the runner's.
            try:
                db.execute(insert(JobEvent.__table__), rows)
                db.commit()
            except IntegrityError:
                db.rollback()
                self._insert_without_deleted_nodes(rows)
        except SQLAlchemyError as error:
            release()
            self.failures += 1
            if self.failures % 10 == 1:  # once, then every ten tries
                log.warning("jobs %s: %d log lines wait for the database (%s)", sorted(self.counts), len(self.unstored),
                            first_line(error))
            return False
        self.unstored, self.unstored_bytes, self.failures = [], 0, 0
        return True

    @staticmethod
    def _insert_without_deleted_nodes(rows: list[dict]) -> None:
        """A node deleted during the run (a read-only job does not hold its node) fails the events' foreign key:
        its events are stored under no node, with their job alone."""
        db = session()
        present = set(db.scalars(select(Node.id).where(Node.id.in_({row["node_id"] for row in rows} - {None}))))
        db.execute(insert(JobEvent.__table__), [{**row, "node_id": row["node_id"] if row["node_id"] in present else None}
                                                for row in rows])
        db.commit()

    def _drop_notes(self) -> list[dict]:
        """At the end of the run, a last line in each job's log saying how many of its events were dropped."""
        notes = []
        for job_id, dropped in self.dropped.items():
            if dropped:
                log.error("job %s: %d log lines were dropped while the database could not be reached", job_id, dropped)
                notes.append({"job_id": job_id, "node_id": self.node_of_job[job_id], "event": "gpuaas_events_dropped",
                              "created_at": dt.datetime.now(dt.timezone.utc),
                              "counter": self.highest[job_id] + 1, "host": None, "task": None, "data": {},
                              "stdout": f"[{dropped} lines of this log were dropped: the database could not be reached "
                                        f"and more than {MAX_UNSTORED_BYTES // 2**20} MiB of output waited]"})
        return notes

    def close(self, give_up_at: float = float("inf")) -> dict[int, int]:
        """Store what is queued, stop; the number of events stored per job. Rows the database still
        refuses are retried until ``give_up_at`` (time.monotonic(): the run's lease)."""
        self.give_up_at = give_up_at
        self.stopping.set()
        self.events.put(_WAKE)  # no need to wait out the flush interval
        self.thread.join(timeout=max(30.0, min(give_up_at - time.monotonic() + 5, 3600)))
        return {job_id: count - self.dropped[job_id] for job_id, count in self.counts.items()}
