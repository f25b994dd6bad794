"""The audit trail (issue #29): every request that changes state, and every login, is recorded with its
actor, address, object and result; every job records its actor; GET /api/audit reads the trail."""
from __future__ import annotations

import datetime as dt
import logging
import time

import pytest
from sqlalchemy import delete, func, select, text, update

from api_helpers import ADMIN, assert_error, create
from gpuaas_api import actor, audit, users
from gpuaas_api.access import Role
from gpuaas_api.credentials import hash_token
from gpuaas_api.config import Config
from gpuaas_api.db import session
from gpuaas_api.jobs.housekeeper import Housekeeper
from gpuaas_api.metrics.collector import submit_collection
from gpuaas_api.models import ApiToken, AuditEvent, Job, User

CLIENT_ADDRESS = "198.51.100.7"


def trail(client, query: str = "") -> dict:
    reply = client.get(f"/api/audit?{query}")
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def records(app) -> int:
    with app.app_context():
        return session().scalar(select(func.count()).select_from(AuditEvent))


def as_user(app, role: Role, name: str):
    """A client with a new user's token: the client, and the user's and token's ids."""
    with app.app_context():
        user = users.create_user(name, "a password of theirs", role)
        row, token = users.create_token(user, "test", None, None)
        ids = user.id, row.id
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client, ids


def admin_ids(app, token) -> tuple[int, int]:
    with app.app_context():
        return (session().scalar(select(User.id).where(User.username == ADMIN["username"])),
                session().scalar(select(ApiToken.id).where(ApiToken.token_hash == hash_token(token))))


@pytest.fixture(autouse=True)
def empty_trail(app):
    """The template database holds the record of the login that issued the tests' token: start without it."""
    with app.app_context():
        session().execute(delete(AuditEvent))
        session().commit()


@pytest.fixture
def node_id(client, region) -> int:
    body = {"name": "gpu-box-1", "region_id": region["id"], "node_ip": "198.18.0.12", "username": "root",
            "is_worker_node": True}
    return client.post("/gpuaas/node/add", json=body).get_json()["id"]


# --------------------------------------------------------------------------- what is recorded
def test_a_change_is_recorded_once_with_its_actor_address_object_and_status(app, client, token):
    client.environ_base["REMOTE_ADDR"] = CLIENT_ADDRESS
    created = client.post("/api/regions", json={"region_name": "eu-1"})
    assert created.status_code == 201
    admin_id, token_id = admin_ids(app, token)

    items = trail(client)["items"]

    assert len(items) == 1
    record = items[0]
    assert {key: value for key, value in record.items() if key not in ("id", "at")} == {
        "actor": "admin", "actor_id": admin_id, "token_id": token_id, "address": CLIENT_ADDRESS, "method": "POST",
        "path": "/api/regions", "action": "POST regions.Regions", "object_type": "region",
        "object_id": str(created.get_json()["id"]), "status": 201, "job_id": None}
    at = dt.datetime.fromisoformat(record["at"])
    assert abs((dt.datetime.now(dt.timezone.utc) - at).total_seconds()) < 60


def test_a_guide_get_that_changes_the_fleet_is_recorded_and_so_is_a_failure(app, client, node_id):
    before = records(app)
    deleted = client.get(f"/gpuaas/node/{node_id}/delete")  # the guide's path, without /api
    again = client.get(f"/gpuaas/node/{node_id}/delete")

    assert deleted.status_code == 200 and again.status_code == 404
    assert records(app) == before + 2
    newest, older = trail(client, "per_page=2")["items"]
    assert (older["action"], older["path"], older["object_type"], older["object_id"], older["status"]) == \
        ("GET nodes.NodeDelete", f"/api/gpuaas/node/{node_id}/delete", "node", str(node_id), 200)
    assert (newest["object_id"], newest["status"]) == (str(node_id), 404)


