"""Limits (issue #29 §5): the request body cap, the failed-login throttle, the client's address behind a
trusted proxy, and the Secure cookie.

The throttle's clock is set by the tests (login_throttle._now), so that Retry-After values are exact.
The body cap is also checked against a real `gpuaas-api serve`: what a route reads is gunicorn's stream.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from service import free_port, start_service
from sqlalchemy import select
from werkzeug.exceptions import RequestEntityTooLarge

from api_helpers import ADMIN, assert_error
from gpuaas_api import create_app, credentials, login_throttle
from gpuaas_api.body_limit import CappedBody
from gpuaas_api.config import Config
from gpuaas_api.db import session
from gpuaas_api.models import LoginFailure

ADDRESS, OTHER_ADDRESS = "198.51.100.7", "203.0.113.20"
WRONG = {"username": "admin", "password": "not the password"}
START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
MIB = 1024 * 1024


class Clock:
    """The throttle's now: START plus the seconds set."""

    def __init__(self):
        self.now = START

    def set(self, seconds: float) -> None:
        self.now = START + dt.timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch):
    fixed = Clock()
    monkeypatch.setattr(login_throttle, "_now", lambda: fixed.now)
    return fixed


@pytest.fixture
def scrypt_calls(monkeypatch):
    """Every password check the login makes (werkzeug's check_password_hash, as credentials.py calls it)."""
    calls = []
    real = credentials.check_password_hash

    def counted(stored, password):
        calls.append(password)
        return real(stored, password)

    monkeypatch.setattr(credentials, "check_password_hash", counted)
    return calls


@pytest.fixture
def make_app(tmp_path, migrated_database_url):
    """Apps on the test's database, with settings: several are several service hosts."""
    made = []

    def make(settings: dict | None = None):
        config = Config({"GPUAAS_DATA_DIR": str(tmp_path / f"data-{len(made)}"),
                         "GPUAAS_DATABASE_URL": migrated_database_url, **(settings or {})})
        config.TESTING = True
        made.append(create_app(config))
        return made[-1]

    yield make
    for application in made:
        application.extensions["gpuaas_engine"].dispose()


def client_from(application, address: str = ADDRESS):
    """A test client whose requests come from ``address`` (REMOTE_ADDR, as gunicorn sets it from the socket)."""
    test_client = application.test_client()
    test_client.environ_base["REMOTE_ADDR"] = address
    return test_client


def limits(per_user_address: int, per_address: int, window: int = 300) -> dict:
    return {"GPUAAS_LOGIN_FAILURES_PER_USER_ADDRESS": str(per_user_address),
            "GPUAAS_LOGIN_FAILURES_PER_ADDRESS": str(per_address), "GPUAAS_LOGIN_FAILURE_WINDOW_SECONDS": str(window)}


def failures(application) -> list[tuple[str, str]]:
    """The stored failures: (address, username hash), oldest first."""
    with application.app_context():
        return [tuple(row) for row in session().execute(
            select(LoginFailure.address, LoginFailure.username_hash).order_by(LoginFailure.at, LoginFailure.id))]


def digest(username: str) -> str:
    return hashlib.sha256(username.encode()).hexdigest()


def assert_throttled(response, retry_after: int, scope: str) -> None:
    body = assert_error(response, 429)
    assert response.headers["Retry-After"] == str(retry_after)
    assert body["message"] == f"too many failed logins {scope}: try again in {retry_after} s"


# The throttle.

def test_the_defaults():
    config = Config({})
    assert (config.LOGIN_FAILURES_PER_USER_ADDRESS, config.LOGIN_FAILURES_PER_ADDRESS,
            config.LOGIN_FAILURE_WINDOW_SECONDS) == (5, 50, 300)
    assert config.MAX_BODY_BYTES == MIB and config.as_flask()["MAX_CONTENT_LENGTH"] == MIB
    assert config.TRUSTED_PROXY_HOPS == 0


@pytest.mark.parametrize("name, value", [
    ("GPUAAS_LOGIN_FAILURES_PER_USER_ADDRESS", "0"), ("GPUAAS_LOGIN_FAILURES_PER_ADDRESS", "-1"),
    ("GPUAAS_LOGIN_FAILURE_WINDOW_SECONDS", "0"), ("GPUAAS_MAX_BODY_BYTES", "100"), ("GPUAAS_TRUSTED_PROXY_HOPS", "-1")])
