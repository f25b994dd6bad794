"""The access check every request passes (init_app): the route's declared access (access.py), the
caller's token (credentials.py), its role, and no cross-site cookie writes."""
from __future__ import annotations

import datetime as dt
import logging
from urllib.parse import urlsplit

from flask import Flask, g, request

from .access import Access, route_access
from .credentials import Identity, cached_identity
from .errors import ApiError

LOG = logging.getLogger(__name__)

COOKIE_NAME = "token"


def _presented_token() -> tuple[str | None, bool]:
    """The token the request carries, and whether it came in the login cookie (which a browser
    sends by itself, so cross-site requests must be told apart: refuse_cross_site)."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip(), False
    cookie = request.cookies.get(COOKIE_NAME)
    return cookie, cookie is not None


def authenticate(token: str | None) -> Identity:
    """The identity ``token`` stands for; 401 when there is none, or it is unknown or expired."""
    if not token:
        raise ApiError(401, "authentication required: log in at POST /api/login or send a Bearer token")
    identity = cached_identity(token)
    if identity is None:
        raise ApiError(401, "the token is not valid")
    if identity.expires_at is not None and identity.expires_at < dt.datetime.now(dt.timezone.utc):
        raise ApiError(401, "the token has expired")
    return identity


# Sec-Fetch-Site values a browser sends for a request the service's own pages made, or the user typed.
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})


def refuse_cross_site() -> None:
    """403 for a request another site made a browser send (with the login cookie it carries).

    Browsers send Sec-Fetch-Site to HTTPS and localhost origins: it decides when present. Without
    it, an Origin whose host is not the request's Host is refused. A request with neither (curl,
    hosted·ai's client, an old browser's top-level GET: SameSite=Strict keeps the cookie off that
    one) passes. GETs are not exempt: the guide has GETs that change the fleet.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site.lower() not in SAME_SITE_FETCHES:
            raise ApiError(403, f"cross-site request refused (Sec-Fetch-Site: {site[:32]}): "
                                "a change must come from this service's own pages or a client")
        return
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
        raise ApiError(403, "cross-origin request refused: its Origin is not this service")


def init_app(app: Flask, also_public: frozenset[str] = frozenset()) -> None:
    """Every route is checked against the access it declares (access.py): refused when it declares
    none; otherwise a token is required but for public routes and ``also_public`` (this app's choice),
    cross-site cookie requests to routes that change state are refused, and the caller's role must
    allow the route."""

    @app.before_request
    def _check_access():
        if request.method == "OPTIONS" or request.endpoint is None:  # Flask's own answers: 404, 405, OPTIONS
            return
        declared = Access.PUBLIC if request.endpoint in also_public else \
            route_access(app, request.endpoint, request.method)
        g.access = declared  # the audit reads it (audit.py)
        if declared is None:
            raise ApiError(403, "this route declares no access, so nobody may call it")
        if declared is Access.PUBLIC:
            return
        token, by_cookie = _presented_token()
        try:
            identity = authenticate(token)
            if by_cookie and declared.changes_state:
                refuse_cross_site()
        except ApiError as error:
            _log_refusal(error)
            raise
        # Only now: a request refused above (unknown token, another site's) has no identity, so it is not audited.
        g.identity = identity
        if not declared.allows(g.identity.role):
            raise ApiError(403, f"the role {g.identity.role.value} may not do this "
                                f"({declared.required_role.value} or above is needed)")


def _log_refusal(error: ApiError) -> None:
    """A refused request goes to the log (never to the audit table), without the token it carried."""
    LOG.warning("refused %s %s from %s: %s", request.method, request.path, request.remote_addr, error.message)
