"""The audit trail: one record per request that changes state, and per successful login.

A request is audited when its route's declared access changes state (access.Access.changes_state)
and the caller was authenticated: who (user, token), from where, what (method, path, action, the
object it named or created, the job it started) and with what result (the reply's status, a 403
from the role check included). Requests refused before the caller was known (401) and cross-site
cookie requests (403: another site made the browser send them, not the user) go to the log only
(auth.py). Each record is written after the reply is made, in a short transaction of its own: a
failure to write it is logged and never fails the reply. Records older than
GPUAAS_AUDIT_RETENTION_DAYS are deleted by each process's housekeeper (prune).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from flask import Flask, Response, g, request
from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from . import actor
from .credentials import hash_token
from .db import session
from .models import ApiToken, AuditEvent, column_length
from .validation import MAX_ID

LOG = logging.getLogger(__name__)

LOGIN_ENDPOINT = "auth.Login"  # public, so unauthenticated: recorded from its reply when it succeeds

# The ids a request names, and what they name: the first found wins, looking in the path's
# arguments, then the query, then a JSON body (the guide's operations name their node there).
# A pool before a node or a GPU: a change of a pool's GPUs is the pool's.
OBJECT_KEYS = (("pool_id", "pool"), ("gpuaas_node_id", "node"), ("joinee_node_id", "node"), ("node_id", "node"),
               ("controller_node_id", "node"), ("gpuaas_id", "cluster"), ("region_id", "region"), ("job_id", "job"),
               ("user_id", "user"), ("token_id", "token"), ("gpu_id", "gpu"))
# Creations (201): what the reply's `id` names.
CREATED = {"regions.Regions": "region", "nodes.NodeAdd": "node", "pools.PoolCreate": "pool", "pools.PoolAdd": "pool",
           "users.Users": "user", "users.Tokens": "token"}
OBJECT_TYPES = sorted({kind for _key, kind in OBJECT_KEYS} | set(CREATED.values()))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _database_id(value) -> str | None:
    """``value`` as an object id (a database id, sent as a number or digits), or None."""
    if isinstance(value, str) and value.isdigit() and len(value) <= len(str(MAX_ID)):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID:
        return str(value)
    return None


def _json_body() -> dict:
    """The JSON object the request sent, or {}: never reads a body refused for its size (413) again."""
    if not request.is_json:
        return {}
    try:
        body = request.get_json(silent=True)
    except HTTPException:
        return {}
    return body if isinstance(body, dict) else {}


def _named_object(source) -> tuple[str, str] | None:
    for key, kind in OBJECT_KEYS:
        object_id = _database_id(source.get(key))
        if object_id is not None:
            return kind, object_id
    return None


def request_object(response: Response) -> tuple[str | None, str | None]:
    """What the request acted on: (object type, id), or (None, None)."""
    created = CREATED.get(request.endpoint)
    if created is not None and response.status_code == 201:
        reply = response.get_json(silent=True)
        object_id = _database_id(reply.get("id")) if isinstance(reply, dict) else None
        if object_id is not None:
            return created, object_id
    for source in (request.view_args or {}, request.args):
        named = _named_object(source)
        if named is not None:
            return named
    return _named_object(_json_body()) or (None, None)  # the body last: it is parsed again here


def _truncated(column, value: str) -> str:
    return value[:column_length(column)]


def _event(response: Response, user_id: int, username: str, token_id: int | None) -> AuditEvent:
    """The record of this request, by this user; the object and the job it started (none when it failed)."""
    object_type, object_id = request_object(response)
    attribution = actor.current()
    started = attribution.job_ids[0] if attribution and attribution.job_ids and response.status_code < 400 else None
    return AuditEvent(at=_now(), actor_id=user_id, actor=_truncated(AuditEvent.actor, username), token_id=token_id,
                      address=_truncated(AuditEvent.address, request.remote_addr or ""), method=request.method,
                      path=_truncated(AuditEvent.path, request.path),
                      action=_truncated(AuditEvent.action, f"{request.method} {request.endpoint}"),
                      object_type=object_type, object_id=object_id, status=response.status_code, job_id=started)


def _login_event(response: Response) -> AuditEvent | None:
    """A successful login's record: its user, from the reply, and the token it issued."""
    reply = response.get_json(silent=True)
    if response.status_code != 200 or not isinstance(reply, dict) or "token" not in reply:
        return None
    token_id = session().scalar(select(ApiToken.id).where(ApiToken.token_hash == hash_token(reply["token"])))
    event = _event(response, reply["id"], reply["username"], token_id)
    event.object_type, event.object_id = ("token", str(token_id)) if token_id is not None else (None, None)
    return event


