# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small client of the hosted·ai GPUaaS REST service for the collection's API modules."""
from __future__ import annotations

import json
import time

from ansible.module_utils.basic import env_fallback
from ansible.module_utils.urls import fetch_url

API_ARGUMENT_SPEC = dict(
    api_url=dict(type="str", required=True, fallback=(env_fallback, ["GPUAAS_API_URL"])),
    api_token=dict(type="str", no_log=True, fallback=(env_fallback, ["GPUAAS_API_TOKEN"])),
    api_username=dict(type="str", fallback=(env_fallback, ["GPUAAS_API_USERNAME"])),
    api_password=dict(type="str", no_log=True, fallback=(env_fallback, ["GPUAAS_API_PASSWORD"])),
    validate_certs=dict(type="bool", default=True),
    api_timeout=dict(type="int", default=30),
)


class ApiError(Exception):
    """A reply outside 2xx: the service's one error shape {code, message, errors}."""

    def __init__(self, status, message, errors=None):
        super(ApiError, self).__init__("%s %s" % (status, message))
        self.status = status
        self.message = message
        self.errors = errors or []


class GpuaasApi(object):
    def __init__(self, module):
        self.module = module
        base = module.params["api_url"].rstrip("/")
        self.base = base if base.endswith("/api") else base + "/api"
        self.token = module.params.get("api_token")
        if not self.token:
            if not (module.params.get("api_username") and module.params.get("api_password")):
                module.fail_json(msg="give api_token, or api_username and api_password")
            self.token = self.call("POST", "/login", {"username": module.params["api_username"],
                                                      "password": module.params["api_password"]},
                                   authenticated=False)["token"]

    def call(self, method, path, body=None, authenticated=True):
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        if authenticated:
            headers["Authorization"] = "Bearer %s" % self.token
        # fetch_url's own params: validate_certs, and no url_username/force_basic_auth of ours.
        response, info = fetch_url(self.module, self.base + path, data=data, headers=headers, method=method,
                                   timeout=self.module.params["api_timeout"])
        status = info.get("status", -1)
        # On an HTTP error fetch_url has already read the body into info["body"].
        raw = response.read() if response is not None and 200 <= status < 300 else info.get("body", b"")
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"message": raw[:300] if isinstance(raw, str) else raw[:300].decode("utf-8", "replace")}
        if not 200 <= status < 300:
            if status == -1:
                raise ApiError(status, "cannot reach %s: %s" % (self.base, info.get("msg")))
            raise ApiError(status, payload.get("message", info.get("msg")), payload.get("errors"))
        return payload

    def wait_for_job(self, job_id, timeout):
        """The job once it has ended, or None after ``timeout`` seconds.

        Long polls (GET /api/jobs/{id}?wait=): the service answers each as soon as the job has
        ended, so nothing is learnt late by polling; each stays well inside api_timeout.
        """
        deadline = time.monotonic() + timeout
        longest = max(1, min(30, self.module.params["api_timeout"] - 5))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            job = self.call("GET", "/jobs/%d?wait=%d" % (job_id, max(1, min(left, longest))))
            if job["status"] not in ("pending", "running"):
                return job

    def wait(self, probe, timeout, interval=1.0):
        """Call ``probe`` until it returns something other than None; None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = probe()
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(interval)


def explain(error):
    """One line with the service's message and its field errors."""
    fields = "; ".join("%s: %s" % (e.get("field"), e.get("message")) for e in error.errors)
    return "%s (HTTP %s)%s" % (error.message, error.status, (": " + fields) if fields else "")
