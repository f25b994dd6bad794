"""Who may log in and with what: passwords, tokens, the identity a token stands for (cached), and
the first admin. The HTTP check every request passes is auth.py's.

Passwords: werkzeug's scrypt (a slow hash). Tokens: 32 random bytes shown once;
only their SHA-256 is stored (a token is already high-entropy, so a fast hash is
enough and lookups stay indexed).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
import time

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from .access import Role, narrower
from .db import session
from .models import ApiToken, User

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


def verified_user(username: str, password: str) -> User | None:
    """The user whose password this is, or None (an unknown user takes as long as a wrong password)."""
    user = session().scalar(select(User).where(User.username == username))
    # Compare against a dummy hash when the user is unknown, so timing does not tell.
    stored = user.password_hash if user else _DUMMY_HASH
    if not check_password_hash(stored, password) or user is None:
        return None
    return user


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


def cached_identity(token: str) -> Identity | None:
    """The identity ``token`` stands for (looked up again after TOKEN_CACHE_SECONDS), or None when unknown."""
    digest = hash_token(token)
    identity = _token_cache.get(digest)
    if identity is None or time.monotonic() - identity.checked_at > TOKEN_CACHE_SECONDS:
        identity = _identity(digest)
        if identity is None:
            _token_cache.pop(digest, None)
            return None
        _token_cache[digest] = identity
    return identity


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


_DUMMY_HASH = generate_password_hash(secrets.token_hex(8), method="scrypt")