def request_event(response: Response) -> AuditEvent | None:
    """This request's audit record, or None when it is not audited."""
    if request.endpoint == LOGIN_ENDPOINT:
        return _login_event(response)
    identity, declared = g.get("identity"), g.get("access")  # both set by auth's hook
    if identity is None or declared is None or not declared.changes_state or response.status_code == 401:
        return None
    return _event(response, identity.user_id, identity.username, identity.token_id)


def _store(event: AuditEvent) -> None:
    """Write the record in a transaction of its own, after ending the request's: the request has replied,
    and on SQLite a write it left open would block this one."""
    db = session()
    db.rollback()
    try:
        db.add(event)
        db.commit()
    except SQLAlchemyError:
        db.rollback()
        LOG.exception("the audit record of %s %s (%s, status %s) could not be written", event.method, event.path,
                      event.actor, event.status)


def init_app(app: Flask) -> None:
    """Audit every request that changes state (after auth.init_app, whose identity it reads), and attribute
    the jobs an authenticated request records to its user (actor.py)."""

    @app.before_request
    def _attribute():
        identity, declared = g.get("identity"), g.get("access")
        if identity is not None and declared.changes_state:  # reads record no job
            g.audit_attribution = actor.begin(identity.user_id, identity.username)

    @app.after_request
    def _audit(response: Response) -> Response:
        try:
            event = request_event(response)
            if event is not None:
                _store(event)
        except Exception:  # the reply stands whatever happens here
            LOG.exception("auditing %s %s failed", request.method, request.path)
        return response

    @app.teardown_request
    def _end_attribution(_exc):
        token = g.pop("audit_attribution", None)
        if token is not None:
            actor.end(token)


# --------------------------------------------------------------------------- reading and pruning
@dataclasses.dataclass(frozen=True)
class Filters:
    actor: str | None = None
    object_type: str | None = None
    object_id: int | None = None
    since: dt.datetime | None = None  # inclusive
    until: dt.datetime | None = None  # exclusive


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite stores the wall time without its offset: every stored time is UTC, so compare in UTC.
    return value.astimezone(dt.timezone.utc)


def events(filters: Filters, page: int, per_page: int) -> tuple[int, list[AuditEvent]]:
    """The records that match, newest first: how many in all, and the page's."""
    conditions = []
    if filters.actor is not None:
        conditions.append(AuditEvent.actor == filters.actor)
    if filters.object_type is not None:
        conditions.append(AuditEvent.object_type == filters.object_type)
    if filters.object_id is not None:
        conditions.append(AuditEvent.object_id == str(filters.object_id))
    if filters.since is not None:
        conditions.append(AuditEvent.at >= _utc(filters.since))
    if filters.until is not None:
        conditions.append(AuditEvent.at < _utc(filters.until))
    db = session()
    total = db.scalar(select(func.count(AuditEvent.id)).where(*conditions))
    rows = db.scalars(select(AuditEvent).where(*conditions).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
                      .offset((page - 1) * per_page).limit(per_page)).all()
    return total, list(rows)


def prune(retention_days: int, now: dt.datetime | None = None) -> int:
    """Delete the records older than ``retention_days`` (0 keeps them all); how many went. Committed."""
    if retention_days <= 0:
        return 0
    db = session()
    cutoff = (now or _now()) - dt.timedelta(days=retention_days)
    removed = db.execute(delete(AuditEvent).where(AuditEvent.at < cutoff)).rowcount
    db.commit()
    if removed:
        LOG.info("audit trail: %d record(s) older than %d days deleted", removed, retention_days)
    return removed
