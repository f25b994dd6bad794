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
