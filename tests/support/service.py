"""`gpuaas-api serve` as a real process for the tests: start it, call it, stop it.

The one harness of a real `serve` for tests/api, tests/contract and tests/deploy (tests/e2e drives
its own on the fleet: tests/support/fleet_service.py)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
CLI = VENV_BIN / "gpuaas-api"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's, for a system service


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(base, method, path, body=None, token=None):
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=40) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@dataclass
class Service:
    process: subprocess.Popen
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)


def start_service(argv: list[str], env: dict, log: Path, timeout: float = 30) -> Service:
    """Start ``argv`` (a serve command) with ``env``, its output in ``log``; return once it answers.

    ``env`` needs GPUAAS_BIND on a loopback port.  Raises AssertionError with the output when the
    service ends or does not answer in time.
    """
    base = f"http://{env['GPUAAS_BIND']}"
    with open(log, "w") as output:
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    service = Service(process, base, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if call(base, "GET", "/api/health")[0] == 200:
                return service
        except OSError:
            time.sleep(0.2)
    service.stop() if process.poll() is None else None
    raise AssertionError(f"serve did not answer (rc {process.returncode}): {log.read_text()}")


def service_env(data_dir: Path, database_url: str, **settings) -> dict:
    """The environment of a service started outside the Makefile: no venv on PATH, no GPUAAS_* of ours."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GPUAAS_", "ANSIBLE_"))}
    # A HOME that does not exist: nothing may be written there (a system user may have none).
    env.update({"PATH": SYSTEM_PATH, "HOME": str(data_dir.parent / "home"), "GPUAAS_BIND": f"127.0.0.1:{free_port()}",
                "GPUAAS_DATA_DIR": str(data_dir), "GPUAAS_DATABASE_URL": database_url,
                "GPUAAS_METRICS_INTERVAL_SECONDS": "0", **settings})
    return env


@dataclass
class Served:
    """A started service and an admin's login token."""
    base: str
    token: str
    env: dict
    access_log: Path
    log: Path

    def call(self, method: str, path: str, body=None):
        return call(self.base, method, path, body, token=self.token)


@contextmanager
def serve(tmp_path: Path, admin: dict, seed=None, **settings):
    """`gpuaas-api serve` on a fresh SQLite database under ``tmp_path``, with ``admin`` (username,
    password) created, logged in and, if given, ``seed(base, token)`` called; yield a Served; stop it.

    ``settings`` (GPUAAS_*) go beside the data directory, the admin and the access log."""
    access_log = tmp_path / "access.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("GPUAAS_")}
    env.update(GPUAAS_BIND=f"127.0.0.1:{free_port()}", GPUAAS_DATA_DIR=str(tmp_path / "data"),
               GPUAAS_ADMIN_USER=admin["username"], GPUAAS_ADMIN_PASSWORD=admin["password"],
               GPUAAS_ACCESS_LOG=str(access_log), **settings)
    service = start_service([str(CLI), "serve"], env, tmp_path / "serve.log")
    try:
        status, login = call(service.base, "POST", "/api/login", admin)
        assert status == 200, login
        if seed is not None:
            seed(service.base, login["token"])
        yield Served(service.base, login["token"], env, access_log, tmp_path / "serve.log")
    finally:
        service.stop()


def wait_for_job(base: str, token: str, job_id: int, seconds: int = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, job = call(base, "GET", f"/api/jobs/{job_id}?wait=30", token=token)
        assert status == 200, job
        if job["status"] not in ("pending", "running"):
            return job
    raise AssertionError(f"job {job_id} did not finish in {seconds} s: {job}")
