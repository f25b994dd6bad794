"""The service's shape, checked: the layers in .importlinter (the job engine imports no operation,
the domain no HTTP), and no circle in the import graph. Each check is also run on a copy of the
service with one wrong import added, and must fail there."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(api_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter"), "--no-cache"],
                          cwd=api_dir, env={"PYTHONPATH": str(api_dir), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120, check=False)


def circles(package: str) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan's algorithm)."""
    graph = grimp.build_graph(package, cache_dir=None)  # no cache: the copy under test changes between runs
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for module in sorted(graph.modules):
        if module not in order:
            visit(module)
    return found


@pytest.fixture
def service_copy(tmp_path) -> Path:
    """A copy of api/ (the gpuaas_api package) to break."""
    shutil.copytree(ROOT / "api" / "gpuaas_api", tmp_path / "gpuaas_api", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def add_import(package_dir: Path, module: str, line: str) -> None:
    path = package_dir / "gpuaas_api" / module
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_contracts_are_kept():
    result = lint_imports(ROOT / "api")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") == 3


@pytest.mark.parametrize("module, line, contract", [
    ("jobs/queue.py", "from ..pools import get_pool  # noqa", "The job engine imports no operation"),
    ("jobs/finalize.py", "from ..metrics import collector  # noqa", "The job engine imports no operation"),
    ("pools.py", "from .errors import ApiError  # noqa", "The domain never imports HTTP"),
    ("operations/nodes.py", "from ..resources import nodes  # noqa", "HTTP over the operations"),
], ids=["engine-imports-pools", "engine-imports-metrics", "domain-imports-http-errors", "operation-imports-a-route"])
def test_a_wrong_import_breaks_a_contract(service_copy, module, line, contract):
    add_import(service_copy, module, line)
    result = lint_imports(service_copy)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout


def test_the_import_graph_has_no_circle():
    sys.path.insert(0, str(ROOT / "api"))
    assert circles("gpuaas_api") == []


def test_a_circle_is_found(service_copy, monkeypatch):
    # jobs.queue already imports jobs.finalize; finalize importing queue closes a circle.
    add_import(service_copy, "jobs/finalize.py", "from . import queue  # noqa")
    for name in [name for name in sys.modules if name == "gpuaas_api" or name.startswith("gpuaas_api.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(service_copy))
    assert ["gpuaas_api.jobs.finalize", "gpuaas_api.jobs.queue"] in circles("gpuaas_api")


def shared_modules(package_dir: Path) -> dict[str, Path | None]:
    """Each module of a package's shared/ (or the agent's linked modules): where its link points, or None."""
    return {path.name: path.resolve() if path.is_symlink() else None
            for path in sorted(package_dir.glob("*.py")) if path.name != "__init__.py"}


def test_the_shared_code_is_links_to_module_utils():
    module_utils = ROOT / "plugins" / "module_utils"
    links = {**shared_modules(ROOT / "api" / "gpuaas_api" / "shared"),
             **{name: target for name, target in shared_modules(ROOT / "agent" / "src" / "gpuaas_agent").items()
                if name in ("sharing_policy.py", "nvml_access.py")}}
    assert set(links) == {"sharing_policy.py", "inventory_names.py", "nvml_access.py"}
    assert all(target is not None and target.parent == module_utils for target in links.values()), links
    # No second way: nothing in the service loads a file by path.
    assert not [path for path in (ROOT / "api" / "gpuaas_api").rglob("*.py") if "spec_from_file_location" in path.read_text()]


def test_a_copied_shared_module_is_not_a_link(tmp_path):
    shutil.copy(ROOT / "plugins" / "module_utils" / "sharing_policy.py", tmp_path / "sharing_policy.py")
    assert shared_modules(tmp_path) == {"sharing_policy.py": None}
