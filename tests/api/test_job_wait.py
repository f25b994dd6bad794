"""GET /api/jobs/{id}?wait=SECONDS: a long poll that answers once the job has finished.

No worker runs here: a thread finalises the job while the request waits.
"""
from __future__ import annotations

import threading
import time

import pytest

from api_helpers import assert_error
from gpuaas_api.jobs import finalize as finalize_module
from gpuaas_api.jobs import waiting
from gpuaas_api.jobs.finalize import finalize


@pytest.fixture
def pending_job(client, region):
    node = client.post("/gpuaas/node/add", json={"name": "w1", "region_id": region["id"], "node_ip": "198.18.0.12",
                                                 "username": "root", "is_worker_node": True}).get_json()
    return client.get(f"/gpuaas/node/init?gpuaas_node_id={node['id']}").get_json()["job_id"]


def finish_later(app, job_id: int, delay: float) -> threading.Thread:
    def finish():
        time.sleep(delay)
        with app.app_context():
            finalize(job_id, "successful", 0, "", {})
    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def timed_get(client, path):
    start = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - start


def test_wait_answers_as_soon_as_the_job_finishes(app, client, pending_job):
    thread = finish_later(app, pending_job, 0.3)

    response, elapsed = timed_get(client, f"/api/jobs/{pending_job}?wait=10")

    thread.join()
    assert response.status_code == 200 and response.get_json()["status"] == "successful"
    assert 0.25 <= elapsed < 1.5


def test_a_finish_in_another_process_is_seen_by_reading_the_status(app, client, pending_job, monkeypatch):
    # Another process's finalize notifies nobody here: only the periodic status read can see it.
    monkeypatch.setattr(finalize_module, "notify_finished", lambda: None)
    thread = finish_later(app, pending_job, 0.3)

    response, elapsed = timed_get(client, f"/api/jobs/{pending_job}?wait=10")

    thread.join()
    assert response.get_json()["status"] == "successful"
    assert 0.25 <= elapsed < 0.3 + 1.0


def test_wait_gives_up_after_its_seconds_with_the_job_as_it_is(client, pending_job):
    response, elapsed = timed_get(client, f"/api/jobs/{pending_job}?wait=0.3")

    assert response.status_code == 200 and response.get_json()["status"] == "pending"
    assert 0.3 <= elapsed < 1.5


def test_a_finished_job_or_no_wait_answers_at_once(app, client, pending_job):
    _response, elapsed = timed_get(client, f"/api/jobs/{pending_job}")
    assert elapsed < 0.5
    with app.app_context():
        finalize(pending_job, "failed", 2, "it broke", {})

    response, elapsed = timed_get(client, f"/api/jobs/{pending_job}?wait=10")

    assert response.get_json()["status"] == "failed" and elapsed < 0.5


def test_waiters_never_hold_every_request_thread(client, pending_job):
    # With every waiter slot taken, a long poll answers at once: the client simply asks again.
    held = [waiting._waiter_slots.acquire(blocking=False) for _slot in range(waiting.MAX_WAITERS)]
    try:
        assert all(held)
        response, elapsed = timed_get(client, f"/api/jobs/{pending_job}?wait=10")
    finally:
        for _slot in held:
            waiting._waiter_slots.release()

    assert response.get_json()["status"] == "pending" and elapsed < 0.5


@pytest.mark.parametrize("wait", ["-1", str(waiting.MAX_WAIT_SECONDS + 1), "soon"])
def test_bad_waits_are_422(client, pending_job, wait):
    assert_error(client.get(f"/api/jobs/{pending_job}?wait={wait}"), 422, "wait")


def test_waiting_on_an_unknown_job_is_404(client):
    assert_error(client.get("/api/jobs/9999?wait=5"), 404)
