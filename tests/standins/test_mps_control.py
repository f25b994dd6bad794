"""The nvidia-cuda-mps-control stand-in (package cuda-drivers-580), run on this host with its
pipe and log directories in a scratch directory (CUDA_MPS_PIPE_DIRECTORY, CUDA_MPS_LOG_DIRECTORY)."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

MPS = Path(__file__).resolve().parents[2] / "tests/fleet/packages/cuda-drivers-580/usr/bin/nvidia-cuda-mps-control"


@pytest.fixture
def dirs():
    # Short paths: a unix socket's path has at most 107 characters.
    root = Path(tempfile.mkdtemp(prefix="mps-", dir="/tmp"))
    env = {"PATH": os.environ["PATH"], "CUDA_MPS_PIPE_DIRECTORY": str(root / "pipe"),
           "CUDA_MPS_LOG_DIRECTORY": str(root / "log"), "CUDA_VISIBLE_DEVICES": "GPU-0001,GPU-0002"}
    yield root, env
    subprocess.run(["/usr/bin/python3", str(MPS)], input="quit\n", env=env, capture_output=True, text=True,
                   timeout=10, check=False)
    subprocess.run(["rm", "-rf", str(root)], check=False)


def mps(env: dict, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/python3", str(MPS), *args], input=stdin, env=env, capture_output=True, text=True,
                          timeout=15, check=False)


def test_the_client_without_a_daemon_fails(dirs):
    _root, env = dirs
    done = mps(env, stdin="get_server_list\n")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", "Cannot find MPS control daemon process\n")


def test_daemon_starts_refuses_a_second_answers_and_quits(dirs):
    root, env = dirs
    started = mps(env, "-d")
    assert started.returncode == 0, started.stderr
    assert (root / "pipe/control").exists() and (root / "pipe/control_lock").exists()
    log = (root / "log/control.log").read_text()
    assert re.match(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} Control +\d+\] Starting control daemon using socket "
                    + re.escape(str(root / "pipe/control")) + "\n", log), log
    assert f"To connect CUDA applications to this daemon, set env CUDA_MPS_PIPE_DIRECTORY={root / 'pipe'}\n" in log
    assert "CUDA_VISIBLE_DEVICES=GPU-0001,GPU-0002\n" in log

    again = mps(env, "-d")
    assert (again.returncode, again.stderr) == (1, "An instance of this daemon is already running\n")

    answers = mps(env, stdin="get_server_list\nget_default_active_thread_percentage\n"
                             "set_default_active_thread_percentage 25\nget_default_active_thread_percentage\n"
                             "set_default_active_thread_percentage 250\n")
    assert answers.returncode == 0, answers.stderr
    assert answers.stdout == "100.0\n25.0\n25.0\nInvalid active thread percentage: 250\n"
    assert "Cmd:set_default_active_thread_percentage 25\n" in (root / "log/control.log").read_text()

    # Another pipe directory is another daemon.
    other = dict(env, CUDA_MPS_PIPE_DIRECTORY=str(root / "other"))
    assert mps(other, "-d").returncode == 0
    assert mps(other, stdin="quit\n").returncode == 0

    quit_ = mps(env, stdin="quit\n")
    assert (quit_.returncode, quit_.stdout) == (0, "")
    deadline = time.monotonic() + 5
    while (root / "pipe/control").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(os.listdir(root / "pipe")) == [], "quit cleans up the pipe directory's entries"
    messages = [line.split("] ", 1)[1] for line in (root / "log/control.log").read_text().splitlines()]
    assert messages[-3:] == ["Cmd:quit", "UI closed", "Exit"]
    gone = mps(env, stdin="get_server_list\n")
    assert gone.returncode == 1 and gone.stderr == "Cannot find MPS control daemon process\n"


def test_an_unknown_flag_is_refused(dirs):
    _root, env = dirs
    done = mps(env, "--daemon")
    assert done.returncode == 1 and done.stderr.startswith("Usage: nvidia-cuda-mps-control")


def test_the_daemon_records_its_pid_and_keeps_a_file_in_its_dev_shm(dirs):
    root, env = dirs
    assert mps(env, "-d").returncode == 0
    pid = (root / "pipe/nvidia-cuda-mps-control.pid").read_text().strip()
    assert Path(f"/proc/{pid}").exists()
    mark = Path(f"/dev/shm/gpuaas-standin-mps.{pid}")
    assert mark.exists()
    assert mps(env, stdin="quit\n").returncode == 0
    deadline = time.monotonic() + 5
    while mark.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not mark.exists() and not (root / "pipe/nvidia-cuda-mps-control.pid").exists()


def test_memory_limits_are_kept_per_identifier_and_answered_as_the_daemon_answers(dirs):
    _root, env = dirs
    assert mps(env, "-d").returncode == 0
    answers = mps(env, stdin="get_default_device_pinned_mem_limit 0\n"
                             "set_default_device_pinned_mem_limit 0 3840M\n"
                             "set_default_device_pinned_mem_limit GPU-0001 512M\n"
                             "get_default_device_pinned_mem_limit 0\n"
                             "get_default_device_pinned_mem_limit GPU-0001\n"
                             "set_default_device_pinned_mem_limit 0 10G\n"
                             "get_default_device_pinned_mem_limit 0\n"
                             "set_default_device_pinned_mem_limit 0 3.5G\n"
                             "get_default_device_pinned_mem_limit 0\n")
    assert answers.returncode == 0, answers.stderr
    # Unset; 3840M as whole G, truncated (NVIDIA's GPU Operator guide); the UUID's own limit,
    # not translated to the ordinal's; a value not "integer then G or M" refused, the limit kept.
    assert answers.stdout.splitlines() == ["0", "3G", "512M", "10G", "Invalid device pinned memory limit: 3.5G", "10G"]


def test_any_client_may_stop_the_daemon_or_change_its_defaults(dirs):
    """The control socket serves clients of every UID (the daemon starts a server per client UID),
    and nothing narrows which commands a client sends: a tenant can quit the daemon."""
    root, env = dirs
    assert mps(env, "-d").returncode == 0
    os.chmod(root, 0o755)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", str(MPS)]
    changed = subprocess.run(nobody, input="set_default_active_thread_percentage 5\nget_default_active_thread_percentage\n",
                             env=env, capture_output=True, text=True, timeout=15, check=False)
    assert (changed.returncode, changed.stdout) == (0, "5.0\n5.0\n"), changed.stderr
    stopped = subprocess.run(nobody, input="quit\n", env=env, capture_output=True, text=True, timeout=15, check=False)
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + 5
    while (root / "pipe/control").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mps(env, stdin="get_server_list\n").returncode == 1