def test_settings_out_of_range_are_refused(name, value):
    with pytest.raises(ValueError, match=name):
        Config({name: value})


def test_failures_per_user_name_and_address_answer_429_before_the_password_is_checked(make_app, clock, scrypt_calls):
    test_client = client_from(make_app(limits(3, 50)))
    for seconds in (0, 10, 20):
        clock.set(seconds)
        assert_error(test_client.post("/api/login", json=WRONG), 401)
    assert len(scrypt_calls) == 3

    clock.set(30)
    # The right password too: a throttled login is not checked, so it tells a guesser nothing.
    assert_throttled(test_client.post("/api/login", json=ADMIN), 270, "for this user name from this address")
    clock.set(299.5)
    assert_throttled(test_client.post("/api/login", json=ADMIN), 1, "for this user name from this address")
    assert len(scrypt_calls) == 3

    clock.set(300)  # the first failure has left the window: two remain, under the limit
    assert test_client.post("/api/login", json=ADMIN).status_code == 200
    assert len(scrypt_calls) == 4


def test_the_same_user_name_from_another_address_is_not_locked_out(make_app, clock):
    application = make_app(limits(3, 50))
    guesser = client_from(application)
    for _attempt in range(3):
        assert_error(guesser.post("/api/login", json=WRONG), 401)
    assert_throttled(guesser.post("/api/login", json=WRONG), 300, "for this user name from this address")

    # hosted·ai's client, logging in as the same user from its own address, is not refused.
    assert client_from(application, OTHER_ADDRESS).post("/api/login", json=ADMIN).status_code == 200
    # Nor is another user name from the guesser's address (the per-address limit is 50).
    assert_error(guesser.post("/api/login", json={"username": "ops", "password": "x"}), 401)


def test_password_spraying_over_many_user_names_is_caught_per_address(make_app, clock, scrypt_calls):
    application = make_app(limits(3, 6))
    sprayer = client_from(application)
    for number in range(6):
        clock.set(number)
        assert_error(sprayer.post("/api/login", json={"username": f"user-{number}", "password": "Winter2026!"}), 401)

    clock.set(10)
    assert_throttled(sprayer.post("/api/login", json=ADMIN), 290, "from this address")
    assert_throttled(sprayer.post("/api/login", json={"username": "user-99", "password": "x"}), 290, "from this address")
    assert len(scrypt_calls) == 6
    assert client_from(application, OTHER_ADDRESS).post("/api/login", json=ADMIN).status_code == 200


def test_a_login_forgets_its_own_failures_from_its_address_and_no_others(make_app, clock):
    application = make_app(limits(3, 5))
    test_client = client_from(application)
    for body in (WRONG, WRONG, {"username": "ghost", "password": "x"}, {"username": "ghost", "password": "y"}):
        assert_error(test_client.post("/api/login", json=body), 401)
    client_from(application, OTHER_ADDRESS).post("/api/login", json=WRONG)  # another address's: kept

    assert test_client.post("/api/login", json=ADMIN).status_code == 200
    assert failures(application) == [(ADDRESS, digest("ghost"))] * 2 + [(OTHER_ADDRESS, digest("admin"))]

    # admin may mistype twice again (the two before the login no longer count) ...
    assert_error(test_client.post("/api/login", json=WRONG), 401)
    assert_error(test_client.post("/api/login", json=WRONG), 401)
    # ... and ghost's two still count towards the address's 5: 2 + 2, then a fifth failure.
    assert_error(test_client.post("/api/login", json={"username": "ghost", "password": "z"}), 401)
    assert_throttled(test_client.post("/api/login", json=ADMIN), 300, "from this address")


def test_the_counts_are_in_the_database_for_every_host(make_app, clock):
    first, second = make_app(limits(3, 50)), make_app(limits(3, 50))
    for _attempt in range(3):
        assert_error(client_from(first).post("/api/login", json=WRONG), 401)

    assert_throttled(client_from(second).post("/api/login", json=ADMIN), 300, "for this user name from this address")
    # Stored: the address and the user name's SHA-256, never the name itself.
    assert failures(second) == [(ADDRESS, digest("admin"))] * 3


