"""The failed-login throttle: too many failed logins answer 429 before the password is checked.

Failures are counted over a sliding window for one user name from one address, and for one address
over every user name (password spraying). None is counted for a user name alone: anyone could then
lock a user (hosted·ai's client, which logs in again after a 401) out from everywhere. The counts are
LoginFailure rows, so every service host sees the same ones. Checking, then failing, then recording is
not one transaction: requests in flight together may pass a limit by as many as run at once, which a
guesser cannot repeat (the next ones are refused).

An IPv6 client is counted by its /64 network: one host is commonly given a whole /64.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
import math

from sqlalchemy import delete, select

from .db import session
from .models import LoginFailure, column_length

# The network an IPv6 client is counted by (RFC 6177: a site gets at least a /64; so does one host).
IPV6_PREFIX = 64


class LoginThrottled(Exception):
    """Too many failed logins: none is checked for ``retry_after`` seconds more."""

    def __init__(self, retry_after: int, scope: str):
        super().__init__(f"too many failed logins {scope}: try again in {retry_after} s")
        self.retry_after = retry_after
        self.scope = scope


@dataclasses.dataclass(frozen=True)
class Limits:
    per_user_address: int
    per_address: int
    window_seconds: int

    @classmethod
    def from_config(cls, config) -> "Limits":
        return cls(config.LOGIN_FAILURES_PER_USER_ADDRESS, config.LOGIN_FAILURES_PER_ADDRESS,
                   config.LOGIN_FAILURE_WINDOW_SECONDS)


def address_key(address: str | None) -> str:
    """What a client is counted by: its IPv4 address, or its IPv6 /64 network (an IPv4-mapped IPv6
    address counts as the IPv4 address); anything else (a Unix socket's peer) as given."""
    try:
        parsed = ipaddress.ip_address(address or "")
    except ValueError:
        return (address or "")[:column_length(LoginFailure.address)]
    if parsed.version == 6 and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/{IPV6_PREFIX}", strict=False))
    return str(parsed)


def username_digest(username: str) -> str:
    """The user name as stored and logged: its SHA-256 (people type passwords into the user name field)."""
    return hashlib.sha256(username.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)  # SQLite hands naive ones back


def _retry_after(conditions, limit: int, limits: Limits, now: dt.datetime) -> int | None:
    """Seconds until fewer than ``limit`` failures matching ``conditions`` are in the window; None when
    fewer already are. That is when the limit-th latest failure leaves the window (the oldest counted,
    when exactly ``limit`` are)."""
    since = now - dt.timedelta(seconds=limits.window_seconds)
    at = session().scalar(select(LoginFailure.at).where(LoginFailure.at > since, *conditions)
                          .order_by(LoginFailure.at.desc()).offset(limit - 1).limit(1))
    if at is None:
        return None
    remaining = (_aware(at) - since).total_seconds()
    return max(1, math.ceil(remaining))


def check(username: str, address: str | None, limits: Limits, now: dt.datetime | None = None) -> None:
    """Raise LoginThrottled when this user name from this address, or this address, has failed too often."""
    now = now or _now()
    key = address_key(address)
    by_address = LoginFailure.address == key
    waits = {
        "for this user name from this address": _retry_after(
            (by_address, LoginFailure.username_hash == username_digest(username)), limits.per_user_address, limits, now),
        "from this address": _retry_after((by_address,), limits.per_address, limits, now),
    }
    throttled = {scope: wait for scope, wait in waits.items() if wait is not None}
    if throttled:
        scope = max(throttled, key=throttled.get)
        raise LoginThrottled(throttled[scope], scope)


def record_failure(username: str, address: str | None, limits: Limits, now: dt.datetime | None = None) -> None:
    """Count a failed login (in the caller's transaction), and delete the failures the window has left
    behind: inserting is when rows are added, and the `at` index makes the delete cheap."""
    now = now or _now()
    db = session()
    db.execute(delete(LoginFailure).where(LoginFailure.at <= now - dt.timedelta(seconds=limits.window_seconds)))
    db.add(LoginFailure(at=now, address=address_key(address), username_hash=username_digest(username)))


def forget_failures(username: str, address: str | None) -> None:
    """After a successful login, its own user name's failures from its address no longer count (in the
    caller's transaction). Other user names' failures from the address stay: a guesser who knows one
    password cannot clear a spraying count with it."""
    session().execute(delete(LoginFailure).where(LoginFailure.address == address_key(address),
                                                 LoginFailure.username_hash == username_digest(username)))
