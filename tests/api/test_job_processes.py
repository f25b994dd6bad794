"""A job's processes end with it: by the marker in their environment, and an SSH
multiplexing master (whose title hides its environment) by the job's directory in its title."""
from __future__ import annotations

import os
import subprocess
import sys

from gpuaas_api.jobs.runner import kill_job_processes, pid_alive


def sleeper(*argv_tail: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv_tail],
                            env=env or {"PATH": os.environ["PATH"]})


def test_marked_processes_and_masters_titled_with_the_job_dir_are_killed(tmp_path):
    private = tmp_path / "job-7-abcdef"
    marked = sleeper(env={"PATH": os.environ["PATH"], "GPUAAS_JOB_MARKER": "7-job-7-abcdef"})
    master = sleeper(f"{private}/cp/2a76a9fd23", "[mux]")  # no marker: as ssh's retitled master
    bystander = sleeper(f"{tmp_path}/job-70-abcdef/cp/ffff")  # another job's
    try:
        assert kill_job_processes("GPUAAS_JOB_MARKER=7-job-7-abcdef", str(private)) == 2
        marked.wait(5)
        master.wait(5)
        assert not pid_alive(marked.pid) and not pid_alive(master.pid)
        assert pid_alive(bystander.pid)
    finally:
        for process in (marked, master, bystander):
            process.kill()
            process.wait(5)