def test_failures_older_than_the_window_are_deleted_at_the_next_failure(make_app, clock):
    application = make_app(limits(3, 50, window=60))
    test_client = client_from(application)
    for seconds, address in ((0, ADDRESS), (30, OTHER_ADDRESS), (59, ADDRESS)):
        clock.set(seconds)
        assert_error(client_from(application, address).post("/api/login", json=WRONG), 401)
    assert len(failures(application)) == 3

    clock.set(60)  # the first is exactly a window old: out of the count, and deleted
    assert_error(test_client.post("/api/login", json={"username": "ghost", "password": "x"}), 401)
    assert failures(application) == [(OTHER_ADDRESS, digest("admin")), (ADDRESS, digest("admin")),
                                     (ADDRESS, digest("ghost"))]


def test_failed_and_throttled_logins_are_logged_without_the_secrets(make_app, clock, caplog):
    test_client = client_from(make_app(limits(1, 50)))
    typed = {"username": "correct horse battery staple", "password": "hunter2 and more"}  # the password as the name
    with caplog.at_level(logging.WARNING, logger="gpuaas_api"):
        assert_error(test_client.post("/api/login", json=typed), 401)
        assert_error(test_client.post("/api/login", json=typed), 429)

    lines = [record.getMessage() for record in caplog.records if record.name == "gpuaas_api.resources.auth"]
    who = f"user #{digest(typed['username'])[:12]} from {ADDRESS}"
    assert lines == [f"login refused for {who}: wrong username or password",
                     f"login refused for {who}: too many failed logins for this user name from this address: "
                     "try again in 300 s"]
    assert typed["username"] not in caplog.text and typed["password"] not in caplog.text


# The client's address.

def test_without_a_trusted_proxy_forwarded_headers_change_nothing(make_app, clock):
    application = make_app(limits(3, 50))
    test_client = client_from(application)
    for forged in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert_error(test_client.post("/api/login", json=WRONG, headers={"X-Forwarded-For": forged}), 401)

    assert_throttled(test_client.post("/api/login", json=ADMIN, headers={"X-Forwarded-For": "192.0.2.4"}), 300,
                     "for this user name from this address")
    assert failures(application) == [(ADDRESS, digest("admin"))] * 3


def test_behind_a_trusted_proxy_the_client_is_the_address_it_appended(make_app, clock):
    application = make_app({**limits(3, 50), "GPUAAS_TRUSTED_PROXY_HOPS": "1"})
    proxy = client_from(application, "127.0.0.1")
    for client_address in ("192.0.2.1", "192.0.2.2"):
        # The first value is the client's own claim; the proxy appended the address it saw.
        headers = {"X-Forwarded-For": f"10.9.9.9, {client_address}"}
        assert_error(proxy.post("/api/login", json=WRONG, headers=headers), 401)

    assert failures(application) == [("192.0.2.1", digest("admin")), ("192.0.2.2", digest("admin"))]


def test_ipv6_clients_are_counted_by_their_64_network(make_app, clock):
    assert login_throttle.address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert login_throttle.address_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert login_throttle.address_key(ADDRESS) == ADDRESS
    assert login_throttle.address_key(None) == ""
    application = make_app(limits(2, 50))
    for address in ("2001:db8:1:2::10", "2001:db8:1:2:ffff::20"):
        assert_error(client_from(application, address).post("/api/login", json=WRONG), 401)

    assert_throttled(client_from(application, "2001:db8:1:2::30").post("/api/login", json=ADMIN), 300,
                     "for this user name from this address")
    assert client_from(application, "2001:db8:1:3::10").post("/api/login", json=ADMIN).status_code == 200


# The Secure cookie.

def secure_cookie(reply) -> bool:
    assert reply.status_code == 200, reply.get_json()
    return "; Secure" in reply.headers["Set-Cookie"]


