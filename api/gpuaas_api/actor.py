"""Who the current request acts for: the user a job it creates records as its actor, and the jobs it started.

The HTTP layer (audit.py) sets it for each authenticated request and ends it with the request; the
code that records jobs (jobs/submit.py, pools.py) reads it without knowing about requests. Outside
a request (the housekeeper's metrics collection, the job workers) none is set: the service's own
jobs have no actor.
"""
from __future__ import annotations

import contextvars
import dataclasses


@dataclasses.dataclass
class Attribution:
    user_id: int
    username: str
    job_ids: list[int] = dataclasses.field(default_factory=list)  # the jobs the request recorded, in order


_current: contextvars.ContextVar[Attribution | None] = contextvars.ContextVar("gpuaas_attribution", default=None)


def begin(user_id: int, username: str) -> contextvars.Token:
    """Act for this user until ``end`` (called with what this returns)."""
    return _current.set(Attribution(user_id, username))


def end(token: contextvars.Token) -> None:
    _current.reset(token)


def current() -> Attribution | None:
    return _current.get()


def job_actor() -> dict:
    """A new job's actor columns: the request's user, or none."""
    attribution = _current.get()
    if attribution is None:
        return {"actor_id": None, "actor": None}
    return {"actor_id": attribution.user_id, "actor": attribution.username}


def job_recorded(job_id: int) -> None:
    """Note a job the current request recorded (its audit record names the first)."""
    attribution = _current.get()
    if attribution is not None:
        attribution.job_ids.append(job_id)
