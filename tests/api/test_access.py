"""Who may call what: every route declares its access, roles follow the declaration (not the HTTP
method), and a cookie sent by another site changes nothing."""
from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest
from flask.views import MethodView
from service import CLI, call, service_env, start_service
from sqlalchemy import create_engine, func, select, text

from api_helpers import ADMIN, assert_error
from gpuaas_api import access, users
from gpuaas_api.access import Access, Role
from gpuaas_api.db import session
from gpuaas_api.models import Job, Region

# The guide's GETs that change the fleet: a declaration that turned any of them into a read would let
# a viewer (and a cross-site link) start it.
STATE_CHANGING_GETS = {
    "/api/gpuaas/node/init", "/api/gpuaas/node/deinit", "/api/gpuaas/node/test_conn", "/api/gpuaas/node/scan_gpus",
    "/api/gpuaas/node/scan_npus", "/api/gpuaas/node/<id:node_id>/storage_metrics", "/api/gpuaas/node/<id:node_id>/delete",
    "/api/gpuaas/pool/<id:pool_id>/remove_gpus",
}


def routes(app):
    """Every (rule, method, declared access) the app serves (OPTIONS and HEAD are Flask's own)."""
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"OPTIONS", "HEAD"}):
            yield rule, method, access.route_access(app, rule.endpoint, method)


def concrete(rule) -> str:
    """A URL for ``rule``: every id 1 (the check comes before anything looks it up)."""
    return re.sub(r"<[^>]+>", "1", rule.rule)


def token_for(app, role: Role, name: str | None = None) -> str:
    with app.app_context():
        user = users.create_user(name or f"a-{role.value}", "a password of theirs", role)
        return users.create_token(user, "test", None, None)[1]


def as_user(app, token: str):
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def test_every_route_declares_its_access(app):
    undeclared = [f"{method} {rule.rule}" for rule, method, declared in routes(app) if declared is None]
    assert not undeclared, f"routes without an access declaration (access.py): {undeclared}"
    assert len(list(routes(app))) > 50  # the walk saw the whole API, not an empty map


def test_the_guides_state_changing_gets_are_declared_changes(app):
    declared = {rule.rule: found for rule, method, found in routes(app) if method == "GET"}
    assert STATE_CHANGING_GETS <= set(declared)
    assert {path: declared[path] for path in STATE_CHANGING_GETS} == {path: Access.CHANGE for path in STATE_CHANGING_GETS}


def test_a_route_that_declares_nothing_is_refused_to_everyone(app, client):
    class Undeclared(MethodView):
        def get(self):
            return "reached"

    app.add_url_rule("/api/undeclared", view_func=Undeclared.as_view("undeclared"))
    reply = assert_error(client.get("/api/undeclared"), 403)
    assert "declares no access" in reply["message"]


def test_a_viewer_is_refused_every_state_changing_route_and_changes_nothing(app, client):
    viewer = as_user(app, token_for(app, Role.VIEWER))
    changing = [(rule, method, declared) for rule, method, declared in routes(app)
                if declared in (Access.CHANGE, Access.ADMINISTER)]
    with app.app_context():
        before = session().scalar(select(func.count()).select_from(Job))

    statuses = {f"{method} {rule.rule}": viewer.open(concrete(rule) + "?gpuaas_node_id=1", method=method, json={}).status_code
                for rule, method, _declared in changing}

    assert len(changing) >= 35
    assert {route: status for route, status in statuses.items() if status != 403} == {}
    with app.app_context():
        assert session().scalar(select(func.count()).select_from(Job)) == before
    # The control: the same requests with an admin's token reach the routes (404, 422, …), so the 403s
    # above are the viewer's, not the requests'.
    assert [f"{method} {rule.rule}" for rule, method, _declared in changing
            if client.open(concrete(rule) + "?gpuaas_node_id=1", method=method, json={}).status_code == 403] == []


