"""The gpuaas agent's wheel, which the service builds from its own checkout's agent/ for the nodes.

The jobs whose playbooks install the agent get it as the gpu_sharing role's
`gpu_sharing_agent_wheel`, so that nodes run the agent of this very checkout and nothing is
installed by a bare name from a public index, where anyone may register it (issue #28, section 5).
An operator's own source in GPUAAS_ANSIBLE_EXTRA_VARS (a wheel, or a hash-pinned index) wins.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from fnmatch import fnmatch
from pathlib import Path

from .checkout import COLLECTION_ROOT
from .states import Operation

AGENT_DIR = COLLECTION_ROOT / "agent"
# The playbooks that run the gpu_sharing role (tests/api/test_agent_wheel.py reads playbooks/ to check).
INSTALLS_AGENT = frozenset({Operation.ENABLE, Operation.JOIN, Operation.POOL_APPLY})
# The role variables that name the agent's source: an operator who sets any of them chooses it.
SOURCE_VARIABLES = frozenset({"gpu_sharing_agent_wheel", "gpu_sharing_agent_index_url",
                              "gpu_sharing_agent_requirements"})
# What setuptools leaves beside the sources it builds: not source, so not in the wheel's key.
BUILD_OUTPUTS = ("__pycache__", "build", "dist", "*.egg-info")
# The zip entries' timestamp (1980-01-01, the earliest a zip holds): one source, one wheel to the
# byte, so a rebuild in another data dir changes nothing on the nodes.
SOURCE_DATE_EPOCH = "315532800"


class AgentWheelError(RuntimeError):
    """The agent's wheel could not be built from the checkout."""


def agent_source_vars(operation: str, config) -> dict:
    """The role variables that give a job's nodes this checkout's agent: none for a playbook that
    does not install it, or when the operator's extra vars name a source of their own."""
    if Operation(operation) not in INSTALLS_AGENT or SOURCE_VARIABLES & set(config.ANSIBLE_EXTRA_VARS):
        return {}
    return {"gpu_sharing_agent_wheel": str(agent_wheel(config.DATA_DIR))}


def source_digest(agent_dir: Path) -> str:
    """A digest of the agent's source: each file's path and content (links followed: the agent's
    modules shared with the collection are links to plugins/module_utils)."""
    digest = hashlib.sha256()
    for path in sorted(agent_dir.rglob("*")):
        relative = path.relative_to(agent_dir)
        if path.is_file() and not any(fnmatch(part, pattern) for part in relative.parts for pattern in BUILD_OUTPUTS):
            digest.update(str(relative).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:32]


def agent_wheel(data_dir: Path, agent_dir: Path = AGENT_DIR) -> Path:
    """The wheel of ``agent_dir``, in data_dir/agent-wheel/<digest of its source>/: built the first
    time that source is asked for, then reused.

    Job threads and processes sharing the data dir may build it at once: each builds in a directory
    of its own and renames its wheel into place (os.replace is atomic, and the wheels are the same),
    so a wheel found there is always whole."""
    target = data_dir / "agent-wheel" / source_digest(agent_dir)
    built = sorted(target.glob("*.whl"))
    if built:
        return built[0]
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        wheel = build_wheel(agent_dir, Path(scratch))
        os.replace(wheel, target / wheel.name)
    return target / wheel.name


def build_wheel(agent_dir: Path, scratch: Path) -> Path:
    """pip wheel of a copy of ``agent_dir`` (setuptools writes build/ and *.egg-info beside the
    sources, and the service's user may not write to the checkout), with this service's own
    setuptools and no index: nothing is downloaded."""
    source = scratch / "agent"
    shutil.copytree(agent_dir, source, ignore=shutil.ignore_patterns(*BUILD_OUTPUTS))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "--wheel-dir", str(scratch / "out"), str(source)],
        env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True, text=True, check=False)
    wheels = sorted((scratch / "out").glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise AgentWheelError(f"building the agent's wheel from {agent_dir} failed: "
                              f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return wheels[0]
