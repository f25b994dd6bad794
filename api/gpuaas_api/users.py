"""Users and their tokens: create, list, change a role, revoke (the API's /api/users and /api/tokens
and the CLI call these).

A fleet always keeps an admin: the last one can't be demoted or deleted. A token may carry a
narrower role than its user's (automation that only reads gets a viewer token), never a wider one.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from .access import Role
from .credentials import forget_cached_tokens, hash_password, new_token
from .db import commit_unique, session
from .domain_errors import Conflict, Refused, not_found
from .models import ApiToken, User


def find_user(username: str) -> User | None:
    return session().scalar(select(User).where(User.username == username))


def get_user(user_id: int) -> User:
    user = session().get(User, user_id)
    if user is None:
        raise not_found("user", user_id)
    return user


def list_users() -> list[User]:
    return list(session().scalars(select(User).order_by(User.id)))


def create_user(username: str, password: str, role: Role, email: str = "") -> User:
    """A new user (committed); 409 when the name is taken."""
    if find_user(username) is not None:
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), email=email)
    _apply_role(user, role)
    session().add(user)
    commit_unique("username", f"user {username!r} already exists")
    return user


def _apply_role(user: User, role: Role) -> None:
    user.role = role.value
    user.is_super_admin = role is Role.ADMIN  # what hosted·ai's clients read: true for admins only


def _other_admins(user: User) -> int:
    """How many admins there are besides ``user``, with their rows locked (PostgreSQL) so that two
    admins demoting each other at once can't both succeed."""
    others = session().scalars(select(User.id).where(User.role == Role.ADMIN.value, User.id != user.id)
                               .with_for_update()).all()
    return len(others)


def _refuse_losing_last_admin(user: User, what: str) -> None:
    if user.role == Role.ADMIN.value and _other_admins(user) == 0:
        raise Refused(f"user {user.username!r} is the last admin: make another admin before you {what} them")


def set_role(user: User, role: Role) -> None:
    """Change ``user``'s role (committed); its tokens follow at once in this process, and within
    credentials.TOKEN_CACHE_SECONDS in the others."""
    if role is not Role.ADMIN:
        _refuse_losing_last_admin(user, "demote")
    _apply_role(user, role)
    session().commit()
    forget_cached_tokens()


def delete_user(user: User) -> None:
    """Delete ``user`` and every token of theirs (committed). What they did stays in the audit trail."""
    _refuse_losing_last_admin(user, "delete")
    session().delete(user)
    session().commit()
    forget_cached_tokens()


def token_role(user: User, role: Role | None) -> Role | None:
    """The role a new token of ``user``'s carries: None (the user's own, following later changes),
    or one no wider than the user's."""
    if role is None or role is Role(user.role):
        return None
    if role.rank > Role(user.role).rank:
        raise Refused(f"a token can't do more than its user: {user.username!r} is {user.role}, not {role.value}", "role")
    return role


def create_token(user: User, description: str, role: Role | None, lifetime: dt.timedelta | None) -> tuple[ApiToken, str]:
    """A new token for ``user`` (committed): its row, and the token itself, which is shown only now."""
    row, token = new_token(user, lifetime, description, token_role(user, role))
    session().commit()
    return row, token


def list_tokens(user_id: int | None = None) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.id)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    return list(session().scalars(query))


def get_token(token_id: int) -> ApiToken:
    token = session().get(ApiToken, token_id)
    if token is None:
        raise not_found("token", token_id)
    return token


def revoke_token(token: ApiToken) -> None:
    """End ``token`` (committed): refused at once in this process, within credentials.TOKEN_CACHE_SECONDS in the others."""
    session().delete(token)
    session().commit()
    forget_cached_tokens()
