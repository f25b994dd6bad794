"""Users, API tokens and the authentication every route but login, health and the docs requires.

Passwords: werkzeug's scrypt (a slow hash). Tokens: 32 random bytes shown once;
only their SHA-256 is stored (a token is already high-entropy, so a fast hash is
enough and lookups stay indexed).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time

from flask import Flask, g, request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from .db import session
from .errors import ApiError
from .models import ApiToken, User

PUBLIC_ENDPOINTS = {"auth.Login", "health.Health", "api-docs.openapi_json", "api-docs.openapi_swagger_ui",
                    "static"}
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


def issue_token(user: User, hours: int | None, description: str = "") -> str:
    token = secrets.token_urlsafe(32)
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours) if hours else None
    prune_expired_tokens()
    session().add(ApiToken(user=user, token_hash=hash_token(token), description=description, expires_at=expires))
    return token


def check_login(username: str, password: str) -> User:
    user = session().scalar(select(User).where(User.username == username))
    # Compare against a dummy hash when the user is unknown, so timing does not tell.
    stored = user.password_hash if user else _DUMMY_HASH
    if not check_password_hash(stored, password) or user is None:
        raise ApiError(401, "wrong username or password")
    return user


def _presented_token() -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE_NAME)


# token hash -> (user id, expiry, checked at): a valid token is looked up again after this long,
# so a deleted token stops working within TOKEN_CACHE_SECONDS in every process.
TOKEN_CACHE_SECONDS = 5.0
_token_cache: dict[str, tuple[int, dt.datetime | None, float]] = {}


def forget_cached_tokens() -> None:
    """Look every token up again on its next use (after a change that ends tokens)."""
    _token_cache.clear()


def authenticate() -> int:
    """The authenticated user's id."""
    token = _presented_token()
    if not token:
        raise ApiError(401, "authentication required: log in at POST /api/login or send a Bearer token")
    digest = hash_token(token)
    cached = _token_cache.get(digest)
    if cached is None or time.monotonic() - cached[2] > TOKEN_CACHE_SECONDS:
        row = session().execute(select(ApiToken.user_id, ApiToken.expires_at)
                                .where(ApiToken.token_hash == digest)).first()
        if row is None:
            _token_cache.pop(digest, None)
            raise ApiError(401, "the token is not valid")
        expires = row.expires_at
        if expires is not None and expires.tzinfo is None:  # SQLite hands naive datetimes back
            expires = expires.replace(tzinfo=dt.timezone.utc)
        cached = _token_cache[digest] = (row.user_id, expires, time.monotonic())
    if cached[1] is not None and cached[1] < dt.datetime.now(dt.timezone.utc):
        raise ApiError(401, "the token has expired")
    return cached[0]


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
    db.add(User(username=username, password_hash=hash_password(password), role="admin", is_super_admin=True))
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
    """Every endpoint asks for a token but PUBLIC_ENDPOINTS and ``also_public`` (this app's choice)."""
    public = PUBLIC_ENDPOINTS | also_public

    @app.before_request
    def _require_authentication():
        if request.endpoint in public or request.method == "OPTIONS":
            return
        g.user_id = authenticate()


_DUMMY_HASH = generate_password_hash(secrets.token_hex(8), method="scrypt")
