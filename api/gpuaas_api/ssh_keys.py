"""The controller's SSH identity: the key pair every job's SSH connections use.

It is one identity for the whole deployment, wherever it is kept (config.py, docs/api.md):

- ``GPUAAS_SSH_KEY_FILE``: a private key file that every service host mounts (its public key is
  derived with ``ssh-keygen -y``). The service never makes or rotates it; the operator replaces
  the file.
- ``GPUAAS_SECRET_KEY``: the key pairs live in the database (``controller_keys``), the private
  keys encrypted with that secret (Fernet), so every host that shares the database and the
  secret has the same identity. The first job or ``ssh_keys`` request makes the pair. Each host
  writes the active private key into its data directory, mode 0600, for ssh. Rotation:
  ``gpuaas-api ssh-key stage`` (a second pair, listed by ``ssh_keys`` beside the first, to be
  installed on the nodes), ``activate`` (jobs use it; the old pair is retired), ``retire``
  (the retired pairs are removed).
- neither: a key pair in this host's data directory, made on first use. One host only.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from .db import session
from .models import ControllerKey

ACTIVE, STAGED, RETIRED = "active", "staged", "retired"


class IdentityError(Exception):
    """The identity cannot be used or changed as asked; the message says why in one line."""


def shared_identity_warning(config) -> str | None:
    """Why this deployment's hosts would not share one identity, when they would not: a database
    server (not SQLite: db.py) is what several hosts share, and without either setting each host
    makes its own key in its own data directory (`ssh_keys` then depends on the host that answers)."""
    if not config.DATABASE_URL.startswith("sqlite") and not (config.SECRET_KEY or config.SSH_KEY_FILE):
        return ("neither GPUAAS_SECRET_KEY nor GPUAAS_SSH_KEY_FILE is set: this host uses its own SSH key "
                f"({controller_key_path(config.DATA_DIR)}), and another host serving the same database would use "
                "another one; set one of them before starting a second host")
    return None


def controller_key_path(data_dir: Path) -> Path:
    """The single-host key pair's private key (neither setting given)."""
    return data_dir / "ssh" / "id_ed25519"


def _generate(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpuaas-controller", "-f", str(path)],
                   check=True)


def _file_public_key(path: Path) -> str:
    done = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise IdentityError(f"GPUAAS_SSH_KEY_FILE {path}: {done.stderr.strip() or 'not a private key'}")
    return done.stdout.strip()


def _fernet(config) -> Fernet:
    return Fernet(config.SECRET_KEY.encode())


def _new_pair(config, state: str) -> ControllerKey:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "key"
        _generate(path)
        private, public = path.read_bytes(), path.with_suffix(".pub").read_text().strip()
    return ControllerKey(state=state, public_key=public, fingerprint=hashlib.sha256(public.encode()).hexdigest()[:16],
                         private_key_encrypted=_fernet(config).encrypt(private).decode())


def _row(state: str) -> ControllerKey | None:
    return session().scalar(select(ControllerKey).where(ControllerKey.state == state))


def _active(config) -> ControllerKey:
    """The active pair, made by whichever host asks first (the unique index keeps it one)."""
    row = _row(ACTIVE)
    if row is not None:
        return row
    db = session()
    db.add(_new_pair(config, ACTIVE))
    try:
        db.commit()
    except IntegrityError:  # another host made it meanwhile: use that one
        db.rollback()
    return _row(ACTIVE)


def public_keys(config) -> list[str]:
    """What ``GET /gpuaas/node/{id}/ssh_keys`` answers: the keys a node must accept (the active
    one, and during a rotation the staged one)."""
    if config.SSH_KEY_FILE:
        return [_file_public_key(Path(config.SSH_KEY_FILE))]
    if config.SECRET_KEY:
        keys = [_active(config).public_key]
        staged = _row(STAGED)
        return keys + ([staged.public_key] if staged else [])
    path = controller_key_path(config.DATA_DIR)
    if not path.exists():
        _generate(path)
    return [path.with_suffix(".pub").read_text().strip()]


def private_key_file(config) -> Path:
    """The private key this host's jobs give ssh (needs an app context in database mode)."""
    if config.SSH_KEY_FILE:
        return Path(config.SSH_KEY_FILE)
    if not config.SECRET_KEY:
        public_keys(config)  # made on first use
        return controller_key_path(config.DATA_DIR)
    row = _active(config)
    try:
        private = _fernet(config).decrypt(row.private_key_encrypted.encode())
    except InvalidToken as error:
        raise IdentityError("GPUAAS_SECRET_KEY does not decrypt the controller key in the database "
                            "(the secret differs from the one the key was stored with)") from error
    path = config.DATA_DIR / "ssh" / f"controller-{row.fingerprint}"
    if not path.exists() or path.read_bytes() != private:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            handle.write(private)
        os.replace(partial, path)
    _remove_retired_key_files(path.parent)
    return path


def _remove_retired_key_files(directory: Path) -> None:
    """Delete this host's copies of private keys whose pairs are no longer in the database (retired
    and removed): a removed pair must not live on in every host's data directory. A pair still
    stored, even retired, keeps its copy: a job that started before the switch may be using it."""
    stored = set(session().scalars(select(ControllerKey.fingerprint)))
    for copy in directory.glob("controller-*"):
        if copy.name.removeprefix("controller-") not in stored and not copy.name.endswith(".tmp"):
            copy.unlink(missing_ok=True)


def _require_database_mode(config) -> None:
    if config.SSH_KEY_FILE:
        raise IdentityError("the controller key is GPUAAS_SSH_KEY_FILE: rotate it by replacing the file on every host")
    if not config.SECRET_KEY:
        raise IdentityError("rotation needs the key in the database: set GPUAAS_SECRET_KEY on every host")


def stage(config) -> str:
    """Make the next pair; its public key is listed beside the active one until activated."""
    _require_database_mode(config)
    _active(config)
    if _row(STAGED) is not None:
        raise IdentityError("a staged key exists already: activate it, or retire it with `ssh-key retire --staged`")
    db = session()
    row = _new_pair(config, STAGED)
    db.add(row)
    db.commit()
    return row.public_key


def activate(config) -> str:
    """Switch: the staged pair becomes active, the active one retired."""
    _require_database_mode(config)
    staged = _row(STAGED)
    if staged is None:
        raise IdentityError("no staged key: `gpuaas-api ssh-key stage` makes one")
    db = session()
    active = _row(ACTIVE)
    if active is not None:
        active.state = RETIRED
        db.flush()
    staged.state = ACTIVE
    db.commit()
    return staged.public_key


def retire(config, staged: bool = False) -> int:
    """Remove the retired pairs (or, with ``staged``, the staged one); how many were removed."""
    _require_database_mode(config)
    db = session()
    removed = db.execute(delete(ControllerKey).where(ControllerKey.state == (STAGED if staged else RETIRED))).rowcount
    db.commit()
    return removed