def test_reads_are_not_recorded(app, client, region, node_id):
    before = records(app)
    for path in ("/api/regions", f"/api/regions/{region['id']}", "/gpuaas/node/list", f"/gpuaas/node/{node_id}",
                 "/api/audit", "/api/health"):
        assert client.get(path).status_code == 200, path
    assert records(app) == before == 2  # the region's and the node's creations


def test_refused_authentication_goes_to_the_log_only(app, anonymous, caplog):
    caplog.set_level(logging.WARNING, logger="gpuaas_api.auth")
    no_token = anonymous.post("/api/regions", json={"region_name": "x-1"})
    bad_token = anonymous.post("/api/regions", json={"region_name": "x-2"}, headers={"Authorization": "Bearer nope"})
    wrong_password = anonymous.post("/api/login", json={**ADMIN, "password": "not it"})

    assert [no_token.status_code, bad_token.status_code, wrong_password.status_code] == [401, 401, 401]
    assert records(app) == 0
    assert sum("refused POST /api/regions" in message for message in caplog.messages) == 2


def test_a_cross_site_cookie_request_is_logged_not_recorded(app, token, node_id):
    before = records(app)
    browser = app.test_client(use_cookies=False)
    reply = browser.get(f"/gpuaas/node/init?gpuaas_node_id={node_id}",
                        headers={"Cookie": f"token={token}", "Sec-Fetch-Site": "cross-site"})
    same_site = browser.get(f"/gpuaas/node/init?gpuaas_node_id={node_id}",
                            headers={"Cookie": f"token={token}", "Sec-Fetch-Site": "same-origin"})

    assert_error(reply, 403)
    assert same_site.status_code == 200
    assert records(app) == before + 1  # the same-site one: the user's own


def test_a_role_refusal_is_recorded_with_its_403(app, client):
    viewer, (viewer_id, _token_id) = as_user(app, Role.VIEWER, "vera")

    assert_error(viewer.post("/api/regions", json={"region_name": "by-viewer"}), 403)

    (record,) = trail(client)["items"]
    assert (record["actor"], record["actor_id"], record["action"], record["status"]) == \
        ("vera", viewer_id, "POST regions.Regions", 403)
    assert trail(viewer)["total"] == 1  # a viewer reads the trail too (viewers read everything)


def test_a_login_is_recorded_with_the_token_it_issued(app, anonymous):
    logged_in = anonymous.post("/api/login", json=ADMIN)
    assert logged_in.status_code == 200
    admin_id, token_id = admin_ids(app, logged_in.get_json()["token"])

    with app.app_context():
        record = session().scalars(select(AuditEvent)).one()
        assert (record.actor, record.actor_id, record.token_id, record.action, record.status) == \
            ("admin", admin_id, token_id, "POST auth.Login", 200)
        assert (record.object_type, record.object_id) == ("token", str(token_id))


def test_user_and_token_administration_and_logout_are_recorded(app, client):
    created = client.post("/api/users", json={"username": "olga", "password": "her password", "role": "operator"})
    operator, (_user_id, token_id) = as_user(app, Role.OPERATOR, "omar")
    assert operator.post("/api/logout").status_code == 204

    actions = [(item["actor"], item["action"], item["object_type"], item["object_id"], item["status"])
               for item in reversed(trail(client)["items"])]
    assert actions == [("admin", "POST users.Users", "user", str(created.get_json()["id"]), 201),
                       ("omar", "POST users.Logout", None, None, 204)]
    assert trail(client, "actor=omar")["items"][0]["token_id"] == token_id


def test_a_record_that_cannot_be_written_is_logged_and_the_reply_stands(app, client, caplog):
    with app.app_context():
        session().execute(text("DROP TABLE audit_events"))
        session().commit()

    created = client.post("/api/regions", json={"region_name": "eu-2"})

    assert created.status_code == 201
    assert client.get(f"/api/regions/{created.get_json()['id']}").status_code == 200
    assert any("audit record of POST /api/regions" in record.getMessage() for record in caplog.records)


