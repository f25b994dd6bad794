"""The shipped systemd unit: systemd accepts it, and the service runs the way it starts it.

There is no systemd to start the unit here, so the test does what the unit says: the
checkout seen at the unit's install prefix (/opt/hostedai-gpuaas, in a private mount
namespace), ExecStart by its absolute path, as the unit's User and Group, with systemd's
PATH and the environment file.  Only the data directory differs: a temporary directory in
place of StateDirectory=, set through the environment file as an operator may.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from service import call, free_port

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy/systemd/gpuaas-api.service"
ENV_EXAMPLE = REPO / "deploy/systemd/gpuaas-api.env"
PREFIX = Path("/opt/hostedai-gpuaas")
# systemd's PATH for system services (systemd.exec(5), "Environment Variables in Spawned Processes").
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a service user and a mount namespace")

# In a private mount namespace: the checkout at the unit's install prefix, and at its own path
# wherever a parent directory is closed to other users (the venv's scripts name the
# interpreter by that path; a production install lives where its user can read it).
INSTALL_NAMESPACE = r'''
set -eu
repo=$1; stage=$2; closed=$3; shift 3
mount --bind "$repo" "$stage"
mount -t tmpfs -o mode=0755 tmpfs /opt
mkdir -p /opt/hostedai-gpuaas
mount --bind "$stage" /opt/hostedai-gpuaas
if [ -n "$closed" ]; then mount -t tmpfs -o mode=0755 tmpfs "$closed"; fi
if [ ! -d "$repo/.venv" ]; then mkdir -p "$repo"; mount --bind "$stage" "$repo"; fi
exec "$@"
'''


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """The unit's sections, each key with its values in order (systemd allows repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def closed_parent(path: Path) -> str:
    """The topmost parent of ``path`` that other users cannot enter, or ''."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & stat.S_IXOTH:
            return str(parent)
    return ""


def in_install_namespace(command: list[str], stage: Path) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", INSTALL_NAMESPACE, "sh",
            str(REPO), str(stage), closed_parent(REPO), *command]


@pytest.fixture
def stage():
    path = Path(tempfile.mkdtemp(prefix="gpuaas-unit-stage-"))
    yield path
    path.rmdir()


def verify(unit: Path, stage: Path) -> subprocess.CompletedProcess:
    return subprocess.run(in_install_namespace(["systemd-analyze", "verify", str(unit)], stage),
                          capture_output=True, text=True, timeout=60, check=False)


def test_systemd_accepts_the_unit(stage):
    result = verify(UNIT, stage)

    # verify exits 0 even for unknown keys and bad values: it only warns, so no output is the test.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_catch_a_broken_unit(tmp_path, stage):
    broken = tmp_path / "gpuaas-api.service"
    broken.write_text(UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes")
                      .replace("User=gpuaas", "Usr=gpuaas"))

    result = verify(broken, stage)

    assert "Failed to parse service restart specifier" in result.stderr
    assert "Unknown key 'Usr'" in result.stderr


def test_the_unit_runs_a_dedicated_user_from_its_venv_and_restarts_on_failure():
    service = unit_settings(UNIT.read_text())["Service"]

    assert service["User"] == ["gpuaas"] and service["Group"] == ["gpuaas"]
    assert service["ExecStart"] == [f"{PREFIX}/.venv/bin/gpuaas-api serve"]
    assert service["Restart"] == ["on-failure"]
    assert service["EnvironmentFile"] == ["/etc/gpuaas/api.env"]
    assert service["StateDirectory"] == ["gpuaas"]
    assert service["Environment"] == ["GPUAAS_DATA_DIR=/var/lib/gpuaas"]
    assert "Environment" not in service or not any(v.startswith("PATH=") for v in service["Environment"])


def test_a_stop_waits_for_the_drain_and_signals_gunicorn_alone():
    """systemd waits longer than gunicorn, which waits longer than the drain (cli.gunicorn_timeouts);
    KillMode=mixed sends SIGTERM to the master alone, not to every running ansible-playbook."""
    from gpuaas_api.cli import gunicorn_timeouts
    from gpuaas_api.config import Config

    service = unit_settings(UNIT.read_text())["Service"]
    config = Config({})
    timeouts = gunicorn_timeouts(config)
    assert service["KillMode"] == ["mixed"]
    assert service["TimeoutStopSec"] == [f"{config.JOB_DRAIN_SECONDS + 30:g}s"]
    assert config.JOB_DRAIN_SECONDS < timeouts["graceful_timeout"] < config.JOB_DRAIN_SECONDS + 30
    assert timeouts["timeout"] >= config.JOB_LEASE_SECONDS  # a paused worker keeps its jobs while their leases hold


@pytest.fixture
def service_user():
    """The unit's user, made as docs/production.md makes it, if this machine lacks it."""
    name = unit_settings(UNIT.read_text())["Service"]["User"][0]
    created = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--home-dir", "/var/lib/gpuaas", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", name], check=True)
        created = True
    yield pwd.getpwnam(name)
    if created:
        subprocess.run(["userdel", name], check=True)


