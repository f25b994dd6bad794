"""The controller's SSH key pair, kept in the data dir and made on first use."""
from __future__ import annotations

import subprocess
from pathlib import Path


def controller_key_path(data_dir: Path) -> Path:
    return data_dir / "ssh" / "id_ed25519"


def controller_public_key(data_dir: Path) -> str:
    key = controller_key_path(data_dir)
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpuaas-controller", "-f", str(key)],
                       check=True)
    return key.with_suffix(".pub").read_text().strip()