def test_the_cookie_is_secure_over_tls_or_when_configured(make_app):
    plain = make_app()
    assert not secure_cookie(plain.test_client().post("/api/login", json=ADMIN))
    assert secure_cookie(plain.test_client().post("/api/login", json=ADMIN, base_url="https://localhost"))
    # A client's own X-Forwarded-Proto is no proof of TLS without a trusted proxy.
    assert not secure_cookie(plain.test_client().post("/api/login", json=ADMIN, headers={"X-Forwarded-Proto": "https"}))

    behind_proxy = make_app({"GPUAAS_TRUSTED_PROXY_HOPS": "1"})
    assert secure_cookie(behind_proxy.test_client().post("/api/login", json=ADMIN,
                                                         headers={"X-Forwarded-Proto": "https"}))
    assert not secure_cookie(behind_proxy.test_client().post("/api/login", json=ADMIN,
                                                             headers={"X-Forwarded-Proto": "http"}))
    assert secure_cookie(make_app({"GPUAAS_SECURE_COOKIES": "true"}).test_client().post("/api/login", json=ADMIN))


# The body cap.

def test_a_body_over_the_cap_is_413_in_the_error_shape_and_logged(make_app, caplog):
    test_client = make_app({"GPUAAS_MAX_BODY_BYTES": "2048"}).test_client()
    with caplog.at_level(logging.WARNING, logger="gpuaas_api"):
        reply = test_client.post("/api/login", json={**WRONG, "padding": "p" * 2048})
    body = assert_error(reply, 413)

    assert body["message"] == "the request body is larger than 2048 bytes (GPUAAS_MAX_BODY_BYTES)"
    assert "refused POST /api/login from 127.0.0.1: body over 2048 bytes" in caplog.text
    assert "p" * 100 not in caplog.text
    # Just under the cap, the same route reads it (and ignores the unknown field).
    assert_error(test_client.post("/api/login", json={**WRONG, "padding": "p" * 1900}), 401)


def test_a_capped_body_of_unknown_length_stops_one_byte_past_the_cap():
    assert CappedBody(io.BytesIO(b"x" * 10), 10).read(10) == b"x" * 10
    assert CappedBody(io.BytesIO(b"x" * 10), 10).read() == b"x" * 10
    with pytest.raises(RequestEntityTooLarge):
        CappedBody(io.BytesIO(b"x" * 11), 10).read(10)  # the cap's worth, and one more byte to come
    endless = io.BytesIO(b"x" * (64 * MIB))
    with pytest.raises(RequestEntityTooLarge):
        CappedBody(endless, MIB).read()
    assert endless.tell() == MIB + 1


# Against a real `gpuaas-api serve`: gunicorn's input stream, chunked bodies, the worker's memory.

CLI = Path(sys.executable).parent / "gpuaas-api"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("served")
    env = {key: value for key, value in os.environ.items() if not key.startswith("GPUAAS_")}
    env.update(GPUAAS_BIND=f"127.0.0.1:{free_port()}", GPUAAS_DATA_DIR=str(tmp_path / "var"), GPUAAS_JOB_WORKERS="0",
               GPUAAS_METRICS_INTERVAL_SECONDS="0", GPUAAS_ADMIN_USER=ADMIN["username"],
               GPUAAS_ADMIN_PASSWORD=ADMIN["password"])
    service = start_service([str(CLI), "serve", "--workers", "1"], env, tmp_path / "serve.log")
    yield service
    service.stop()


def worker_memory(service) -> tuple[int, int]:
    """The (only) worker's resident and peak resident memory, in KiB."""
    master = service.process.pid
    worker = Path(f"/proc/{master}/task/{master}/children").read_text().split()[0]
    status = dict(line.split(":", 1) for line in Path(f"/proc/{worker}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def raw_post(service, headers: str, pieces=()) -> tuple[bytes, float]:
    """POST /api/login on a raw socket: ``headers``, then ``pieces`` sent from a thread while the reply is
    read (the service answers before the body ends, then closes); the reply's head and body, and when it came."""
    host_port = service.base.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host_port[0], int(host_port[1])), timeout=20)
    sock.sendall(f"POST /api/login HTTP/1.1\r\nHost: {host_port[0]}\r\nContent-Type: application/json\r\n"
                 f"{headers}\r\n".encode())

    def send_body():
        try:
            for piece in pieces:
                sock.sendall(piece)
        except OSError:
            pass  # the service closed the connection after answering

    sender = threading.Thread(target=send_body, daemon=True)
    started = time.monotonic()
    sender.start()
    try:
        reply = read_reply(sock)
    finally:
        elapsed = time.monotonic() - started
        sock.close()
        sender.join(10)
    return reply, elapsed


