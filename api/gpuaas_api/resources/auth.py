from __future__ import annotations

from flask import current_app, jsonify, make_response
from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import text

from ..access import public
from ..auth import COOKIE_NAME, LOGIN_TOKEN, check_login, issue_token
from ..db import session
from ..schemas import HealthSchema, LoginReplySchema, LoginSchema

blp = Blueprint("auth", __name__, description="Log in: a token, and the same token as a session cookie")
health_blp = Blueprint("health", __name__, description="Liveness")

PAGE_ACCESS = ["regions", "gpuaas", "nodes", "pools"]


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema)
    @blp.response(200, LoginReplySchema)
    @public
    def post(self, credentials):
        """Exchange a username and password for a token (also set as the `token` cookie)."""
        user = check_login(credentials["username"], credentials["password"])
        config = current_app.config["GPUAAS"]
        token = issue_token(user, config.TOKEN_TTL_HOURS, LOGIN_TOKEN)
        session().commit()
        reply = LoginReplySchema().dump({
            "id": user.id, "username": user.username, "email": user.email, "role": user.role,
            "is_super_admin": user.is_super_admin, "token": token, "page_access": PAGE_ACCESS})
        response = make_response(jsonify(reply))
        response.set_cookie(COOKIE_NAME, token, httponly=True, samesite="Strict", secure=config.SESSION_COOKIE_SECURE,
                            max_age=config.TOKEN_TTL_HOURS * 3600)
        return response


@health_blp.route("/health")
class Health(MethodView):
    @health_blp.response(200, HealthSchema)
    @public
    def get(self):
        """Liveness: the process answers and the database is reachable."""
        session().execute(text("SELECT 1"))
        return {"status": "ok"}
