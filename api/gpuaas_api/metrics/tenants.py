"""Tenant usage: which team holds each pool slot, its vRAM and GPU time, from the agents' reports.

A team is the namespace of the Pod that holds a slot (docs/api.md, "Tenants"). Each collection
that read a node's agent report (``tenants`` in the agent's status: over HTTP, or the status file
through the collect_metrics playbook) replaces that node's rows in ``tenant_slots``, adds the GPU
time each slot's tenant received since the last collection to its team's ``tenant_totals``, and
adds one sample per team to the ``tenant_rollups`` of every time grouping, as the GPU readings'
rollups are kept (store.py).

GPU time is the agent's counter per slot and tenant: it restarts at 0 for a new tenant and when
the agent restarts. The service stores its increases: the difference from the last collection
for the same tenant, or the whole counter when the slot's tenant changed or the counter went
down (a reset).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import defaultdict

from sqlalchemy import Integer, cast, delete, func, select

from .. import node_reports
from ..db import session
from ..gpu_models import peak_dense_tflops
from ..models import Gpu, Node, Pool, TenantRollup, TenantSlot, TenantTotal
from ..rendering import timestamp
from ..shared import sharing_policy
from ..states import TeamStatus
from .series import TIME_GROUPINGS
from .store import bucket_start, greater, upsert

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TeamNow:
    """A team's slots in a pool at the last collection."""
    slots: int = 0
    running: bool = False
    vram_used_mb: float = 0.0
    gpu_seconds_increase: float = 0.0


def store_tenant_reports(reports_by_node: dict[int, dict | None], sampled_at: dt.datetime, resource_prefix: str) -> int:
    """Store what the agents said of their slots' tenants; returns the slots held that were stored.

    ``reports_by_node``: node id -> the agent's ``tenants`` section, or None when it was not read.
    A node not read, whose kubelet did not answer its agent (state ``unknown``), whose report is
    refused (node_reports.tenant_report), or that a mutating job holds keeps its last rows. Runs
    in the caller's transaction.
    """
    db = session()
    free = set(db.scalars(select(Node.id).where(Node.id.in_(list(reports_by_node)), Node.busy_job_id.is_(None))))
    increases: dict[tuple[int, str], float] = defaultdict(float)
    stored = read = 0
    for node_id, report in sorted(reports_by_node.items()):
        if report is None or node_id not in free or report.get("state") == "unknown":
            continue
        try:
            slots = node_reports.tenant_report(report)
        except node_reports.InvalidNodeReport as refusal:
            log.warning("node %s: %s", node_id, refusal)
            continue
        stored += _replace_node_slots(node_id, slots, sampled_at, resource_prefix, increases)
        read += 1
    if read:
        _add_samples(sampled_at, increases)
    return stored