def test_a_viewer_reads_everything(app, client, region):
    viewer = as_user(app, token_for(app, Role.VIEWER))
    reads = [(rule, method) for rule, method, declared in routes(app) if declared is Access.READ]
    refused = [f"{method} {rule.rule}" for rule, method in reads
               if viewer.open(concrete(rule), method=method).status_code in (401, 403)]
    assert reads and refused == []
    assert viewer.get("/api/regions").get_json()[0]["region_name"] == region["region_name"]


def test_an_operator_changes_the_fleet_but_not_users_or_tokens(app):
    operator = as_user(app, token_for(app, Role.OPERATOR))
    administering = [(rule, method) for rule, method, declared in routes(app)
                     if declared in (Access.ADMINISTER, Access.ADMIN_READ)]

    created = operator.post("/api/regions", json={"region_name": "by-operator"})

    assert created.status_code == 201
    assert len(administering) >= 8
    assert [f"{method} {rule.rule}" for rule, method in administering
            if operator.open(concrete(rule), method=method, json={}).status_code != 403] == []


def test_a_token_narrowed_to_viewer_reads_but_does_not_change(app):
    with app.app_context():
        admin = users.find_user(ADMIN["username"])
        narrowed = users.create_token(admin, "read-only automation", Role.VIEWER, None)[1]
    client = as_user(app, narrowed)
    assert client.get("/api/regions").status_code == 200
    assert_error(client.post("/api/regions", json={"region_name": "narrowed"}), 403)


# --------------------------------------------------------------------------- cross-site requests
@pytest.fixture
def node_id(client, region) -> int:
    body = {"name": "Rack 4 · GPU box", "region_id": region["id"], "node_ip": "198.18.0.12", "username": "root",
            "is_worker_node": True}
    return client.post("/gpuaas/node/add", json=body).get_json()["id"]


def jobs(app) -> int:
    with app.app_context():
        return session().scalar(select(func.count()).select_from(Job))


def cookie_client(app, token):
    """hosted·ai's client: `Cookie: token=…`, no fetch metadata."""
    return app.test_client(use_cookies=False), {"Cookie": f"token={token}"}


def test_a_cookie_request_without_fetch_headers_starts_the_job(app, token, node_id):
    client, headers = cookie_client(app, token)
    reply = client.get(f"/gpuaas/node/init?gpuaas_node_id={node_id}", headers=headers)
    assert reply.status_code == 200, reply.get_json()
    assert jobs(app) == 1


@pytest.mark.parametrize("site", ["cross-site", "same-site", "Cross-Site"])
def test_a_cookie_sent_from_another_site_starts_nothing(app, token, node_id, site):
    client, headers = cookie_client(app, token)
    init = client.get(f"/gpuaas/node/init?gpuaas_node_id={node_id}", headers={**headers, "Sec-Fetch-Site": site})
    delete = client.get(f"/gpuaas/node/{node_id}/delete", headers={**headers, "Sec-Fetch-Site": site})

    assert "cross-site" in assert_error(init, 403)["message"]
    assert_error(delete, 403)
    assert jobs(app) == 0
    assert client.get(f"/gpuaas/node/{node_id}", headers={**headers, "Sec-Fetch-Site": site}).status_code == 200


@pytest.mark.parametrize("site", ["same-origin", "none"])
def test_the_services_own_pages_and_typed_urls_pass(app, token, node_id, site):
    client, headers = cookie_client(app, token)
    reply = client.get(f"/gpuaas/node/init?gpuaas_node_id={node_id}", headers={**headers, "Sec-Fetch-Site": site})
    assert reply.status_code == 200, reply.get_json()
    assert jobs(app) == 1


def test_without_fetch_metadata_the_origin_must_be_the_service(app, token):
    client, headers = cookie_client(app, token)
    foreign = client.post("/api/regions", json={"region_name": "evil"},
                          headers={**headers, "Origin": "https://evil.example"})
    opaque = client.post("/api/regions", json={"region_name": "sandboxed"}, headers={**headers, "Origin": "null"})
    own = client.post("/api/regions", json={"region_name": "own"}, headers={**headers, "Origin": "http://localhost"})

    assert_error(foreign, 403)
    assert_error(opaque, 403)
    assert own.status_code == 201
    with app.app_context():
        assert session().scalars(select(Region.region_name)).all() == ["own"]


