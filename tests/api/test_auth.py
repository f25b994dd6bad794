from __future__ import annotations

from api_helpers import ADMIN, assert_error


def test_login_returns_token_user_and_cookie(anonymous):
    response = anonymous.post("/api/login", json=ADMIN)

    body = response.get_json()
    assert response.status_code == 200
    assert {"id", "username", "email", "role", "is_super_admin", "token", "page_access"} <= set(body)
    assert body["username"] == "admin"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"token={body['token']};") and "HttpOnly" in cookie


def test_wrong_password_is_401_in_the_error_shape(anonymous):
    assert_error(anonymous.post("/api/login", json={"username": "admin", "password": "nope"}), 401)
    assert_error(anonymous.post("/api/login", json={"username": "ghost", "password": "nope"}), 401)


def test_login_without_password_is_a_field_error(anonymous):
    assert_error(anonymous.post("/api/login", json={"username": "admin"}), 422, field="password")


def test_every_route_needs_credentials(anonymous):
    for path in ("/api/regions", "/gpuaas/node/list", "/api/gpuaas/node/1", "/gpuaas/list/regions"):
        assert_error(anonymous.get(path), 401)


def test_bearer_cookie_and_cookie_header_are_accepted(app, token):
    bearer = app.test_client().get("/api/regions", headers={"Authorization": f"Bearer {token}"})
    cookie_header = app.test_client(use_cookies=False).get("/api/regions", headers={"Cookie": f"token={token}"})
    session = app.test_client()
    session.post("/api/login", json=ADMIN)  # keeps the cookie it is given

    assert bearer.status_code == 200
    assert cookie_header.status_code == 200
    assert session.get("/api/regions").status_code == 200


def test_wrong_token_is_refused(app):
    assert_error(app.test_client().get("/api/regions", headers={"Authorization": "Bearer forged"}), 401)


def test_tokens_are_stored_hashed(app, token):
    from sqlalchemy import select

    from gpuaas_api.db import session
    from gpuaas_api.models import ApiToken, User

    with app.app_context():
        stored = session().scalars(select(ApiToken.token_hash)).all()
        password_hash = session().scalar(select(User.password_hash))
    assert token not in stored
    assert len(stored) == 1 and len(stored[0]) == 64
    assert password_hash.startswith("scrypt:") and ADMIN["password"] not in password_hash


def test_health_and_openapi_are_public(anonymous):
    assert anonymous.get("/api/health").get_json() == {"status": "ok"}
    spec = anonymous.get("/api/openapi.json").get_json()
    assert "/api/gpuaas/node/add" in spec["paths"]
    assert anonymous.get("/api/docs").status_code == 200
