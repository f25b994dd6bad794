"""Who may call what: the roles, and the access each route declares.

Every view method declares its access with one of the decorators below; a route without a
declaration is refused (auth.py), and tests/api/test_access.py walks the URL map so that none is
left unclassified. The access comes from the declaration, never from the HTTP method: the guide
has GETs that change the fleet (`GET /gpuaas/node/init`, `…/delete`, `scan_*`, …).
"""
from __future__ import annotations

import enum
import re

from flask import Flask


class Role(str, enum.Enum):
    """A user's role; a token may carry a narrower one (ApiToken.role)."""

    VIEWER = "viewer"      # reads everything
    OPERATOR = "operator"  # and changes the fleet: everything in the guide and compatibility.md
    ADMIN = "admin"        # and manages users and tokens

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {role: rank for rank, role in enumerate(Role)}  # each role may do what those before it may


def narrower(first: Role, second: Role | None) -> Role:
    """The lesser of two roles (a token's role narrows its user's; None narrows nothing)."""
    return first if second is None or first.rank <= second.rank else second


class Access(enum.Enum):
    """What a route does, and so who may call it."""

    PUBLIC = "public"            # anyone, unauthenticated: login, health, the OpenAPI document
    READ = "read"                # reads: every role
    OWN_SESSION = "own_session"  # ends the caller's own token (logout): every role, but a change
    CHANGE = "change"            # changes the fleet: operators and admins
    ADMIN_READ = "admin_read"    # reads users and tokens: admins
    ADMINISTER = "administer"    # changes users and tokens: admins

    @property
    def changes_state(self) -> bool:
        """True for routes that write: they are audited, and refused to cross-site cookie requests."""
        return self in _CHANGES_STATE

    @property
    def required_role(self) -> Role | None:
        return _REQUIRED_ROLE[self]

    def allows(self, role: Role) -> bool:
        return _RANK[role] >= _REQUIRED_RANK[self]


_REQUIRED_ROLE = {Access.PUBLIC: None, Access.READ: Role.VIEWER, Access.OWN_SESSION: Role.VIEWER,
                  Access.CHANGE: Role.OPERATOR, Access.ADMIN_READ: Role.ADMIN, Access.ADMINISTER: Role.ADMIN}
# Looked up on every request: tables, not computed.
_REQUIRED_RANK = {access: -1 if role is None else _RANK[role] for access, role in _REQUIRED_ROLE.items()}
_CHANGES_STATE = frozenset({Access.OWN_SESSION, Access.CHANGE, Access.ADMINISTER})


_ATTRIBUTE = "__gpuaas_access__"


def _declare(access: Access):
    def decorate(function):
        # functools.wraps (flask-smorest's decorators) copies __dict__, so the mark survives in any order.
        setattr(function, _ATTRIBUTE, access)
        return function
    return decorate


public = _declare(Access.PUBLIC)
reads = _declare(Access.READ)
own_session = _declare(Access.OWN_SESSION)
changes = _declare(Access.CHANGE)
admin_reads = _declare(Access.ADMIN_READ)
administers = _declare(Access.ADMINISTER)

# Endpoints that are not this project's view methods: Flask's static files and flask-smorest's
# OpenAPI document and page. (/metrics declares its own, in metrics/prometheus.py.)
FOREIGN_ENDPOINTS = {
    "static": Access.PUBLIC,
    "api-docs.openapi_json": Access.PUBLIC,
}


def route_access(app: Flask, endpoint: str | None, method: str) -> Access | None:
    """The access ``method`` on ``endpoint`` declares; None when it declares none (refused)."""
    if endpoint in FOREIGN_ENDPOINTS:
        return FOREIGN_ENDPOINTS[endpoint]
    view = app.view_functions.get(endpoint)
    if view is None:
        return None
    view_class = getattr(view, "view_class", None)
    handler = view if view_class is None else getattr(view_class, "get" if method == "HEAD" else method.lower(), None)
    return getattr(handler, _ATTRIBUTE, None)


_RULE_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")


def publish(app: Flask, paths: dict) -> None:
    """Write each operation's declared access into the OpenAPI document's ``paths`` (as apispec holds
    them): `x-required-role` (absent for public routes) and `x-changes-state`, so that a client can
    tell before it calls what a token's role allows."""
    for rule in app.url_map.iter_rules():
        operations = paths.get(_RULE_ARGUMENT.sub(r"{\1}", rule.rule))
        for method in (rule.methods or ()) - {"HEAD", "OPTIONS"}:
            operation = (operations or {}).get(method.lower())
            declared = route_access(app, rule.endpoint, method)
            if operation is None or declared is None or declared is Access.PUBLIC:
                continue
            operation["x-required-role"] = declared.required_role.value
            operation["x-changes-state"] = declared.changes_state
