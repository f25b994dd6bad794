"""`gpuaas-api serve` as a real process for the tests: start it, call it, stop it."""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


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


def wait_for_job(base: str, token: str, job_id: int, seconds: int = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, job = call(base, "GET", f"/api/jobs/{job_id}?wait=30", token=token)
        assert status == 200, job
        if job["status"] not in ("pending", "running"):
            return job
    raise AssertionError(f"job {job_id} did not finish in {seconds} s: {job}")
