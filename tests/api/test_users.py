"""Users and tokens through the API: create, list, change a role, revoke; logout; the last admin."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from api_helpers import ADMIN, assert_error
from gpuaas_api import credentials
from gpuaas_api.db import session
from gpuaas_api.models import ApiToken

CLI = Path(sys.executable).parent / "gpuaas-api"


def bearer(app, token):
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def new_user(client, name="dana", role="operator"):
    reply = client.post("/api/users", json={"username": name, "password": f"pw of {name}", "role": role})
    assert reply.status_code == 201, reply.get_json()
    return reply.get_json()


def login(app, name):
    reply = app.test_client().post("/api/login", json={"username": name, "password": f"pw of {name}"})
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def test_an_admin_creates_users_who_log_in_with_their_role(app, client):
    created = new_user(client, "dana", "operator")
    logged_in = login(app, "dana")

    assert {key: created[key] for key in ("username", "role", "is_super_admin")} == \
        {"username": "dana", "role": "operator", "is_super_admin": False}
    assert (logged_in["role"], logged_in["is_super_admin"]) == ("operator", False)
    assert [user["username"] for user in client.get("/api/users").get_json()] == ["admin", "dana"]
    assert "password" not in created and "password_hash" not in created


def test_a_new_user_needs_a_known_role_and_a_free_name(client):
    assert_error(client.post("/api/users", json={"username": "eve", "password": "x"}), 422, field="role")
    assert_error(client.post("/api/users", json={"username": "eve", "password": "x", "role": "root"}), 422, field="role")
    assert_error(client.post("/api/users", json={"username": "-eve", "password": "x", "role": "viewer"}), 422,
                 field="username")
    new_user(client, "eve", "viewer")
    assert_error(client.post("/api/users", json={"username": "eve", "password": "y", "role": "viewer"}), 409)


def test_a_role_change_takes_effect_on_the_users_tokens_at_once(app, client):
    dana = new_user(client, "dana", "operator")
    dana_client = bearer(app, login(app, "dana")["token"])
    assert dana_client.post("/api/regions", json={"region_name": "before"}).status_code == 201

    changed = client.patch(f"/api/users/{dana['id']}", json={"role": "viewer"})

    assert changed.get_json()["role"] == "viewer"
    assert_error(dana_client.post("/api/regions", json={"region_name": "after"}), 403)
    assert dana_client.get("/api/regions").status_code == 200


def test_is_super_admin_follows_the_role(app, client):
    dana = new_user(client, "dana", "viewer")
    promoted = client.patch(f"/api/users/{dana['id']}", json={"role": "admin"}).get_json()
    demoted = client.patch(f"/api/users/{dana['id']}", json={"role": "operator"}).get_json()
    assert (promoted["is_super_admin"], demoted["is_super_admin"]) == (True, False)


def test_the_last_admin_can_be_neither_demoted_nor_deleted(app, client):
    admin_id = client.get("/api/users").get_json()[0]["id"]

    assert "last admin" in assert_error(client.patch(f"/api/users/{admin_id}", json={"role": "operator"}), 409)["message"]
    assert_error(client.delete(f"/api/users/{admin_id}"), 409)
    # With a second admin, the first may go.
    other = new_user(client, "second-admin", "admin")
    assert client.patch(f"/api/users/{admin_id}", json={"role": "viewer"}).status_code == 200
    assert "last admin" in assert_error(bearer(app, login(app, "second-admin")["token"])
                                        .delete(f"/api/users/{other['id']}"), 409)["message"]


def test_tokens_are_issued_listed_and_revoked(app, client):
    new_user(client, "ci-bot", "operator")
    issued = client.post("/api/tokens", json={"username": "ci-bot", "description": "CI", "role": "viewer", "expires_in_days": 30})
    body = issued.get_json()
    bot = bearer(app, body["token"])

    assert issued.status_code == 201
    assert (body["username"], body["role"], body["description"]) == ("ci-bot", "viewer", "CI")
    expires = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(days=29) < expires.replace(tzinfo=expires.tzinfo or dt.timezone.utc) - \
        dt.datetime.now(dt.timezone.utc) <= dt.timedelta(days=30)
    assert bot.get("/api/regions").status_code == 200
    assert_error(bot.post("/api/regions", json={"region_name": "bot"}), 403)  # narrowed to viewer
    listed = client.get(f"/api/tokens?user_id={body['user_id']}").get_json()
    assert [token["id"] for token in listed] == [body["id"]] and "token" not in listed[0]

    assert client.delete(f"/api/tokens/{body['id']}").status_code == 204
    assert_error(bot.get("/api/regions"), 401)
    assert_error(client.delete(f"/api/tokens/{body['id']}"), 404)


def test_a_token_never_does_more_than_its_user(client):
    new_user(client, "viewer-1", "viewer")
    # 409: the request is well formed, the user's present role refuses it (schemathesis's contract
    # run counts a 422 to a schema-valid request as a broken contract).
    assert_error(client.post("/api/tokens", json={"username": "viewer-1", "role": "operator"}), 409, field="role")
    assert_error(client.post("/api/tokens", json={"username": "nobody"}), 404)


def test_api_tokens_expire_after_the_configured_days_and_0_is_never(app, client):
    new_user(client, "ci-bot", "operator")
    default = client.post("/api/tokens", json={"username": "ci-bot"}).get_json()
    forever = client.post("/api/tokens", json={"username": "ci-bot", "expires_in_days": 0}).get_json()
    expires = dt.datetime.fromisoformat(default["expires_at"])
    remaining = expires.replace(tzinfo=expires.tzinfo or dt.timezone.utc) - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=364) < remaining <= dt.timedelta(days=365)
    assert forever["expires_at"] is None


def test_logout_ends_the_sessions_token_and_only_it(app, client):
    new_user(client, "dana", "viewer")
    browser = app.test_client()
    ended = browser.post("/api/login", json={"username": "dana", "password": "pw of dana"}).get_json()["token"]
    other_session = bearer(app, login(app, "dana")["token"])

    out = browser.post("/api/logout")

    assert out.status_code == 204  # a viewer may end its own session
    assert "token=;" in out.headers["Set-Cookie"]
    assert_error(browser.get("/api/regions"), 401)
    assert_error(app.test_client(use_cookies=False).get("/api/regions", headers={"Cookie": f"token={ended}"}), 401)
    assert other_session.get("/api/regions").status_code == 200


def test_a_revoked_token_stops_working_on_other_hosts_within_the_cache_time(app, client, monkeypatch):
    new_user(client, "dana", "operator")
    token = login(app, "dana")["token"]
    dana = bearer(app, token)
    assert dana.get("/api/regions").status_code == 200  # cached now
    with app.app_context():  # another host revokes it: this process's cache is not told
        session().delete(session().scalar(select(ApiToken).where(ApiToken.token_hash == credentials.hash_token(token))))
        session().commit()
    assert dana.get("/api/regions").status_code == 200
    clock = credentials.time.monotonic() + credentials.TOKEN_CACHE_SECONDS + 1
    monkeypatch.setattr(credentials.time, "monotonic", lambda: clock)
    assert_error(dana.get("/api/regions"), 401)


def test_users_and_tokens_are_admins_only(app, client):
    new_user(client, "op", "operator")
    operator = bearer(app, login(app, "op")["token"])
    for method, path in (("GET", "/api/users"), ("POST", "/api/users"), ("GET", "/api/tokens"), ("POST", "/api/tokens"),
                         ("PATCH", "/api/users/1"), ("DELETE", "/api/users/1"), ("DELETE", "/api/tokens/1")):
        assert_error(operator.open(path, method=method, json={}), 403)
    assert client.get("/api/users").status_code == 200


def test_the_first_admin_is_an_admin(anonymous):
    reply = anonymous.post("/api/login", json=ADMIN).get_json()
    assert (reply["role"], reply["is_super_admin"]) == ("admin", True)


def test_the_cli_manages_users_and_tokens_and_keeps_an_admin(tmp_path):
    env = dict(os.environ, GPUAAS_DATA_DIR=str(tmp_path / "var"))
    env.pop("GPUAAS_DATABASE_URL", None)

    def cli(*arguments):
        return subprocess.run([str(CLI), *arguments], env=env, capture_output=True, text=True, check=False)

    created = [cli("users", "create", "--user", name, "--role", role, "--password", f"pw of {name}")
               for name, role in (("root-admin", "admin"), ("ops", "operator"))]
    last_admin = cli("users", "set-role", "--user", "root-admin", "--role", "viewer")
    demoted = cli("users", "set-role", "--user", "ops", "--role", "viewer")
    listed = cli("users", "list").stdout.splitlines()
    token = cli("create-token", "--user", "ops").stdout.strip()
    token_id = cli("tokens", "list", "--user", "ops").stdout.split("\t")[0]
    revoked = cli("tokens", "revoke", token_id)
    after = cli("tokens", "list").stdout
    deleted = cli("users", "delete", "--user", "ops")
    unknown = cli("users", "delete", "--user", "nobody")

    assert [result.returncode for result in created] == [0, 0]
    assert last_admin.returncode == 1 and "last admin" in last_admin.stderr
    assert demoted.returncode == 0
    assert [line.split("\t")[1:] for line in listed] == [["root-admin", "admin"], ["ops", "viewer"]]
    assert len(token) >= 40 and revoked.returncode == 0 and after == ""
    assert deleted.returncode == 0 and cli("users", "list").stdout.count("\n") == 1
    assert unknown.returncode == 1 and "no user 'nobody'" in unknown.stderr
