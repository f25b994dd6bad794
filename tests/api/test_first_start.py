"""A first start a person can use, and a service that finds its own Ansible.

Each test runs `gpuaas-api serve` as an operator or a systemd unit would: by its absolute
path, with a PATH that holds no virtual environment, on the suite's database (SQLite, then
PostgreSQL).
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from service import CLI, SYSTEM_PATH, VENV_BIN, call, free_port, service_env, start_service, wait_for_job
from sqlalchemy import create_engine, make_url, text

REPO = Path(__file__).resolve().parents[2]
PASSWORD_LINE = re.compile(r"created user 'admin' with password (\S+) \(shown only now")


def login(base: str, username: str, password: str) -> tuple[int, dict]:
    return call(base, "POST", "/api/login", {"username": username, "password": password})


def test_a_first_start_without_a_configured_admin_prints_a_password_once_that_logs_in(tmp_path, database_url):
    env = service_env(tmp_path / "var", database_url)
    service = start_service([str(CLI), "serve", "--workers", "1"], env, tmp_path / "first.log")
    try:
        output = service.output()
        passwords = PASSWORD_LINE.findall(output)
        assert len(passwords) == 1, output
        password = passwords[0]
        assert len(password) >= 20
        # The line the README points to also tells how to log in.
        assert f"curl -X POST {service.base}/api/login" in output

        status, reply = login(service.base, "admin", password)
        assert status == 200 and reply["is_super_admin"] is True
        assert login(service.base, "admin", password + "x")[0] == 401
    finally:
        service.stop()
    # Only its hash is stored.
    engine = create_engine(database_url)
    with engine.connect() as database:
        rows = database.execute(text("SELECT username, password_hash FROM users")).all()
    engine.dispose()
    assert [row[0] for row in rows] == ["admin"]
    assert rows[0][1].startswith("scrypt:") and password not in rows[0][1]
    if make_url(database_url).get_backend_name() == "sqlite":
        assert password.encode() not in Path(make_url(database_url).database).read_bytes()

    # The next start finds the user: no new password, the first one still works.
    service = start_service([str(CLI), "serve", "--workers", "1"], env, tmp_path / "second.log")
    try:
        assert "password" not in service.output()
        assert login(service.base, "admin", password)[0] == 200
    finally:
        service.stop()


def test_a_configured_admin_is_created_and_no_password_is_printed(tmp_path, database_url):
    env = service_env(tmp_path / "var", database_url, GPUAAS_ADMIN_USER="ops", GPUAAS_ADMIN_PASSWORD="from-the-env-file")
    service = start_service([str(CLI), "serve", "--workers", "1"], env, tmp_path / "serve.log")
    try:
        assert "created user" not in service.output()
        assert login(service.base, "ops", "from-the-env-file")[0] == 200
        assert login(service.base, "admin", "")[0] in (401, 422)
    finally:
        service.stop()


def test_an_admin_user_without_its_password_refuses_to_start_in_one_line(tmp_path, database_url):
    env = service_env(tmp_path / "var", database_url, GPUAAS_ADMIN_USER="ops")

    result = subprocess.run([str(CLI), "serve", "--workers", "1"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "gpuaas-api: set both GPUAAS_ADMIN_USER and GPUAAS_ADMIN_PASSWORD, or neither "
        "(then the first start creates 'admin' with a random password)"]


def test_set_password_replaces_a_lost_password_and_ends_login_sessions(tmp_path, database_url):
    env = service_env(tmp_path / "var", database_url)
    service = start_service([str(CLI), "serve", "--workers", "1"], env, tmp_path / "serve.log")
    try:
        first = PASSWORD_LINE.findall(service.output())[0]
        session_token = login(service.base, "admin", first)[1]["token"]
        automation_token = subprocess.run([str(CLI), "create-token", "--user", "admin"], env=env, capture_output=True,
                                          text=True, check=True).stdout.strip()

        changed = subprocess.run([str(CLI), "set-password", "--user", "admin", "--password", "a-new-one-for-admin"],
                                 env=env, capture_output=True, text=True, check=False)
        unknown = subprocess.run([str(CLI), "set-password", "--user", "nobody", "--password", "x"],
                                 env=env, capture_output=True, text=True, check=False)

        assert changed.returncode == 0, changed.stderr
        assert login(service.base, "admin", first)[0] == 401
        assert login(service.base, "admin", "a-new-one-for-admin")[0] == 200
        # The login session ended (within the token cache's few seconds); the automation token did not.
        assert wait_until_refused(service.base, session_token)
        assert call(service.base, "GET", "/regions", token=automation_token)[0] == 200
        assert unknown.returncode == 1 and unknown.stderr.strip() == "gpuaas-api: no user 'nobody'"
    finally:
        service.stop()


def wait_until_refused(base: str, token: str, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if call(base, "GET", "/regions", token=token)[0] == 401:
            return True
        time.sleep(0.5)
    return False


def add_unreachable_node(base: str, token: str) -> int:
    """A node whose SSH port refuses connections: any job on it needs a working ansible-playbook to say so."""
    region = call(base, "POST", "/regions", {"region_name": "lab-1"}, token)[1]
    status, node = call(base, "POST", "/gpuaas/node/add",
                        {"name": "unreachable-1", "region_id": region["id"], "node_ip": "127.0.0.1",
                         "port": free_port(), "username": "root", "is_worker_node": True}, token)
    assert status == 201, node
    return node["id"]


def test_jobs_run_the_services_own_ansible_whatever_path_says(tmp_path, database_url):
    env = service_env(tmp_path / "var", database_url, GPUAAS_ADMIN_USER="ops", GPUAAS_ADMIN_PASSWORD="pw-for-ops")
    assert not (Path("/usr/bin/ansible-playbook").exists() or Path("/usr/local/bin/ansible-playbook").exists())
    service = start_service([str(CLI), "serve", "--workers", "1"], env, tmp_path / "serve.log")
    try:
        token = login(service.base, "ops", "pw-for-ops")[1]["token"]
        node_id = add_unreachable_node(service.base, token)

        status, started = call(service.base, "GET", f"/gpuaas/node/test_conn?gpuaas_node_id={node_id}", token=token)
        assert status == 200, started
        job = wait_for_job(service.base, token, started["job_id"])

        # ansible-playbook ran (rc 127 would be "command not found") and reached the SSH step.
        assert job["status"] == "failed", job
        assert job["rc"] != 127
        assert job["explanation"] == f"node-{job['node_id']}: step ssh failed", job  # the inventory name
    finally:
        service.stop()
    # Neither gunicorn (its control socket) nor a job's Ansible wrote into HOME.
    assert not (tmp_path / "home").exists()


def test_a_service_without_ansible_beside_its_interpreter_says_where_it_looked(tmp_path, database_url):
    # An install of the service with no Ansible in it: a venv whose packages are the project's
    # venv's but whose bin has no ansible-playbook.  PATH does hold one (the project's venv):
    # the service must not take another install's Ansible from PATH.
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    site = next(Path(p) for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    (next((bare / "lib").glob("python3*")) / "site-packages/project.pth").write_text(f"{site}\n{REPO / 'api'}\n")
    env = service_env(tmp_path / "var", database_url, PATH=f"{VENV_BIN}:{SYSTEM_PATH}",
                      GPUAAS_ADMIN_USER="ops", GPUAAS_ADMIN_PASSWORD="pw-for-ops")
    service = start_service([str(bare / "bin/python"), "-m", "gpuaas_api.cli", "serve", "--workers", "1"], env,
                            tmp_path / "serve.log")
    try:
        expected = f"ansible-playbook not found at {bare / 'bin/ansible-playbook'}"
        assert f"gpuaas-api: warning: {expected}" in service.output()
        token = login(service.base, "ops", "pw-for-ops")[1]["token"]
        node_id = add_unreachable_node(service.base, token)

        started = call(service.base, "GET", f"/gpuaas/node/test_conn?gpuaas_node_id={node_id}", token=token)[1]
        job = wait_for_job(service.base, token, started["job_id"])

        assert job["status"] == "error", job
        assert job["explanation"].startswith(f"the job could not run: {expected} "), job
        assert "see the node's logs" not in job["explanation"]
        # The node is not left busy: the next job is accepted.
        assert call(service.base, "GET", f"/gpuaas/node/test_conn?gpuaas_node_id={node_id}", token=token)[0] == 200
    finally:
        service.stop()
