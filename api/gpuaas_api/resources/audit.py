"""The audit trail (audit.py records it): who changed what, when, from where, and how it ended."""
from __future__ import annotations

from flask.views import MethodView
from flask_smorest import Blueprint

from .. import audit
from ..access import reads
from ..rendering import render_audit_event
from ..schemas import AuditPageSchema, AuditQuerySchema
from ..reply_cache import json_reply

blp = Blueprint("audit", __name__, description="The audit trail: every request that changed state, and every login")


@blp.route("/audit")
class AuditTrail(MethodView):
    @blp.arguments(AuditQuerySchema, location="query")
    @blp.response(200, AuditPageSchema)
    @reads
    def get(self, query):
        """The audit records, newest first, a page at a time, with the total: by `actor` (a user name),
        object (`object_type`, `object_id`) and time (`since` inclusive, `until` exclusive)."""
        filters = audit.Filters(actor=query.get("actor"), object_type=query.get("object_type"),
                                object_id=query.get("object_id"), since=query.get("since"), until=query.get("until"))
        total, rows = audit.events(filters, query["page"], query["per_page"])
        return json_reply({"items": [render_audit_event(row) for row in rows], "total": total,
                           "page": query["page"], "per_page": query["per_page"]})
