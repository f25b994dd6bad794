"""Tokens, the identity each stands for, and the access check every request passes (init_app): the
route's declared access (access.py), the caller's token, its role, and no cross-site cookie writes.

Passwords: werkzeug's scrypt (a slow hash). Tokens: 32 random bytes shown once;
only their SHA-256 is stored (a token is already high-entropy, so a fast hash is
enough and lookups stay indexed).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import secrets
import time
from urllib.parse import urlsplit

from flask import Flask, g, request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from .access import Access, Role, narrower, route_access
from .db import session
from .errors import ApiError
from .models import ApiToken, User

LOG = logging.getLogger(__name__)

COOKIE_NAME = "token"
LOGIN_TOKEN = "login"  # the description of the tokens POST /api/login issues


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    return generate_password_hash(password, method="scrypt")


def prune_expired_tokens() -> int:
    """Delete every expired token (in the caller's transaction); how many went.

    Each login issues a token: without this, a client that logs in every few minutes grows the
    table without bound. Issuing is the natural moment: it is when tokens are added.
    """
    now = dt.datetime.now(dt.timezone.utc)
    return session().execute(delete(ApiToken).where(ApiToken.expires_at.is_not(None),
                                                    ApiToken.expires_at < now)).rowcount


def new_token(user: User, lifetime: dt.timedelta | None, description: str = "",
              role: Role | None = None) -> tuple[ApiToken, str]:
    """A new token for ``user`` (added to the session, not committed): its row, and the token itself,
    which is shown only now. ``role`` narrows what it may do; None: whatever its user may."""
    token = secrets.token_urlsafe(32)
    expires = dt.datetime.now(dt.timezone.utc) + lifetime if lifetime else None
    prune_expired_tokens()
    row = ApiToken(user=user, token_hash=hash_token(token), description=description, expires_at=expires,
                   role=role.value if role else None)
    session().add(row)
    return row, token


def issue_token(user: User, hours: int | None, description: str = "") -> str:
    return new_token(user, dt.timedelta(hours=hours) if hours else None, description)[1]


def check_login(username: str, password: str) -> User:
    user = session().scalar(select(User).where(User.username == username))
    # Compare against a dummy hash when the user is unknown, so timing does not tell.
    stored = user.password_hash if user else _DUMMY_HASH
    if not check_password_hash(stored, password) or user is None:
        raise ApiError(401, "wrong username or password")
    return user


def _presented_token() -> tuple[str | None, bool]:
    """The token the request carries, and whether it came in the login cookie (which a browser
    sends by itself, so cross-site requests must be told apart: refuse_cross_site)."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip(), False
    cookie = request.cookies.get(COOKIE_NAME)
    return cookie, cookie is not None


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who is asking: the user, the token they presented, and what that token may do."""

    user_id: int
    username: str
    role: Role           # the user's role, narrowed by the token's own
    token_id: int
    expires_at: dt.datetime | None
    checked_at: float    # time.monotonic() when it was read from the database


# token hash -> Identity: a valid token is looked up again after TOKEN_CACHE_SECONDS, so a revoked
# token, or a role changed, takes effect within that long in every process (at once in the one
# that made the change: forget_cached_tokens).
TOKEN_CACHE_SECONDS = 5.0
_token_cache: dict[str, Identity] = {}


def forget_cached_tokens() -> None:
    """Look every token up again on its next use (after a change that ends tokens or changes roles)."""
    _token_cache.clear()


def _identity(digest: str) -> Identity | None:
    row = session().execute(select(ApiToken.id, ApiToken.expires_at, ApiToken.role, User.id.label("user_id"),
                                   User.username, User.role.label("user_role"))
                            .join(User, ApiToken.user_id == User.id)
                            .where(ApiToken.token_hash == digest)).first()
    if row is None:
        return None
    expires = row.expires_at
    if expires is not None and expires.tzinfo is None:  # SQLite hands naive datetimes back
        expires = expires.replace(tzinfo=dt.timezone.utc)
    role = narrower(Role(row.user_role), Role(row.role) if row.role else None)
    return Identity(row.user_id, row.username, role, row.id, expires, time.monotonic())


def authenticate(token: str | None) -> Identity:
    """The identity ``token`` stands for; 401 when there is none, or it is unknown or expired."""
    if not token:
        raise ApiError(401, "authentication required: log in at POST /api/login or send a Bearer token")
    digest = hash_token(token)
    identity = _token_cache.get(digest)
    if identity is None or time.monotonic() - identity.checked_at > TOKEN_CACHE_SECONDS:
        identity = _identity(digest)
        if identity is None:
            _token_cache.pop(digest, None)
            raise ApiError(401, "the token is not valid")
        _token_cache[digest] = identity
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


FIRST_ADMIN_USERNAME = "admin"


def ensure_admin(username: str | None, password: str | None) -> str | None:
    """Create the first admin when no user exists yet; return a generated password, if one was made.

    With GPUAAS_ADMIN_USER and GPUAAS_ADMIN_PASSWORD, that user.  With neither, as Grafana and
    Jenkins do, `admin` with a random password that the caller shows once: only its hash is
    stored, so a new user gets straight in and no default password exists.
    """
    db = session()
    if db.scalar(select(User.id).limit(1)) is not None:
        return None
    generated = None
    if not username:
        username, password = FIRST_ADMIN_USERNAME, secrets.token_urlsafe(18)
        generated = password
    db.add(User(username=username, password_hash=hash_password(password), role=Role.ADMIN.value, is_super_admin=True))
    try:
        db.commit()
    except IntegrityError:  # another host on the same database made it first: that one stands
        db.rollback()
        return None
    return generated


def set_password(username: str, password: str) -> bool:
    """Give an existing user a new password and end its login sessions; False when there is no such user.

    Tokens from `create-token` (automation) stay valid: they were never tied to the password.
    """
    db = session()
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        return False
    user.password_hash = hash_password(password)
    db.execute(delete(ApiToken).where(ApiToken.user_id == user.id, ApiToken.description == LOGIN_TOKEN))
    db.commit()
    forget_cached_tokens()
    return True


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


_DUMMY_HASH = generate_password_hash(secrets.token_hex(8), method="scrypt")
