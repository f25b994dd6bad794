"""The agent's wheel that the service builds from its checkout's agent/ and gives the jobs that
install the agent (agent_wheel.py; issue #28, section 5): built once per source, rebuilt when the
source changes, whole when job threads build it at once, and passed as gpu_sharing_agent_wheel
unless the operator names a source of their own.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from api_helpers import add_node, set_status
from gpuaas_api import agent_wheel
from gpuaas_api.config import Config
from gpuaas_api.jobs import worker as worker_module
from gpuaas_api.jobs.queue import claim_next
from gpuaas_api.jobs.runner import RunResult
from gpuaas_api.checkout import COLLECTION_ROOT
from gpuaas_api.states import NodeStatus, Operation

THREADS = 6


@pytest.fixture
def agent_copy(tmp_path) -> Path:
    """A copy of the checkout's agent/ to change (its links to module_utils become files)."""
    return Path(shutil.copytree(agent_wheel.AGENT_DIR, tmp_path / "agent",
                                ignore=shutil.ignore_patterns(*agent_wheel.BUILD_OUTPUTS)))


@pytest.fixture
def builds(monkeypatch) -> list[Path]:
    """Each build's agent dir, as the real build runs."""
    calls: list[Path] = []
    real = agent_wheel.build_wheel

    def counted(agent_dir, scratch):
        calls.append(agent_dir)
        return real(agent_dir, scratch)

    monkeypatch.setattr(agent_wheel, "build_wheel", counted)
    return calls


def wheel_text(wheel: Path, member: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member).decode()


def test_the_wheel_is_built_once_and_reused_while_the_source_is_unchanged(tmp_path, agent_copy, builds):
    first = agent_wheel.agent_wheel(tmp_path / "data", agent_copy)
    again = agent_wheel.agent_wheel(tmp_path / "data", agent_copy)

    assert again == first and len(builds) == 1
    assert first.name == "gpuaas_agent-0.1.0-py3-none-any.whl"
    assert first.parent == tmp_path / "data" / "agent-wheel" / agent_wheel.source_digest(agent_copy)
    assert "def main" in wheel_text(first, "gpuaas_agent/cli.py")
    # The agent's modules shared with the collection are links in the checkout: the wheel has their content.
    assert wheel_text(first, "gpuaas_agent/sharing_policy.py") == (
        COLLECTION_ROOT / "plugins/module_utils/sharing_policy.py").read_text()


def test_a_changed_source_is_built_again_into_a_wheel_of_its_own(tmp_path, agent_copy, builds):
    before = agent_wheel.agent_wheel(tmp_path / "data", agent_copy)
    init = agent_copy / "src/gpuaas_agent/__init__.py"
    init.write_text(init.read_text() + "# changed\n")

    after = agent_wheel.agent_wheel(tmp_path / "data", agent_copy)

    assert after != before and len(builds) == 2
    assert wheel_text(after, "gpuaas_agent/__init__.py").endswith("# changed\n")
    assert not wheel_text(before, "gpuaas_agent/__init__.py").endswith("# changed\n")


def test_the_same_source_gives_the_same_wheel_to_the_byte_in_another_data_dir(tmp_path, agent_copy):
    # A node's copy of the wheel then changes only with the source (no restart for a new data dir).
    one = agent_wheel.agent_wheel(tmp_path / "one", agent_copy)
    time.sleep(1.1)  # a zip stores times to 2 s: builds seconds apart would differ without a fixed date
    two = agent_wheel.agent_wheel(tmp_path / "two", agent_copy)

    assert one.read_bytes() == two.read_bytes()


def test_build_outputs_beside_the_source_are_not_part_of_its_key(agent_copy):
    before = agent_wheel.source_digest(agent_copy)
    for leftover in ("build/lib/gpuaas_agent/cli.py", "src/gpuaas_agent.egg-info/PKG-INFO",
                     "src/gpuaas_agent/__pycache__/cli.cpython-311.pyc", "dist/gpuaas_agent-0.1.0.tar.gz"):
        (agent_copy / leftover).parent.mkdir(parents=True, exist_ok=True)
        (agent_copy / leftover).write_text("left by a build")

    assert agent_wheel.source_digest(agent_copy) == before


