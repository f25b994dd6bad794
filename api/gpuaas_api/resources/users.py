"""Users, tokens and logout: admins manage users and tokens; every user may end its own session."""
from __future__ import annotations

import datetime as dt

from flask import current_app, g, make_response
from flask.views import MethodView
from flask_smorest import Blueprint

from ..access import Role, admin_reads, administers, own_session
from ..auth import COOKIE_NAME
from ..db import session
from ..domain_errors import NotFound
from ..rendering import render_token, render_user
from ..schemas import (TokenCreatedSchema, TokenCreateSchema, TokenQuerySchema, TokenSchema, UserCreateSchema,
                       UserEditSchema, UserSchema)
from .. import users

blp = Blueprint("users", __name__, description="Users and API tokens (admins), and logout (everyone)")


@blp.route("/users")
class Users(MethodView):
    @blp.response(200, UserSchema(many=True))
    @admin_reads
    def get(self):
        """Every user, with their role."""
        return [render_user(user) for user in users.list_users()]

    @blp.arguments(UserCreateSchema)
    @blp.response(201, UserSchema)
    @administers
    def post(self, fields):
        """Create a user with a role (viewer, operator or admin); they log in with their password."""
        user = users.create_user(fields["username"], fields["password"], Role(fields["role"]), fields["email"])
        return render_user(user)


@blp.route("/users/<id:user_id>")
class UserById(MethodView):
    @blp.response(200, UserSchema)
    @admin_reads
    def get(self, user_id):
        """One user."""
        return render_user(users.get_user(user_id))

    @blp.arguments(UserEditSchema)
    @blp.response(200, UserSchema)
    @administers
    def patch(self, fields, user_id):
        """Change a user's role or e-mail. The last admin can't be demoted (409)."""
        user = users.get_user(user_id)
        if "email" in fields:
            user.email = fields["email"]
        if "role" in fields:
            users.set_role(user, Role(fields["role"]))  # commits
        session().commit()
        return render_user(user)

    @blp.response(204)
    @administers
    def delete(self, user_id):
        """Delete a user and their tokens. The last admin can't be deleted (409)."""
        users.delete_user(users.get_user(user_id))


def _lifetime(days: int | None) -> dt.timedelta | None:
    """A new token's lifetime: the request's days, or GPUAAS_API_TOKEN_TTL_DAYS; 0 is never."""
    if days is None:
        days = current_app.config["GPUAAS"].API_TOKEN_TTL_DAYS
    return dt.timedelta(days=days) if days else None


@blp.route("/tokens")
class Tokens(MethodView):
    @blp.arguments(TokenQuerySchema, location="query")
    @blp.response(200, TokenSchema(many=True))
    @admin_reads
    def get(self, query):
        """Every token's record (never the token itself), or one user's (?user_id=)."""
        return [render_token(token) for token in users.list_tokens(query.get("user_id"))]

    @blp.arguments(TokenCreateSchema)
    @blp.response(201, TokenCreatedSchema)
    @administers
    def post(self, fields):
        """Issue a token for a user, perhaps with a narrower role; the token is shown only in this reply."""
        user = users.find_user(fields["username"])
        if user is None:
            raise NotFound(f"user {fields['username']!r} not found")
        role = Role(fields["role"]) if "role" in fields else None
        row, token = users.create_token(user, fields["description"], role, _lifetime(fields.get("expires_in_days")))
        return {**render_token(row), "token": token}


@blp.route("/tokens/<id:token_id>")
class TokenById(MethodView):
    @blp.response(204)
    @administers
    def delete(self, token_id):
        """Revoke a token: refused from now on (within a few seconds on the other service hosts)."""
        users.revoke_token(users.get_token(token_id))


@blp.route("/logout")
class Logout(MethodView):
    @blp.response(204)
    @own_session
    def post(self):
        """End the token this request presents (the login cookie's, or the Bearer token), and clear the cookie."""
        users.revoke_token(users.get_token(g.identity.token_id))
        response = make_response("", 204)
        response.delete_cookie(COOKIE_NAME, httponly=True, samesite="Strict")
        return response