# --------------------------------------------------------------------------- jobs' actors
def test_a_requests_job_carries_its_actor_and_the_record_names_the_job(app, client, node_id):
    operator, (operator_id, _token_id) = as_user(app, Role.OPERATOR, "otto")

    started = operator.get(f"/gpuaas/node/init?gpuaas_node_id={node_id}")

    assert started.status_code == 200, started.get_json()
    job_id = started.get_json()["job_id"]
    assert client.get(f"/api/jobs/{job_id}").get_json()["actor"] == "otto"
    with app.app_context():
        assert session().get(Job, job_id).actor_id == operator_id
    (record,) = trail(client, "actor=otto")["items"]
    assert (record["job_id"], record["object_type"], record["object_id"]) == (job_id, "node", str(node_id))


def test_pool_changes_and_queued_ones_carry_their_actor(app, client, fleet_db):
    pool = create(client, fleet_db).get_json()
    queued = client.post(f"/gpuaas/pool/{pool['id']}/add_gpus", json={"gpu_uuids": ["GPU-w1-1"]}).get_json()
    assert queued["queued_behind"] == pool["job_id"]

    with app.app_context():
        assert [session().get(Job, job_id).actor for job_id in (pool["job_id"], queued["job_id"])] == ["admin", "admin"]
    newest, older = trail(client, "object_type=pool")["items"]
    assert (older["action"], older["object_id"], older["job_id"]) == ("POST pools.PoolCreate", str(pool["id"]), pool["job_id"])
    assert (newest["object_id"], newest["job_id"]) == (str(pool["id"]), queued["job_id"])


def test_a_metrics_collection_job_has_no_actor_and_no_record(app, client, storage_node):
    client.get("/api/regions")  # a request first: whatever it set for its jobs ended with it
    before = records(app)
    with app.app_context():
        job = submit_collection()
        assert job is not None and (job.actor_id, job.actor) == (None, None)
    assert client.get(f"/api/jobs/{job.id}").get_json()["actor"] is None
    assert records(app) == before
    assert actor.current() is None


# --------------------------------------------------------------------------- reading the trail
@pytest.fixture
def dated_trail(app, client):
    """Five records an hour apart from 2026-01-01T00:00Z: admin creates regions a, b, c and deletes a,
    then an operator creates d. Returns the regions' ids by name."""
    operator, _ids = as_user(app, Role.OPERATOR, "opal")
    ids = {name: client.post("/api/regions", json={"region_name": name}).get_json()["id"] for name in "abc"}
    assert client.delete(f"/api/regions/{ids['a']}").status_code == 204
    ids["d"] = operator.post("/api/regions", json={"region_name": "d"}).get_json()["id"]
    with app.app_context():
        db = session()
        start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        for hour, record_id in enumerate(db.scalars(select(AuditEvent.id).order_by(AuditEvent.id)).all()):
            db.execute(update(AuditEvent).where(AuditEvent.id == record_id).values(at=start + dt.timedelta(hours=hour)))
        db.commit()
    return ids


def summary(page: dict) -> list[tuple]:
    return [(item["actor"], item["method"], item["object_id"]) for item in page["items"]]


def test_the_trail_is_newest_first_and_filtered_by_actor_object_and_time(client, dated_trail):
    ids = {name: str(region_id) for name, region_id in dated_trail.items()}

    assert summary(trail(client)) == [("opal", "POST", ids["d"]), ("admin", "DELETE", ids["a"]),
                                      ("admin", "POST", ids["c"]), ("admin", "POST", ids["b"]),
                                      ("admin", "POST", ids["a"])]
    assert summary(trail(client, "actor=opal")) == [("opal", "POST", ids["d"])]
    assert summary(trail(client, "actor=nobody")) == []
    region_a = summary(trail(client, f"object_type=region&object_id={ids['a']}"))
    assert region_a == [("admin", "DELETE", ids["a"]), ("admin", "POST", ids["a"])]
    assert trail(client, f"object_type=node&object_id={ids['a']}")["total"] == 0
    # since is inclusive, until exclusive; an offset is honoured (01:00+02:00 is 23:00Z the day before)
    window = trail(client, "since=2026-01-01T01:00:00Z&until=2026-01-01T03:00:00Z")
    assert summary(window) == [("admin", "POST", ids["c"]), ("admin", "POST", ids["b"])]
    assert trail(client, "until=2026-01-01T01:00:00%2B02:00")["total"] == 0
    assert summary(trail(client, "since=2026-01-01T05:00:00%2B02:00")) == [("opal", "POST", ids["d"]),
                                                                           ("admin", "DELETE", ids["a"])]