def test_job_threads_building_at_once_all_get_the_one_whole_wheel(tmp_path, agent_copy, monkeypatch):
    # Every rename waits until all threads have built: builds sharing a scratch directory or a
    # temporary name would then collide, or rename each other's files away.
    renames = threading.Barrier(THREADS)
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: (renames.wait(timeout=20), real_replace(source, target)))
    starts = threading.Barrier(THREADS)

    def start_job() -> Path:
        starts.wait()
        return agent_wheel.agent_wheel(tmp_path / "data", agent_copy)

    with ThreadPoolExecutor(THREADS) as pool:
        results = [future.result() for future in [pool.submit(start_job) for _thread in range(THREADS)]]

    wheel = results[0]
    assert results == [wheel] * THREADS
    assert zipfile.ZipFile(wheel).testzip() is None
    assert [p.name for p in (tmp_path / "data/agent-wheel").iterdir()] == [wheel.parent.name]  # no scratch left
    assert [p.name for p in wheel.parent.iterdir()] == [wheel.name]


def test_a_source_that_does_not_build_fails_in_a_sentence_with_pips_reason(tmp_path, agent_copy):
    (agent_copy / "pyproject.toml").write_text("[project\n")

    with pytest.raises(agent_wheel.AgentWheelError, match=r"building the agent's wheel from .* failed: .*"):
        agent_wheel.agent_wheel(tmp_path / "data", agent_copy)
    assert list((tmp_path / "data/agent-wheel").glob("*/*.whl")) == []


def playbooks_running_the_role() -> set[str]:
    return {path.stem for path in (COLLECTION_ROOT / "playbooks").glob("*.yml")
            if re.search(r"\bhostedai\.gpuaas\.gpu_sharing\b", path.read_text())}


def test_the_operations_given_the_wheel_are_those_whose_playbooks_run_the_role():
    assert {operation.value for operation in agent_wheel.INSTALLS_AGENT} == playbooks_running_the_role()


@pytest.mark.parametrize("operation, operator_vars, given", [
    (Operation.POOL_APPLY, {}, True),
    (Operation.ENABLE, {}, True),
    (Operation.JOIN, {"gpu_sharing_agent_pip_environment": {"PIP_INDEX_URL": "http://mirror/simple/"}}, True),
    (Operation.INIT, {}, False),
    (Operation.DEINIT, {}, False),  # removes the agent: nothing to install
    (Operation.SCAN_GPUS, {}, False),
    # The operator's own source wins: their wheel, or their hash-pinned index.
    (Operation.POOL_APPLY, {"gpu_sharing_agent_wheel": "/srv/agent.whl"}, False),
    (Operation.JOIN, {"gpu_sharing_agent_index_url": "https://mirror/simple/",
                      "gpu_sharing_agent_requirements": ["gpuaas-agent==0.1.0 --hash=sha256:" + "0" * 64]}, False),
], ids=["pool_apply", "enable", "join, with the operator's pip settings", "init", "deinit", "scan",
        "the operator's wheel", "the operator's index"])
def test_which_jobs_get_the_checkouts_wheel(tmp_path, monkeypatch, operation, operator_vars, given):
    monkeypatch.setattr(agent_wheel, "agent_wheel", lambda data_dir: data_dir / "agent-wheel/k/agent.whl")
    config = Config({"GPUAAS_DATA_DIR": str(tmp_path), "GPUAAS_ANSIBLE_EXTRA_VARS": json.dumps(operator_vars)})

    source = agent_wheel.agent_source_vars(operation.value, config)

    assert source == ({"gpu_sharing_agent_wheel": str(tmp_path / "agent-wheel/k/agent.whl")} if given else {})


def run_claimed(app, monkeypatch) -> dict:
    """Claim and execute the next job with run_playbook replaced: the extra vars it was given."""
    asked: dict = {}

    def fake_run(job_id, playbook, hosts, extravars, *args, **kwargs):
        asked.update(playbook=playbook, extravars=extravars)
        return RunResult("successful", 0, {"processed": {host.name: 1 for host in hosts}}, {}, {})

    monkeypatch.setattr(worker_module, "run_playbook", fake_run)
    with app.app_context():
        worker_module.JobWorker(app).execute(claim_next())
    return asked


def test_the_worker_gives_an_enable_the_wheel_it_built_and_an_init_none(app, client, region, monkeypatch):
    controller = add_node(client, region, name="ctrl", is_controller_node=True, is_worker_node=False)
    set_status(app, controller["id"], NodeStatus.INITIALIZED)
    client.post(f"/gpuaas/enable?controller_node_id={controller['id']}")

    enable = run_claimed(app, monkeypatch)

    wheel = Path(enable["extravars"]["gpu_sharing_agent_wheel"])
    assert enable["playbook"] == "gpuaas_enable"
    assert wheel.is_file() and wheel.parent.parent == app.config["GPUAAS"].DATA_DIR / "agent-wheel"
    worker = add_node(client, region, name="w1")
    client.get(f"/gpuaas/node/init?gpuaas_node_id={worker['id']}")
    init = run_claimed(app, monkeypatch)
    assert init["playbook"] == "node_init" and "gpu_sharing_agent_wheel" not in init["extravars"]