def read_reply(sock) -> bytes:
    """One HTTP reply with a Content-Length: its head and body."""
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(65536) or b"\r\n\r\n"  # closed before a whole head: what came
    head, _separator, body = reply.partition(b"\r\n\r\n")
    lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    while lengths and len(body) < int(lengths[0]):
        data = sock.recv(65536)
        if not data:
            break
        body += data
    return head + b"\r\n\r\n" + body


def chunks(total: int, size: int = 64 * 1024):
    """A JSON login body of ``total`` bytes, chunk-encoded, without the last chunk (the body never ends)."""
    head, tail = b'{"username": "admin", "password": "', b'"}'
    body = head + b"p" * (total - len(head) - len(tail)) + tail
    for offset in range(0, len(body), size):
        piece = body[offset:offset + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)


def assert_413(reply: bytes) -> None:
    head, _separator, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), reply[:300]
    assert body.rstrip() == (b'{"code":413,"message":"the request body is larger than 1048576 bytes (GPUAAS_MAX_BODY_BYTES)",'
                             b'"errors":[]}')


def test_served_a_declared_length_over_the_cap_is_refused_unread(served):
    # 54 MB declared and none sent: the answer comes at once, so nothing of the body was waited for.
    reply, elapsed = raw_post(served, f"Content-Length: {54 * 1000 * 1000}\r\n")
    assert_413(reply)
    assert elapsed < 5


def test_served_a_chunked_body_is_refused_past_the_cap_and_not_held(served):
    before = worker_memory(served)
    reply, elapsed = raw_post(served, "Transfer-Encoding: chunked\r\n", chunks(54 * 1000 * 1000))
    after = worker_memory(served)

    assert_413(reply)
    assert elapsed < 5
    # Before the cap, the 54 MB body raised the worker's peak by 130 MB (a list of numbers in it: 390 MB).
    assert after[1] - before[1] < 16 * 1024, (before, after)


def test_served_a_chunked_body_under_the_cap_reaches_the_route(served):
    reply, _elapsed = raw_post(served, "Transfer-Encoding: chunked\r\n", [*chunks(MIB - 8), b"0\r\n\r\n"])
    head, _separator, body = reply.partition(b"\r\n\r\n")
    # The whole body was read and parsed: its password is longer than a password may be.
    assert head.startswith(b"HTTP/1.1 422 "), reply[:300]
    assert b'"field":"password"' in body


def test_served_a_throttled_login_is_429_with_retry_after_on_the_wire(served):
    def attempt():
        request = urllib.request.Request(served.base + "/api/login", method="POST", headers={"Content-Type": "application/json"},
                                         data=b'{"username": "served-user", "password": "wrong"}')
        try:
            with urllib.request.urlopen(request, timeout=20) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    assert [attempt()[0] for _attempt in range(5)] == [401] * 5
    status, headers, body = attempt()
    assert status == 429 and headers["Content-Type"] == "application/json"
    assert 290 <= int(headers["Retry-After"]) <= 300  # the default window, less the time the five took
    assert body.startswith(b'{"code":429,"message":"too many failed logins for this user name from this address: try again in ')


def test_served_without_a_trusted_proxy_a_forwarded_proto_does_not_make_the_cookie_secure(served):
    # gunicorn alone would believe X-Forwarded-Proto from a loopback peer (its forwarded_allow_ips);
    # cli.py turns that off, so GPUAAS_TRUSTED_PROXY_HOPS (0 here) is the only thing that decides.
    request = urllib.request.Request(served.base + "/api/login", method="POST", data=json.dumps(ADMIN).encode(),
                                     headers={"Content-Type": "application/json", "X-Forwarded-Proto": "https"})
    with urllib.request.urlopen(request, timeout=20) as reply:
        cookie = reply.headers["Set-Cookie"]
    assert cookie.startswith("token=") and "Secure" not in cookie