def _replace_node_slots(node_id: int, slots: list, sampled_at: dt.datetime, resource_prefix: str,
                        increases: dict) -> int:
    """The node's tenant_slots, as its agent reports them now; GPU time increases go to ``increases``."""
    db = session()
    gpus = {gpu.uuid: gpu for gpu in db.scalars(select(Gpu).where(Gpu.node_id == node_id))}
    ratios = dict(db.execute(select(Pool.id, Pool.sharing_ratio).where(
        Pool.id.in_({gpu.pool_id for gpu in gpus.values() if gpu.pool_id is not None}))).all())
    before = {(row.gpu_id, row.slot_index): row for row in db.scalars(
        select(TenantSlot).where(TenantSlot.gpu_id.in_([gpu.id for gpu in gpus.values()])))}
    rows = []
    for slot in slots:
        gpu = gpus.get(slot.gpu_uuid)
        # Only a slot of the GPU's pool now, named as the agent advertises that pool, is its tenant's.
        if gpu is None or gpu.pool_id is None or not 1 <= slot.slot <= ratios[gpu.pool_id] \
                or slot.resource != sharing_policy.pool_resource_name(gpu.pool_id, resource_prefix):
            continue
        key = (gpu.id, slot.slot)
        if slot.state == "unknown" and key in before:
            rows.append(_as_row(before[key]))
            continue
        if slot.team is None:
            continue
        previous = before.get(key)
        same_tenant = previous is not None and previous.pool_id == gpu.pool_id and \
            (previous.team, previous.pod, previous.container) == (slot.team, slot.pod, slot.container) and \
            (previous.pod_uid is None or slot.pod_uid is None or previous.pod_uid == slot.pod_uid)
        reset = not same_tenant or slot.gpu_seconds < previous.gpu_seconds
        increases[(gpu.pool_id, slot.team)] += slot.gpu_seconds if reset else slot.gpu_seconds - previous.gpu_seconds
        rows.append({"gpu_id": gpu.id, "slot_index": slot.slot, "pool_id": gpu.pool_id, "team": slot.team,
                     "pod": slot.pod, "container": slot.container, "pod_uid": slot.pod_uid,
                     "running": slot.state == "running", "vram_used_mb": slot.vram_used_mb,
                     "gpu_seconds": slot.gpu_seconds, "sampled_at": sampled_at})
    db.execute(delete(TenantSlot).where(TenantSlot.gpu_id.in_([gpu.id for gpu in gpus.values()])))
    if rows:
        db.execute(TenantSlot.__table__.insert(), rows)
    return len(rows)


def _as_row(slot: TenantSlot) -> dict:
    return {column.name: getattr(slot, column.name) for column in TenantSlot.__table__.columns}


def teams_now(pool_ids: list[int] | None = None) -> dict[tuple[int, str], TeamNow]:
    """(pool, team) -> its slots held now (every pool's, or those of ``pool_ids``)."""
    # max() of a boolean: SQLite's is an integer already, PostgreSQL has none for booleans (cast both).
    statement = select(TenantSlot.pool_id, TenantSlot.team, func.count(), func.max(cast(TenantSlot.running, Integer)),
                       func.sum(TenantSlot.vram_used_mb)).group_by(TenantSlot.pool_id, TenantSlot.team)
    if pool_ids is not None:
        statement = statement.where(TenantSlot.pool_id.in_(pool_ids))
    return {(pool_id, team): TeamNow(slots, bool(running), float(vram or 0.0))
            for pool_id, team, slots, running, vram in session().execute(statement)}


def _add_samples(sampled_at: dt.datetime, increases: dict) -> None:
    """One sample per team holding slots (or that received GPU time) into the totals and rollups."""
    teams = teams_now()
    for key, seconds in increases.items():
        teams.setdefault(key, TeamNow()).gpu_seconds_increase = seconds
    if not teams:
        return
    db = session()
    db.execute(upsert(TenantTotal.__table__, ["pool_id", "team"], lambda table, new: {
        "gpu_seconds": table.c.gpu_seconds + new.gpu_seconds, "last_seen": new.last_seen}),
        [{"pool_id": pool_id, "team": team, "gpu_seconds": now.gpu_seconds_increase, "first_seen": sampled_at,
          "last_seen": sampled_at} for (pool_id, team), now in teams.items()])
    epoch = int(sampled_at.timestamp())
    rows = [{"pool_id": pool_id, "team": team, "width_seconds": width, "bucket_start": bucket_start(epoch, width),
             "samples": 1, "slots_sum": float(now.slots), "slots_max": float(now.slots),
             "vram_used_mb_sum": now.vram_used_mb, "vram_used_mb_max": now.vram_used_mb,
             "gpu_seconds": now.gpu_seconds_increase}
            for (pool_id, team), now in teams.items() for width in TIME_GROUPINGS.values()]
    db.execute(upsert(TenantRollup.__table__, ["pool_id", "team", "width_seconds", "bucket_start"], _rollup_changes),
               rows)


def _rollup_changes(table, new) -> dict:
    return {"samples": table.c.samples + new.samples, "slots_sum": table.c.slots_sum + new.slots_sum,
            "slots_max": greater(table.c.slots_max, new.slots_max),
            "vram_used_mb_sum": table.c.vram_used_mb_sum + new.vram_used_mb_sum,
            "vram_used_mb_max": greater(table.c.vram_used_mb_max, new.vram_used_mb_max),
            "gpu_seconds": table.c.gpu_seconds + new.gpu_seconds}


