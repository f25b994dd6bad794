"""The built collection: what the tarball holds, and the docs ansible-doc shows from the installed copy."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (REPO / "plugins/modules").glob("*.py"))
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "meta/argument_specs.yml").exists())
ANSIBLE_DOC = Path(sys.executable).parent / "ansible-doc"


def ansible_doc(installed: Path, *args: str) -> dict:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(installed))
    completed = subprocess.run([str(ANSIBLE_DOC), "--json", *args], capture_output=True, text=True, env=env,
                               check=True)
    return json.loads(completed.stdout)


def test_tarball_holds_collection_content_only(tarball):
    with tarfile.open(tarball) as archive:
        top_dirs = {name.split("/")[0] for name in archive.getnames()}
    assert {"plugins", "roles", "playbooks", "meta", "inventories", "MANIFEST.json", "FILES.json"} <= top_dirs
    assert not top_dirs & {"api", "tests", "bench", "deploy", "molecule", "requirements", ".ci", ".venv", ".build", ".git", "Makefile"}


def test_requires_ansible_matches_the_pinned_core():
    pinned = re.search(r"^ansible-core==(\d+)\.(\d+)\.", (REPO / "requirements" / "runtime.in").read_text(), re.M)
    requires = yaml.safe_load((REPO / "meta/runtime.yml").read_text())["requires_ansible"]
    major, minor = int(pinned.group(1)), int(pinned.group(2))
    assert requires == f">={major}.{minor}.0,<{major}.{minor + 1}.0"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_has_full_docs(installed, module):
    doc = ansible_doc(installed, "-t", "module", f"hostedai.gpuaas.{module}")[f"hostedai.gpuaas.{module}"]

    assert doc["doc"]["short_description"]
    assert doc["doc"]["attributes"]["check_mode"]["support"] == "full"
    assert doc["examples"].strip().startswith("- name:")
    assert f"hostedai.gpuaas.{module}" in doc["examples"]
    assert doc["return"], "RETURN is documented"
    for name, spec in doc["return"].items():
        assert spec.get("returned") and spec.get("type"), f"{module} RETURN {name} lacks returned/type"


@pytest.mark.parametrize("role", ROLES)
def test_every_role_shows_its_argument_spec(installed, role):
    doc = ansible_doc(installed, "-t", "role", f"hostedai.gpuaas.{role}")[f"hostedai.gpuaas.{role}"]
    options = doc["entry_points"]["main"]["options"]

    assert options, f"{role} declares its variables"
    prefix = f"{role}_"  # the prefix ansible-lint enforces for collection roles
    assert all(name.startswith(prefix) for name in options), f"{role} variables carry the prefix {prefix}"
    assert all(spec.get("description") for spec in options.values())
