"""Where the service finds the collection it runs: the checkout it is installed from.

The repository root holds galaxy.yml, playbooks/, roles/, plugins/ and agent/ (the service runs its
playbooks from there and builds the agent's wheel from there).
"""
from __future__ import annotations

from pathlib import Path

COLLECTION_ROOT = Path(__file__).resolve().parents[2]