def test_a_bearer_token_is_not_a_browser_credential(app, token, node_id):
    # A page on another site can't set an Authorization header on a navigation or a simple request.
    reply = app.test_client().get(f"/gpuaas/node/init?gpuaas_node_id={node_id}",
                                  headers={"Authorization": f"Bearer {token}", "Sec-Fetch-Site": "cross-site"})
    assert reply.status_code == 200


def test_the_login_cookie_is_strict(anonymous):
    cookie = anonymous.post("/api/login", json=ADMIN).headers["Set-Cookie"]
    assert "SameSite=Strict" in cookie and "HttpOnly" in cookie


def _get(base: str, path: str, headers: dict) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_on_a_real_server_hosted_ais_cookie_starts_a_job_and_a_cross_site_one_does_not(tmp_path, database_url):
    env = service_env(tmp_path / "var", database_url, GPUAAS_ADMIN_USER="admin", GPUAAS_ADMIN_PASSWORD="pw of admin",
                      GPUAAS_JOB_WORKERS="0")
    service = start_service([str(CLI), "serve", "--workers", "1"], env, tmp_path / "serve.log")
    try:
        token = call(service.base, "POST", "/api/login", {"username": "admin", "password": "pw of admin"})[1]["token"]
        region = call(service.base, "POST", "/api/regions", {"region_name": "real"}, token=token)[1]
        node = call(service.base, "POST", "/api/gpuaas/node/add", {
            "name": "GPU box 1", "region_id": region["id"], "node_ip": "198.18.0.12", "username": "root",
            "is_worker_node": True}, token=token)[1]
        init = f"/gpuaas/node/init?gpuaas_node_id={node['id']}"
        cookie = {"Cookie": f"token={token}"}

        refused = [_get(service.base, init, {**cookie, "Sec-Fetch-Site": site}) for site in ("cross-site", "same-site")]
        jobs_after_refusals = _job_rows(database_url)
        started = _get(service.base, init, cookie)
    finally:
        service.stop()

    assert refused == [403, 403]
    assert jobs_after_refusals == 0
    assert started == 200 and _job_rows(database_url) == 1


def _job_rows(database_url: str) -> int:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM jobs")).scalar()
    engine.dispose()
    return count


def test_refusals_are_logged_without_the_token_they_carried(app, token, node_id, caplog):
    client, headers = cookie_client(app, token)
    forged = "forged-" + "z" * 40
    with caplog.at_level("WARNING", logger="gpuaas_api.auth"):
        client.get(f"/gpuaas/node/init?gpuaas_node_id={node_id}", headers={**headers, "Sec-Fetch-Site": "cross-site"})
        app.test_client().get("/api/regions", headers={"Authorization": f"Bearer {forged}"})

    logged = [record.getMessage() for record in caplog.records if record.name == "gpuaas_api.auth"]
    assert len(logged) == 2, logged
    assert "cross-site" in logged[0] and "/api/gpuaas/node/init" in logged[0]
    assert "not valid" in logged[1]
    assert not any(token in line or forged in line for line in logged)


def test_the_openapi_document_says_which_role_each_operation_needs(anonymous):
    paths = anonymous.get("/api/openapi.json").get_json()["paths"]
    roles = {(path, method): (operation.get("x-required-role"), operation.get("x-changes-state"))
             for path, operations in paths.items() for method, operation in operations.items() if method != "parameters"}

    assert roles[("/api/gpuaas/node/init", "get")] == ("operator", True)
    assert roles[("/api/gpuaas/node/{node_id}", "get")] == ("viewer", False)
    assert roles[("/api/users", "get")] == ("admin", False)
    assert roles[("/api/users", "post")] == ("admin", True)
    assert roles[("/api/logout", "post")] == ("viewer", True)
    assert roles[("/api/login", "post")] == (None, None)
    unpublished = [key for key, (role, _changes) in roles.items() if role is None and key != ("/api/login", "post")
                   and key[0] not in ("/api/health",)]
    assert unpublished == []
