"""The end-to-end tests' harness: `gpuaas-api serve` as a real process (or a host of several, in
namespaces of its own), driving the test fleet (tests/fleet/fleet.py) over SSH.  Its fixtures are
tests/e2e/conftest.py's."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
FLEET = [sys.executable, str(REPO / "tests/fleet/fleet.py")]
CLI = Path(sys.executable).parent / "gpuaas-api"
ADMIN = {"username": "e2e-admin", "password": "e2e-password-long-enough"}
FLEET_STATE_DIR = Path("/var/lib/hostedai-gpuaas-fleet")


def fleet_vars() -> dict:
    """What the API's playbooks need on the fleet: the fleet inventory's role variables (its
    package repositories and Python index, the boot-id command, the CNI manifest's URL), with
    packages and the NVIDIA stack installed."""
    inventory = yaml.safe_load((FLEET_STATE_DIR / "inventory.yml").read_text())
    found = {key: value for key, value in inventory["all"]["vars"].items()
             if key.startswith(("node_init_", "node_reboot_", "cluster_controller_", "gpu_sharing_"))}
    return {**found, "node_reboot_timeout": 120, "node_init_manage_packages": True, "node_init_nvidia_install": True}


def fleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FLEET, *args], capture_output=True, text=True, check=True, timeout=120)


class Api:
    def __init__(self, base: str):
        self.base, self.token = base, None

    def call(self, method: str, path: str, body=None, expect: int | None = 200):
        request = urllib.request.Request(self.base + path, method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, payload = response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            status, payload = error.code, json.loads(error.read() or b"null")
        if expect is not None:
            assert status == expect, f"{method} {path}: {status} {payload}"
        return payload if expect is not None else (status, payload)

    def call_text(self, method: str, path: str) -> str:
        request = urllib.request.Request(self.base + path, method=method,
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read().decode()

    def wait_job(self, job_id: int, timeout: float = 180) -> dict:
        """The finished job, by long polls (?wait=): each answers as soon as the job has finished."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            job = self.call("GET", f"/api/jobs/{job_id}?wait={min(left, 20):.1f}")
            if job["status"] not in ("pending", "running"):
                return job
        raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")

    def run(self, method: str, path: str, body=None, timeout: float = 180) -> dict:
        """Start an operation and wait for its job to finish."""
        return self.wait_job(self.call(method, path, body)["job_id"], timeout)


class Service:
    """One `gpuaas-api serve` process; restartable over the same data dir."""

    def __init__(self, data_dir: Path, env: dict | None = None):
        self.data_dir, self.process = data_dir, None
        self.extra_env = dict(env or {})  # settings of this service beside the e2e defaults
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.api = Api(f"http://127.0.0.1:{self.port}")

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "serve.log"

    def command(self) -> list[str]:
        return [str(CLI), "serve", "--workers", "2"]

    def start(self) -> None:
        env = dict(os.environ, GPUAAS_BIND=f"127.0.0.1:{self.port}", GPUAAS_DATA_DIR=str(self.data_dir),
                   GPUAAS_ADMIN_USER=ADMIN["username"], GPUAAS_ADMIN_PASSWORD=ADMIN["password"],
                   GPUAAS_ANSIBLE_EXTRA_VARS=json.dumps(fleet_vars()), GPUAAS_JOB_TIMEOUT_SECONDS="300",
                   # Sample pool GPUs often enough for a test to read metrics within seconds.
                   GPUAAS_METRICS_INTERVAL_SECONDS=os.environ.get("GPUAAS_METRICS_INTERVAL_SECONDS", "3"))
        env.update(self.extra_env)
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.api.call("GET", "/api/health", expect=None)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise AssertionError("gpuaas-api serve did not answer")
        self.api.token = self.api.call("POST", "/api/login", ADMIN)["token"]

    def kill(self) -> None:
        """SIGKILL the whole service (master, workers, their playbooks): a crash, not a shutdown."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the workers too, not only the master
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def job_processes(job_id: int) -> list[int]:
    """Every process on this machine of a job's runs (runner.py marks each with GPUAAS_JOB_MARKER)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"GPUAAS_JOB_MARKER={job_id}-".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def install_controller_key(api: Api, node_id: int, fleet_node: str) -> None:
    """What an operator does with GET .../ssh_keys: add the keys to the node's authorized_keys."""
    for key in api.call("GET", f"/gpuaas/node/{node_id}/ssh_keys"):
        subprocess.run([*FLEET, "node-exec", fleet_node, "--", "sh", "-c",
                        f"grep -qxF '{key}' /root/.ssh/authorized_keys || echo '{key}' >> /root/.ssh/authorized_keys"],
                       check=True, capture_output=True)


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


class NamespacedService(Service):
    """`gpuaas-api serve` as one host of several: its own hostname (UTS namespace), its own PID
    namespace and data directory. `serve` is the namespace's PID 1, so a SIGKILL of it ends every
    process of the host, its playbooks' too, as a crash of the machine would; freeze() stops them
    all (SIGSTOP), as a host that hangs or is paused."""

    def __init__(self, data_dir: Path, hostname: str, env: dict | None = None):
        super().__init__(data_dir, env)
        self.hostname, self.namespace = hostname, None

    def command(self) -> list[str]:
        return ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname, *super().command()]

    def start(self) -> None:
        super().start()
        self.namespace = _pid_namespace(self.init_pid())

    def init_pid(self) -> int:
        """PID 1 of the host's namespace (the `serve` master), as this namespace numbers it."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1, f"unshare {self.process.pid} has children {children}"
        return int(children[0])

    def pids(self) -> list[int]:
        """Every process of the host (in its PID namespace)."""
        return [int(entry.name) for entry in Path("/proc").iterdir()
                if entry.name.isdigit() and _pid_namespace(int(entry.name)) == self.namespace]

    def playbook_pids(self) -> list[int]:
        found = []
        for pid in self.pids():
            try:
                if b"ansible-playbook" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except FileNotFoundError:
                continue
        return found

    def local_pids(self) -> set[int]:
        """The host's processes as its own namespace numbers them (what `claimed_by` names)."""
        local = set()
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
            local.add(int(nspid.split()[-1]))
        return local

    def _signal_all(self, signum: int) -> set[int]:
        """Signal every process of the namespace, again until a pass finds none it has not signalled
        (a process may fork while the pass goes by; a stopped one cannot)."""
        signalled: set[int] = set()
        for _pass in range(50):
            new = [pid for pid in self.pids() if pid not in signalled]
            if not new:
                return signalled
            for pid in new:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
                signalled.add(pid)
        raise AssertionError(f"{self.hostname}: processes kept appearing while signalling them")

    def freeze(self) -> None:
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the namespace's PID 1: the kernel ends every process of the host."""
        os.kill(self.init_pid(), signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.pids(), f"{self.hostname}: processes outlived its PID 1: {self.pids()}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.thaw()  # a frozen host cannot stop
            os.kill(self.init_pid(), signal.SIGTERM)  # serve's master handles it, even as PID 1
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