def env_file_settings(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


def owner_ids(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    gid = int(re.search(r"^Gid:\s+(\d+)", status, re.M).group(1))
    return uid, gid


def test_the_service_runs_as_the_unit_starts_it(service_user, stage, tmp_path):
    service = unit_settings(UNIT.read_text())["Service"]
    data_dir = Path(tempfile.mkdtemp(prefix="gpuaas-unit-data-"))  # pytest's tmp_path is closed to other users
    os.chown(data_dir, service_user.pw_uid, service_user.pw_gid)
    data_dir.chmod(0o700)  # StateDirectoryMode
    port = free_port()
    # The operator's /etc/gpuaas/api.env: the example, on SQLite, another port, this data dir.
    settings = env_file_settings(ENV_EXAMPLE.read_text())
    settings.pop("GPUAAS_DATABASE_URL")
    settings.update(GPUAAS_BIND=f"127.0.0.1:{port}", GPUAAS_DATA_DIR=str(data_dir),
                    GPUAAS_METRICS_INTERVAL_SECONDS="0")
    # systemd's environment for a User= service, then Environment=, then EnvironmentFile= over it.
    env = {"PATH": SYSTEMD_PATH, "HOME": service_user.pw_dir, "USER": service_user.pw_name,
           "LOGNAME": service_user.pw_name, "SHELL": service_user.pw_shell, "LANG": "C.UTF-8"}
    env.update(env_file_settings("\n".join(service["Environment"])))
    env.update(settings)
    command = ["setpriv", f"--reuid={service['User'][0]}", f"--regid={service['Group'][0]}", "--init-groups",
               "--no-new-privs", "--", *service["ExecStart"][0].split()]
    log = tmp_path / "service.log"
    base = f"http://127.0.0.1:{port}"
    with open(log, "w") as output:
        process = subprocess.Popen(in_install_namespace(command, stage), env=env, cwd=data_dir, stdout=output,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if call(base, "GET", "/api/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"the service did not answer (rc {process.poll()}): {log.read_text()}")

        # Every process of the service is the unit's user, not root.
        # (unshare, sh and setpriv exec in turn: the process started is the service's own master)
        service_processes = [pid for pid in (process.pid, *descendants(process.pid))
                             if b"gpuaas-api" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert service_processes
        assert {owner_ids(pid) for pid in service_processes} == {(service_user.pw_uid, service_user.pw_gid)}

        # The first start's admin, from the log, logs in.
        password = re.search(r"created user 'admin' with password (\S+) ", log.read_text()).group(1)
        token = call(base, "POST", "/api/login", {"username": "admin", "password": password})[1]["token"]

        # A job runs the venv's Ansible as that user: it reaches the SSH step of an unreachable node.
        region = call(base, "POST", "/regions", {"region_name": "lab-1"}, token)[1]
        node = call(base, "POST", "/gpuaas/node/add",
                    {"name": "unreachable-1", "region_id": region["id"], "node_ip": "127.0.0.1", "port": 9,
                     "username": "root", "is_worker_node": True}, token)[1]
        job_id = call(base, "GET", f"/gpuaas/node/test_conn?gpuaas_node_id={node['id']}", token=token)[1]["job_id"]
        job = call(base, "GET", f"/api/jobs/{job_id}?wait=30", token=token)[1]
        assert (job["status"], job["explanation"]) == ("failed", f"node-{node['id']}: step ssh failed"), job

        # The controller's SSH identity is the service user's, in its data directory.
        key = data_dir / "ssh" / "id_ed25519"
        assert key.exists() and key.stat().st_uid == service_user.pw_uid
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=20)
        shutil.rmtree(data_dir, ignore_errors=True)
    assert process.returncode == 0, log.read_text()  # a clean stop on SIGTERM
