#!/usr/bin/env python3
"""Seed ansible-test's pip bootstrap cache from PyPI.

ansible-test creates a virtual environment per sanity test and bootstraps pip in
it with a get-pip script that it downloads from a host outside the package
registries, which this project's machines cannot reach.  It looks in its cache
first, so this writes an equivalent script there: the same `pip install
--upgrade --force-reinstall <args>`, run from the pip wheel downloaded from PyPI.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


CACHE = Path.home() / ".ansible" / "test" / "cache"

SCRIPT = '''"""Equivalent of get-pip.py, running pip from the wheel beside this file."""
import os
import sys

WHEEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "{wheel}")

if __name__ == "__main__":
    sys.path.insert(0, WHEEL)
    from pip._internal.cli.main import main

    # get-pip's own flags: it installs setuptools and wheel only when not told otherwise;
    # this script never installs them, so the flags are dropped.
    args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    sys.exit(main(["install", "--upgrade", "--force-reinstall"] + args))
'''


def pip_version() -> str:
    import inspect

    from ansible_test._internal import python_requirements

    source = inspect.getsource(python_requirements)
    marker = "pip='"
    return source[source.index(marker) + len(marker):].split("'", maxsplit=1)[0]


def main() -> int:
    version = pip_version()
    script = CACHE / f"get_pip_{version.replace('.', '_')}.py"
    wheel = CACHE / f"pip-{version}-py3-none-any.whl"
    CACHE.mkdir(parents=True, exist_ok=True)
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(CACHE), f"pip=={version}"], check=True)
    script.write_text(SCRIPT.format(wheel=wheel.name))
    print(f"ansible-test pip {version} bootstrap: {script}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
