"""The agent runs on the oldest Python of a listed node OS: Ubuntu 22.04's CPython 3.10 (issue #31, part 2).

Two checks hold agent/pyproject.toml's ``requires-python`` to the truth:

- vermin (requirements/dev.in) finds no construct newer than 3.10 in the agent's code, the modules it
  shares with the collection (links into plugins/module_utils) included;
- every dependency the agent declares is locked (requirements/runtime.txt) at a version with a wheel
  for CPython 3.10, as ``pip download --python-version 3.10 --only-binary=:all:`` resolves it with the
  lock's hashes.

vermin's flags (its README, "Usage"): ``-t=3.10-`` targets 3.10 and later, ``--violations`` prints only
the lines that break the target and exits non-zero when any does, ``--eval-annotations`` counts
annotations too, ``--no-tips`` drops its advice.  A positive control shows each check can fail.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "agent"
OLDEST = "3.10"  # Ubuntu 22.04's python3 (roles/node_init's node_init_supported_distributions)
# pip's downloads stay in the checkout, as every cache of `make test` does.
DOWNLOADS = REPO / ".build" / "agent-python"
VERMIN = (sys.executable, "-c", "import sys, vermin; sys.argv[0] = 'vermin'; sys.exit(vermin.main())")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def agent_python_files() -> list[Path]:
    """The agent's sources, each shared module by the file it links to in plugins/module_utils."""
    return sorted({path.resolve() for path in (AGENT / "src").rglob("*.py")})


def vermin(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*VERMIN, f"-t={OLDEST}-", "--no-tips", "--violations", "--eval-annotations",
                           *map(str, paths)], capture_output=True, text=True, check=False)


def agent_dependencies() -> list[str]:
    """The project names agent/pyproject.toml depends on."""
    project = tomllib.loads((AGENT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [normalise(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]) for requirement in project["dependencies"]]


def locked_entries(names: list[str]) -> dict[str, str]:
    """requirements/runtime.txt's entries (name==version and its --hash lines) of ``names``."""
    text = (REPO / "requirements" / "runtime.txt").read_text(encoding="utf-8")
    entries = {}
    for entry in re.split(r"\n(?=[a-z0-9])", text):
        match = re.match(r"([a-z0-9][a-z0-9._-]*)==", entry)
        if match and normalise(match.group(1)) in names:
            # The pin and its hashes, without the "# via" comments.
            entries[normalise(match.group(1))] = "\n".join(
                line for line in entry.splitlines() if not line.strip().startswith("#"))
    return entries


def pip_download_for_oldest(requirements: Path, dest: Path, *flags: str) -> subprocess.CompletedProcess:
    """pip download of ``requirements``' wheels for CPython 3.10 (this machine's platform: the nodes')."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "--python-version", OLDEST, "--implementation", "cp", *flags,
         "-r", str(requirements), "-d", str(dest)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PIP_CACHE_DIR": str(REPO / ".build" / "cache" / "pip")})


def test_the_agent_declares_the_oldest_python_it_runs_on():
    project = tomllib.loads((AGENT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == f">={OLDEST}"


def test_vermin_finds_nothing_newer_than_the_oldest_python_in_the_agent():
    files = agent_python_files()
    # The shared modules are read where they live (vermin does not follow a link by itself).
    assert any("plugins/module_utils" in str(path) for path in files)
    result = vermin(*files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("source", ["import tomllib\n",
                                    "try:\n    pass\nexcept* ValueError:\n    pass\n"],
                         ids=["tomllib (3.11)", "except* (3.11)"])
def test_vermin_refuses_what_needs_a_newer_python(tmp_path, source):
    snippet = tmp_path / "newer.py"
    snippet.write_text(source)
    result = vermin(snippet)
    assert result.returncode != 0 and "3.11" in result.stdout, result.stdout + result.stderr


def test_every_agent_dependency_is_locked():
    names = agent_dependencies()
    assert sorted(locked_entries(names)) == sorted(names)


@pytest.fixture(scope="module")
def downloads() -> Path:
    shutil.rmtree(DOWNLOADS, ignore_errors=True)
    DOWNLOADS.mkdir(parents=True)
    return DOWNLOADS


def test_the_agents_locked_dependencies_have_wheels_for_the_oldest_python(downloads):
    requirements = downloads / "agent-requirements.txt"
    requirements.write_text("\n".join(locked_entries(agent_dependencies()).values()) + "\n")
    result = pip_download_for_oldest(requirements, downloads / "wheels", "--require-hashes")
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = sorted(path.name for path in (downloads / "wheels").glob("*.whl"))
    assert len(wheels) == len(agent_dependencies()), wheels


def test_pip_refuses_a_pin_without_a_wheel_for_the_oldest_python(downloads):
    # numpy 2.3.0 requires Python 3.11: it has no cp310 wheel.
    requirements = downloads / "control.txt"
    requirements.write_text("numpy==2.3.0\n")
    result = pip_download_for_oldest(requirements, downloads / "control")
    assert result.returncode != 0 and "numpy==2.3.0" in result.stderr, result.stdout + result.stderr
