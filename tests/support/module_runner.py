"""The collection's modules run as Ansible runs them: a subprocess fed its arguments as JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / ".build" / "collections"  # the checkout as hostedai.gpuaas (make collection)


def run_module(name: str, args: dict, env: dict | None = None, tmp_path: Path | None = None) -> dict:
    """Run plugins/modules/<name>.py with ``args``; return its JSON result."""
    module = REPO / "plugins" / "modules" / f"{name}.py"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("FAKE_NVML", "LD_LIBRARY_PATH"))}
    environment["PYTHONPATH"] = str(COLLECTIONS)
    environment.update(env or {})
    completed = subprocess.run(
        [sys.executable, str(module)],
        input=json.dumps({"ANSIBLE_MODULE_ARGS": {"_ansible_check_mode": False, **args}}),
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60, check=False,
    )
    try:
        return json.loads(completed.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"{name} printed no JSON (rc {completed.returncode}): {completed.stdout!r} {completed.stderr!r}")


def run_local_play(tmp_path: Path, playbook: str, variables: dict, check: bool = True,
                   env: dict | None = None) -> tuple[int, str]:
    """ansible-playbook (--check unless told) on localhost, with ``variables`` as extra vars and nothing
    gathered: a role's checks run as Ansible runs them, without reaching any host. Returns (rc, output)."""
    (tmp_path / "play.yml").write_text(playbook)
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    home = tmp_path / "ansible-home"
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_HOME": str(home),
           "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
           "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "ANSIBLE_LOCALHOST_WARNING": "0", **(env or {})}
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
                           *(["--check"] if check else []), "-e", "@vars.json", "play.yml"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    return done.returncode, done.stdout + done.stderr