def subscribed_teams(pool: Pool, from_time_seconds: int, least_consumed_first: bool, page: int, limit: int,
                     team: str | None = None) -> dict:
    """The pool's teams as hosted·ai's admin client reads them (docs/api.md, "Tenants"): those holding
    slots now, and with ``from_time_seconds`` those that held one since; ``total`` counts the slots
    they hold now, over every page."""
    db = session()
    gpus = {gpu.id: gpu for gpu in db.scalars(select(Gpu).where(Gpu.pool_id == pool.id))}
    held: dict[str, list[TenantSlot]] = defaultdict(list)
    for slot in db.scalars(select(TenantSlot).where(TenantSlot.pool_id == pool.id, TenantSlot.gpu_id.in_(list(gpus)))):
        held[slot.team].append(slot)
    totals = {total.team: total for total in db.scalars(select(TenantTotal).where(TenantTotal.pool_id == pool.id))}
    names = set(held)
    if from_time_seconds > 0:
        since = dt.datetime.fromtimestamp(from_time_seconds, dt.timezone.utc)
        names |= {name for name, total in totals.items() if _aware(total.last_seen) >= since}
    if team is not None:
        names &= {team}
    teams = [_team(name, held.get(name, []), totals.get(name), gpus, pool.sharing_ratio) for name in names]
    teams.sort(key=lambda entry: (entry["gpu_seconds"], entry["team_id"]), reverse=not least_consumed_first)
    return {"data": teams[page * limit:(page + 1) * limit], "total": sum(entry["slots"] for entry in teams),
            "page": page, "limit": limit}


def _team(name: str, slots: list[TenantSlot], total: TenantTotal | None, gpus: dict[int, Gpu], ratio: int) -> dict:
    peaks = [peak_dense_tflops(gpus[slot.gpu_id].model) for slot in slots]
    status = TeamStatus.RUNNING if any(slot.running for slot in slots) else TeamStatus.IDLE if slots else TeamStatus.ENDED
    return {"team_id": name, "team_name": name,
            "total_ram_mb": sum((gpus[slot.gpu_id].memory_in_mb or 0) // ratio for slot in slots),
            "total_tflops": None if None in peaks else round(sum(peaks) / ratio, 2),
            "status": status.value, "slots": len(slots), "pods": len({(slot.pod, slot.pod_uid) for slot in slots}),
            "vram_used_mb": round(sum(slot.vram_used_mb for slot in slots), 1),
            "gpu_seconds": round(total.gpu_seconds, 3) if total else 0.0,
            "first_seen": timestamp(total.first_seen) if total else None,
            "last_seen": timestamp(total.last_seen) if total else None}


def _aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; they were stored as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def team_series(pool_id: int, width: int, start: dt.datetime, end: dt.datetime) -> dict[str, list[dict]]:
    """Per team, every bucket overlapping [start, end) in which it held slots or received GPU time."""
    series: dict[str, list[dict]] = defaultdict(list)
    for row in session().scalars(select(TenantRollup).where(
            TenantRollup.pool_id == pool_id, TenantRollup.width_seconds == width,
            TenantRollup.bucket_start >= bucket_start(int(start.timestamp()), width),
            TenantRollup.bucket_start < end.timestamp()).order_by(TenantRollup.team, TenantRollup.bucket_start)):
        series[row.team].append({
            "bucket_start": timestamp(dt.datetime.fromtimestamp(row.bucket_start, dt.timezone.utc)),
            "samples": row.samples,
            "slots": {"avg": round(row.slots_sum / row.samples, 2), "max": row.slots_max},
            "vram_used_mb": {"avg": round(row.vram_used_mb_sum / row.samples, 2), "max": row.vram_used_mb_max},
            "gpu_seconds": round(row.gpu_seconds, 3)})
    return dict(series)
