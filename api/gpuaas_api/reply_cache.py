"""The cached read paths: node replies built from Core rows, and a per-process reply cache.

Each object is rendered by its one function in rendering.py; here the rows are only gathered.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

from flask import current_app
from sqlalchemy import select

from .models import DataVersion, Gpu, Job, Node, Region
from .rendering import render_gpu, render_node, render_regions
from .states import FAILING_TO_ERROR, JobStatus, NodeStatus, enum_value


def failed_operations(db, nodes) -> dict[int, str]:
    """Each ERROR node's newest operation of those that leave it ERROR when they fail (a job that ran:
    one refused at its turn never moved the node): what put it there (rendering.status_codes)."""
    in_error = [node.id for node in nodes if enum_value(node.status) == NodeStatus.ERROR.value]
    if not in_error:
        return {}
    finished = [status for status in JobStatus if status.finished]
    rows = db.execute(select(Job.node_id, Job.operation).where(
        Job.node_id.in_(in_error), Job.operation.in_([operation.value for operation in FAILING_TO_ERROR]),
        Job.status.in_(finished), Job.started_at.is_not(None)).order_by(Job.id))
    return dict(rows.all())  # in id order: each node's newest (highest id) comes last, and is kept


def node_reply(db, node: Node) -> dict:
    """One node (ORM, GPUs and region loaded)."""
    region = render_regions(db, [node.region])[0]
    return render_node(node, [render_gpu(gpu) for gpu in node.gpus], region, failed_operations(db, [node]).get(node.id))


def node_list(db, region_id: int | None = None) -> list[dict]:
    """Every node (of a region), rendered as node_reply renders one, read with four Core queries (a fifth when one is in error).

    No ORM objects are made: for 1,000 nodes x 8 GPUs that is several times faster.
    """
    nodes = select(Node.__table__).order_by(Node.id)
    gpus = select(Gpu.__table__).order_by(Gpu.node_id, Gpu.index)
    if region_id is not None:
        nodes = nodes.where(Node.region_id == region_id)
        gpus = gpus.join(Node, Gpu.node_id == Node.id).where(Node.region_id == region_id)
    gpus_by_node: dict[int, list[dict]] = {}
    for gpu in db.execute(gpus).mappings():
        # A Row's `index` is the tuple method, not the column: give render_gpu plain attributes.
        gpus_by_node.setdefault(gpu["node_id"], []).append(render_gpu(SimpleNamespace(**gpu)))
    regions_rows = db.scalars(select(Region)).all()
    regions = {region["id"]: region for region in render_regions(db, regions_rows)}
    rows = db.execute(nodes).all()
    failed = failed_operations(db, rows)
    return [render_node(row, gpus_by_node.get(row.id, []), regions[row.region_id], failed.get(row.id)) for row in rows]


# (endpoint, argument) -> (data version, serialised reply); per process.
_replies: dict[tuple, tuple[tuple, bytes]] = {}
MAX_CACHED_REPLIES = 1024


# Read on every cached GET: plain DB-API, no SQLAlchemy statement machinery (about 100 -> 30 us).
_VERSION_SQL = f"SELECT version FROM {DataVersion.__tablename__} WHERE id = 1"


def current_data_version() -> tuple:
    """The data version: this process's notified view on PostgreSQL under `serve` (no round trip,
    version_listener.py), else data_version read on a pooled connection of its own (a cache hit
    makes no ORM session at all)."""
    listener = current_app.extensions.get("gpuaas_version_listener")
    notified = listener.version() if listener is not None else None
    if notified is not None:
        return notified
    return ("table", current_app.extensions["gpuaas_engine"].url.database, _table_version())


def _table_version() -> int:
    connection = current_app.extensions["gpuaas_engine"].raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(_VERSION_SQL)
        return cursor.fetchone()[0]
    finally:
        connection.close()  # back to the pool, which ends its transaction


def cached_reply(key: tuple, build):
    """The reply for ``key``, rebuilt only when the data version has moved since it was cached.

    The version is read before the data, so a cached reply is never older than its version.
    """
    version = current_data_version()
    hit = _replies.get(key)
    if hit is not None and hit[0] == version:
        body = hit[1]
    else:
        body = json.dumps(build(), separators=(",", ":")).encode()
        if len(_replies) >= MAX_CACHED_REPLIES:
            _replies.clear()
        _replies[key] = (version, body)
    return current_app.response_class(body, mimetype="application/json")


def json_reply(data, status: int = 200):
    """A rendered object as the reply, as is: flask-smorest's schema documents it, and does not re-dump it."""
    return current_app.response_class(json.dumps(data, separators=(",", ":")), status=status,
                                      mimetype="application/json")
