"""The fuzzed contract: schemathesis against a real `gpuaas-api serve` and its OpenAPI document.

The service runs on a fresh SQLite database with no job workers (GPUAAS_JOB_WORKERS=0): generated
nodes carry arbitrary addresses, and no job may ever try to reach one.  Schemathesis runs every
check over the examples, coverage and fuzzing phases, deterministically, and fails the test on
any failure.  The stateful phase follows the OpenAPI links the document declares for the main
flows (schemas.LINKS: create a region or a node, then get, edit and delete it) and those
schemathesis infers; clusters, GPUs and pools come into being only through jobs, which do not run
here (tests/api and tests/e2e cover their flows).

Everything the run writes (the service's data dir and access log, schemathesis's reports,
Hypothesis's storage) is under the test's temporary directory: `make test-contract` puts it
in .build/pytest-contract.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from served import serve
from service import VENV_BIN

HERE = Path(__file__).resolve().parent

# The generated requests: every phase (the stateful one over the document's links), every check.
# The coverage phase is deterministic by design (about 1,500 requests here); fuzzing adds
# MAX_EXAMPLES per operation (54 operations).  A fixed seed and --generation-deterministic
# make two runs send the same requests to the same code (but for times near now and the ids
# the service makes up, such as scan ids).
SEED = 20261202
MAX_EXAMPLES = 20
MIN_REQUESTS = 1000


def schemathesis_command(base: str, token: str, report_dir: Path) -> list[str]:
    return [
        str(VENV_BIN / "schemathesis"), "--no-color", "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{base}/api/openapi.json",
        "--header", f"Authorization: Bearer {token}",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--generation-deterministic",
        "--continue-on-failure",
        "--workers", "1",
        "--request-timeout", "10",
        "--report", "json,junit",
        "--report-dir", str(report_dir),
    ]


def test_the_service_keeps_its_openapi_contract_under_generated_requests(tmp_path):
    with serve(tmp_path) as service:
        before = len(service.access_log.read_text().splitlines())

        # Hypothesis keeps its storage in the working directory unless told: here, the test's.  A fixed
        # hash seed: schemathesis orders the operations of a dependency layer by way of sets of strings.
        st_env = dict(service.env, HYPOTHESIS_STORAGE_DIRECTORY=str(tmp_path / "hypothesis"), PYTHONHASHSEED="0")
        report_dir = tmp_path / "report"
        command = schemathesis_command(service.base, service.token, report_dir)
        started, cpu_started = time.monotonic(), os.times()
        result = subprocess.run(command, cwd=tmp_path, env=st_env, check=False)
        cpu = os.times()
        wall = time.monotonic() - started
        child_cpu = (cpu.children_user - cpu_started.children_user) + (cpu.children_system - cpu_started.children_system)

    requests = len(service.access_log.read_text().splitlines()) - before
    report = json.loads(next(report_dir.glob("json-*.json")).read_text())
    print(f"\ncontract: {requests} requests answered by the service, {report['test_cases']['generated']} test cases "
          f"generated; schemathesis {wall:.1f} s wall, {child_cpu:.1f} s CPU (exit {result.returncode}); "
          f"reports in {report_dir}")
    if result.returncode != 0:
        pytest.fail(f"schemathesis failed (exit {result.returncode}): its output is above; the service's, with "
                    f"any traceback, in {tmp_path / 'serve.log'}", pytrace=False)
    assert requests >= MIN_REQUESTS, f"only {requests} requests ran (at least {MIN_REQUESTS} wanted)"
