from __future__ import annotations

import logging

from flask import current_app, jsonify, make_response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import text
from werkzeug.exceptions import TooManyRequests

from .. import login_throttle
from ..access import public
from ..auth import COOKIE_NAME
from ..credentials import LOGIN_TOKEN, issue_token, verified_user
from ..db import session
from ..errors import ApiError
from ..models import User
from ..schemas import HealthSchema, LoginReplySchema, LoginSchema

LOG = logging.getLogger(__name__)

blp = Blueprint("auth", __name__, description="Log in: a token, and the same token as a session cookie")
health_blp = Blueprint("health", __name__, description="Liveness")

PAGE_ACCESS = ["regions", "gpuaas", "nodes", "pools"]


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema)
    @blp.response(200, LoginReplySchema)
    @public
    def post(self, credentials):
        """Exchange a username and password for a token (also set as the `token` cookie).

        Too many failed logins from the caller's address answer 429 with Retry-After, before the
        password is checked (docs/api.md, "Limits and the client's address")."""
        config = current_app.config["GPUAAS"]
        user = _checked_login(credentials["username"], credentials["password"], login_throttle.Limits.from_config(config))
        token = issue_token(user, config.TOKEN_TTL_HOURS, LOGIN_TOKEN)
        session().commit()
        reply = LoginReplySchema().dump({
            "id": user.id, "username": user.username, "email": user.email, "role": user.role,
            "is_super_admin": user.is_super_admin, "token": token, "page_access": PAGE_ACCESS})
        response = make_response(jsonify(reply))
        # Secure over TLS (behind a trusted proxy, as its X-Forwarded-Proto says), or always when configured.
        response.set_cookie(COOKIE_NAME, token, httponly=True, samesite="Strict",
                            secure=config.SESSION_COOKIE_SECURE or request.is_secure,
                            max_age=config.TOKEN_TTL_HOURS * 3600)
        return response


def _checked_login(username: str, password: str, limits: login_throttle.Limits) -> User:
    """The user these credentials name, through the throttle: a failure is counted (committed at
    once, since the request then fails), a success forgets its own user name's failures here."""
    address = request.remote_addr
    who = f"user #{login_throttle.username_digest(username)[:12]} from {address}"  # never the name: it may be a password
    try:
        login_throttle.check(username, address, limits)
    except login_throttle.LoginThrottled as throttled:
        LOG.warning("login refused for %s: %s", who, throttled)
        raise TooManyRequests(str(throttled), retry_after=throttled.retry_after) from throttled
    user = verified_user(username, password)
    if user is None:
        login_throttle.record_failure(username, address, limits)
        session().commit()
        LOG.warning("login refused for %s: wrong username or password", who)
        raise ApiError(401, "wrong username or password")
    login_throttle.forget_failures(username, address)
    return user


@health_blp.route("/health")
class Health(MethodView):
    @health_blp.response(200, HealthSchema)
    @public
    def get(self):
        """Liveness: the process answers and the database is reachable."""
        session().execute(text("SELECT 1"))
        return {"status": "ok"}
