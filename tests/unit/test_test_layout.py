"""The test directories' layout: pytest collects them together.

No test file imports a conftest or another test module (shared helpers live in tests/support,
fixtures in conftest.py files, which pytest finds by itself), and no two test modules share a
file name (pytest's default import mode imports each by its bare name)."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "bench")  # bench/ drives the tests' harnesses too
# Text every such import holds (a module's name after import, from, a comma or a parenthesis, or on a
# line of its own in a parenthesised list): only a file with some is parsed (all of them: 0.14 s).
CANDIDATE = re.compile(r"conftest|(?:import|from|,|\()\s*test_|^\s*test_\w+\s*[,)]?\s*$", re.MULTILINE)


def forbidden_imports(source: str) -> list[str]:
    """The modules ``source`` imports that are a conftest or a test module, wherever the import is."""
    if not CANDIDATE.search(source):
        return []
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # `from . import conftest` names the module in the imported names.
            names = [node.module] if node.module else [alias.name for alias in node.names]
        else:
            continue
        found += [name for name in names if name.split(".")[0] == "conftest" or name.split(".")[0].startswith("test_")]
    return found


def python_files() -> list[Path]:
    return sorted(path for top in SCANNED for path in (REPO / top).rglob("*.py"))


@pytest.mark.parametrize("source, expected", [
    ("from conftest import ADMIN, assert_error\n", ["conftest"]),
    ("import conftest\n", ["conftest"]),
    ("from .conftest import create\n", ["conftest"]),
    ("from . import conftest\n", ["conftest"]),
    ("from test_operations import add_node\n", ["test_operations"]),
    ("import test_first_start as first\n", ["test_first_start"]),
    ("def test_x():\n    from test_kubelet_device_plugins import RESOURCE, Plugin\n", ["test_kubelet_device_plugins"]),
    ("import os, conftest\n", ["conftest"]),
    ("import os, test_serve\n", ["test_serve"]),
    ("from . import (\n    models,\n    test_pools,\n)\n", ["test_pools"]),
    ("from api_helpers import ADMIN\nfrom service import call\nimport pytest\n", []),
    ("from gpuaas_api.jobs import test_conn\nimport testinfra\nfrom waiting import wait_for\n", []),
], ids=["from-conftest", "import-conftest", "relative-conftest", "from-dot-import-conftest", "from-test-module",
        "import-test-module-as", "inside-a-function", "one-of-several", "one-of-several-test",
        "parenthesised", "support-modules", "names-alike"])
def test_the_check_finds_imports_of_conftest_and_test_modules(source, expected):
    assert forbidden_imports(source) == expected


def test_no_file_imports_a_conftest_or_a_test_module():
    offenders = {str(path.relative_to(REPO)): found for path in python_files()
                 if (found := forbidden_imports(path.read_text(encoding="utf-8")))}
    assert offenders == {}, "move what they import to tests/support (fixtures to a conftest.py)"


def duplicate_test_names(paths) -> dict[str, list[str]]:
    """Test modules' file names found in more than one directory (conftest.py may be in each)."""
    by_name = defaultdict(list)
    for path in paths:
        if path.name.startswith("test_"):
            by_name[path.name].append(str(path.parent))
    return {name: places for name, places in by_name.items() if len(places) > 1}


def test_the_name_check_finds_a_test_module_named_twice():
    paths = [Path("tests/api/test_a.py"), Path("tests/e2e/test_a.py"), Path("tests/api/conftest.py"),
             Path("tests/e2e/conftest.py"), Path("tests/unit/test_b.py")]
    assert duplicate_test_names(paths) == {"test_a.py": ["tests/api", "tests/e2e"]}


def test_no_two_test_modules_share_a_file_name():
    assert duplicate_test_names((REPO / "tests").rglob("test_*.py")) == {}
