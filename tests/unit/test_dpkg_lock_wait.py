"""Every package hold in the collection waits out dpkg's lock, as apt waits (lock_timeout).

dpkg itself never waits: `dpkg --set-selections` fails at once while another package run holds
/var/lib/dpkg/lock-frontend. A node_init stopped mid-install (the service's drain, a cancel) leaves
its apt-get running to the end on the node, and the next run's hold then met that lock (the e2e
test of a stop mid-init failed so in CI). These run each hold task of the roles, as written, with
the real dpkg on a scratch database (DPKG_ADMINDIR) whose lock the test holds.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from module_runner import REPO, run_local_play

HOLD_MODULE = "ansible.builtin.dpkg_selections"
RETRY_KEYS = ("until", "retries", "delay")


def tasks_in(items: list):
    for task in items or []:
        yield task
        for section in ("block", "rescue", "always"):
            yield from tasks_in(task.get(section))


def hold_tasks() -> list:
    found = []
    for path in sorted(REPO.glob("roles/*/tasks/*.yml")):
        found += [(path, task) for task in tasks_in(yaml.safe_load(path.read_text())) if HOLD_MODULE in task]
    return found


HOLDS = hold_tasks()


def scratch_dpkg(tmp_path: Path) -> Path:
    """A dpkg database with one installed package, kubelet, selected `install`."""
    admin = tmp_path / "dpkg"
    (admin / "updates").mkdir(parents=True)
    (admin / "info").mkdir()
    (admin / "available").write_text("")
    (admin / "status").write_text("Package: kubelet\nStatus: install ok installed\nVersion: 1.34.1-1.1\n"
                                  "Architecture: amd64\nMaintainer: fleet <fleet@example.org>\nDescription: kubelet\n\n")
    return admin


def selection(admin: Path) -> str:
    out = subprocess.run(["dpkg", "--get-selections", "kubelet"], env={**os.environ, "DPKG_ADMINDIR": str(admin)},
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def hold_lock(admin: Path, seconds: float) -> threading.Thread:
    """What another package run does: hold dpkg's frontend lock (fcntl, as dpkg and apt take it)."""
    handle = os.open(admin / "lock-frontend", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    releaser = threading.Timer(seconds, os.close, [handle])
    releaser.start()
    return releaser


def run_task(tmp_path: Path, path: Path, task: dict, admin: Path, package: str = "kubelet") -> tuple[int, str, float]:
    task = {key: value for key, value in task.items() if key not in ("when", "loop", "vars")}
    task[HOLD_MODULE] = {**task[HOLD_MODULE], "name": package}
    role_vars = path.parents[1] / "vars" / "main.yml"
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "vars_files": [str(role_vars)], "tasks": [task]}]
    started = time.monotonic()
    rc, output = run_local_play(tmp_path, yaml.safe_dump(play), {"node_init_dpkg_lock_delay": 1}, check=False,
                                env={"DPKG_ADMINDIR": str(admin)})
    return rc, output, time.monotonic() - started


def test_the_roles_hold_packages():
    """The table below is not vacuous: both holds of node_init are found."""
    assert {(path.parent.parent.name, path.name) for path, _task in HOLDS} >= {
        ("node_init", "packages.yml"), ("node_init", "nvidia_stack.yml")}


@pytest.mark.parametrize("path,task", HOLDS, ids=[f"{p.parent.parent.name}/{p.name}" for p, _task in HOLDS])
def test_a_hold_waits_while_another_package_run_holds_the_lock(tmp_path, path, task):
    admin = scratch_dpkg(tmp_path)
    releaser = hold_lock(admin, seconds=3)
    rc, output, _seconds = run_task(tmp_path, path, task, admin)
    releaser.join()
    assert rc == 0, output
    assert "FAILED - RETRYING" in output  # it met the lock, and waited
    assert selection(admin) == "hold"


@pytest.mark.parametrize("path,task", HOLDS[:1], ids=["without-retries"])
def test_without_its_retries_the_same_hold_fails_on_the_lock(tmp_path, path, task):
    """The control: the real dpkg refuses at once, so the test above can fail."""
    admin = scratch_dpkg(tmp_path)
    releaser = hold_lock(admin, seconds=3)
    bare = {key: value for key, value in task.items() if key not in RETRY_KEYS}
    rc, output, seconds = run_task(tmp_path, path, bare, admin)
    releaser.join()
    # dpkg's refusal, or (when dpkg exited before Ansible wrote it the selection) the write's EPIPE:
    # the role retries on both.
    assert rc != 0 and ("dpkg frontend lock was locked by another process" in output
                        or ('"rc": 32' in output and "Broken pipe" in output)), output
    assert seconds < 3 and selection(admin) == "install"


def test_a_real_failure_is_not_retried(tmp_path):
    """Only the lock is waited out: a package dpkg does not know fails at once."""
    path, task = HOLDS[0]
    rc, output, seconds = run_task(tmp_path, path, task, scratch_dpkg(tmp_path), package="no-such-package")
    assert rc != 0 and "Failed to find package" in output and "RETRYING" not in output, output
    assert seconds < 10


def test_the_lock_message_is_dpkgs():
    """node_init_dpkg_lock_held is what this dpkg prints (the message the retries look for)."""
    held = yaml.safe_load((REPO / "roles/node_init/vars/main.yml").read_text())["node_init_dpkg_lock_held"]
    assert json.dumps(held) and held in "dpkg: error: dpkg frontend lock was locked by another process with pid 1"
