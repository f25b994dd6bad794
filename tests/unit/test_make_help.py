"""`make help` lists every target: each rule a user can name carries a `## ` line of help."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAKEFILE = (REPO / "Makefile").read_text(encoding="utf-8")

# A rule's first line: `name: prerequisites`, not an assignment (`:=`) or a target-specific
# variable (`name: export VAR := …`).
RULE = re.compile(r"^([a-zA-Z0-9_-]+):(?!=)[^=#\n]*(#.*)?$", re.MULTILINE)


def targets() -> dict[str, str]:
    """Every named target of the Makefile (file targets, under $(…), left out) and its help."""
    found = {}
    for match in RULE.finditer(MAKEFILE):
        name, comment = match.groups()
        found[name] = comment[3:].strip() if comment and comment.startswith("## ") else ""
    return found


def phony() -> set[str]:
    declaration = re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", MAKEFILE, re.MULTILINE).group(1)
    return set(declaration.replace("\\\n", " ").split())


def test_every_target_has_a_help_line():
    missing = [name for name, text in targets().items() if not text]
    assert not missing, f"targets without a `## ` help comment: {missing}"


def test_every_target_is_phony_and_every_phony_target_exists():
    assert phony() == set(targets())


def test_make_help_prints_every_target():
    environment = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    printed = subprocess.run(["make", "--no-print-directory", "-s", "help"], cwd=REPO, env=environment,
                             capture_output=True, text=True, check=True, timeout=60).stdout
    listed = {line.split()[1]: line for line in printed.splitlines() if line.startswith("make ")}
    assert set(listed) == set(targets())
    for name, text in targets().items():
        assert text in listed[name]
