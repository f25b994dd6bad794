"""Which process claimed a job: an identity unique to each process start, and whether that process
is gone. Standard library only: the gunicorn master, which loads none of the application, uses it
too (cli.end_dead_workers_runs)."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import socket
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Claimant:
    """A process start, as `claimed_by` records it: ``host:pid:scope.start``.

    Neither the hostname nor the pid is unique: containers restarted from one image share a hostname,
    and each PID namespace numbers its processes from 1. ``scope`` (a digest of the boot id and the PID
    namespace) says which processes' pids these are, and ``start`` (the process's start time, in clock
    ticks since boot) tells a process from a later one that reuses its pid. So a process can tell
    that a claimant is one of its own namespace's processes, and whether that process still runs.
    """

    host: str
    pid: int
    scope: str
    start: int

    def __str__(self) -> str:
        # 32 + 1 + 7 + 1 + 8 + 1 + 12 characters at most: claimed_by is 64. The host is for people.
        return f"{self.process_slot()}{self.start}"

    def process_slot(self) -> str:
        """What names the process whatever it started at: its host, pid and scope."""
        return f"{self.host[:32]}:{self.pid}:{self.scope}."

    @classmethod
    def parse(cls, text: str | None) -> Claimant | None:
        """The claimant ``text`` names; None for anything else (a claimant of an older release: `host:pid`)."""
        parts = (text or "").rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or "." not in parts[2]:
            return None
        scope, _dot, start = parts[2].partition(".")
        return cls(parts[0], int(parts[1]), scope, int(start)) if start.isdigit() else None


def process_start(pid: int) -> int | None:
    """When ``pid`` started (ticks since boot; field 22 of /proc/PID/stat), None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


@functools.cache
def namespace_scope() -> str:
    """This machine's boot and this process's PID namespace, digested: equal for exactly the processes
    whose pids mean the same processes as ours."""
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return hashlib.sha256(f"{boot_id} {os.readlink('/proc/self/ns/pid')}".encode()).hexdigest()[:8]


_claimants: dict[int, Claimant] = {}  # by pid: a forked worker computes its own


def this_process() -> Claimant:
    pid = os.getpid()
    if pid not in _claimants:
        _claimants[pid] = Claimant(socket.gethostname(), pid, namespace_scope(), process_start(pid) or 0)
    return _claimants[pid]


def claimant() -> str:
    """This process, as a job's `claimed_by` names it."""
    return str(this_process())


def claimant_is_gone(claimed_by: str | None) -> bool:
    """True when ``claimed_by`` is a process of this machine's PID namespace that no longer runs.

    A process of another host, or of another namespace on this one (a container beside ours with
    the same hostname and the same pids), is never judged from here: its lease tells (lease.py).
    """
    other = Claimant.parse(claimed_by)
    if other is None or other.scope != namespace_scope():
        return False
    return process_start(other.pid) != other.start