def test_the_trail_is_paged_with_its_total(client, dated_trail):
    whole = trail(client)["items"]
    pages = [trail(client, f"per_page=2&page={page}") for page in (1, 2, 3, 4)]

    assert [len(page["items"]) for page in pages] == [2, 2, 1, 0]
    assert {(page["total"], page["per_page"]) for page in pages} == {(5, 2)}
    assert [page["page"] for page in pages] == [1, 2, 3, 4]
    assert [item for page in pages for item in page["items"]] == whole


@pytest.mark.parametrize("query, field", [("per_page=0", "per_page"), ("per_page=501", "per_page"), ("page=0", "page"),
                                          ("object_type=planet", "object_type"), ("object_id=0", "object_id"),
                                          ("since=yesterday", "since"), ("actor=", "actor"), ("actor=%01", "actor")])
def test_a_malformed_query_is_refused(client, query, field):
    assert_error(client.get(f"/api/audit?{query}"), 422, field)


def test_the_trail_needs_a_token(anonymous):
    assert_error(anonymous.get("/api/audit"), 401)


# --------------------------------------------------------------------------- retention
def add_records(app, ages_in_days: list[float]) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    with app.app_context():
        session().add_all([AuditEvent(at=now - dt.timedelta(days=age), actor="admin", address="127.0.0.1", method="POST",
                                      path="/api/regions", action="POST regions.Regions", status=201)
                           for age in ages_in_days])
        session().commit()


def ages(app) -> list[int]:
    now = dt.datetime.now(dt.timezone.utc)
    with app.app_context():
        stamps = session().scalars(select(AuditEvent.at).order_by(AuditEvent.at)).all()
    return sorted(round((now - stamp.replace(tzinfo=dt.timezone.utc)).total_seconds() / 86400) for stamp in stamps)


def test_retention_deletes_the_old_records_and_keeps_the_rest(app):
    add_records(app, [400, 366, 364, 10])
    with app.app_context():
        assert audit.prune(365) == 2
        assert audit.prune(365) == 0
        assert audit.prune(0) == 0  # 0 keeps everything
    assert ages(app) == [10, 364]


def test_the_housekeeper_prunes_the_trail(app):
    add_records(app, [400, 1])
    housekeeper = Housekeeper(app)
    housekeeper.start()
    try:
        deadline = time.monotonic() + 10
        while records(app) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        housekeeper.stopping.set()
        housekeeper.join(5)
    assert ages(app) == [1]


def test_the_retention_setting(tmp_path):
    assert Config({"GPUAAS_DATA_DIR": str(tmp_path)}).AUDIT_RETENTION_DAYS == 365
    assert Config({"GPUAAS_DATA_DIR": str(tmp_path), "GPUAAS_AUDIT_RETENTION_DAYS": "0"}).AUDIT_RETENTION_DAYS == 0
    with pytest.raises(ValueError, match="GPUAAS_AUDIT_RETENTION_DAYS"):
        Config({"GPUAAS_DATA_DIR": str(tmp_path), "GPUAAS_AUDIT_RETENTION_DAYS": "-1"})


def test_a_deleted_users_records_stay(app, client):
    operator, (user_id, _token_id) = as_user(app, Role.OPERATOR, "uma")
    region_id = operator.post("/api/regions", json={"region_name": "by-uma"}).get_json()["id"]

    assert client.delete(f"/api/users/{user_id}").status_code == 204

    assert summary(trail(client, "actor=uma")) == [("uma", "POST", str(region_id))]
