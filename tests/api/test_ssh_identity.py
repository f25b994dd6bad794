"""One SSH identity for the deployment: every service host on one database answers the same
`ssh_keys` and gives its jobs the same private key (issue #13, section 1).

Two hosts are two applications with their own data directories on one database (SQLite, or
PostgreSQL with GPUAAS_TEST_DATABASE_URL).
"""
from __future__ import annotations

import stat
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from gpuaas_api import create_app
from gpuaas_api.config import Config
from gpuaas_api.db import session
from gpuaas_api.models import ControllerKey
from gpuaas_api.ssh_keys import IdentityError, activate, private_key_file, public_keys, retire, stage

SECRET = Fernet.generate_key().decode()


def host(tmp_path, url: str, name: str, **env):
    config = Config({"GPUAAS_DATA_DIR": str(tmp_path / name), "GPUAAS_DATABASE_URL": url, **env})
    return config, create_app(config)


def test_two_hosts_share_one_identity_from_the_database(tmp_path, migrated_database_url):
    first, first_app = host(tmp_path, migrated_database_url, "host-a", GPUAAS_SECRET_KEY=SECRET)
    second, second_app = host(tmp_path, migrated_database_url, "host-b", GPUAAS_SECRET_KEY=SECRET)

    with first_app.app_context():
        keys = public_keys(first)
        first_key = private_key_file(first)
    with second_app.app_context():
        assert public_keys(second) == keys
        second_key = private_key_file(second)

    assert len(keys) == 1 and keys[0].startswith("ssh-ed25519 ")
    assert first_key != second_key and first_key.read_bytes() == second_key.read_bytes()
    assert stat.S_IMODE(second_key.stat().st_mode) == 0o600
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(second_key)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == keys[0].split()[:2]  # the private key is that public key's
    with first_app.app_context():
        stored = session().scalar(select(ControllerKey.private_key_encrypted))
        assert "PRIVATE KEY" not in stored  # encrypted at rest
        assert session().scalar(select(ControllerKey.state)) == "active"


def test_another_secret_cannot_use_the_stored_key(tmp_path, migrated_database_url):
    first, first_app = host(tmp_path, migrated_database_url, "host-a", GPUAAS_SECRET_KEY=SECRET)
    with first_app.app_context():
        public_keys(first)
    other, other_app = host(tmp_path, migrated_database_url, "host-b", GPUAAS_SECRET_KEY=Fernet.generate_key().decode())
    with other_app.app_context(), pytest.raises(IdentityError, match="does not decrypt the controller key"):
        private_key_file(other)


def test_a_bad_secret_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="GPUAAS_SECRET_KEY must be 32 url-safe base64-encoded bytes"):
        Config({"GPUAAS_DATA_DIR": str(tmp_path), "GPUAAS_SECRET_KEY": "not-a-fernet-key"})


def test_rotation_stage_activate_retire(tmp_path, migrated_database_url):
    config, app = host(tmp_path, migrated_database_url, "host-a", GPUAAS_SECRET_KEY=SECRET)
    other, other_app = host(tmp_path, migrated_database_url, "host-b", GPUAAS_SECRET_KEY=SECRET)
    with app.app_context():
        (old,) = public_keys(config)
        old_copy = private_key_file(config)
        old_file = old_copy.read_bytes()
        new = stage(config)
        # Both are listed while nodes are given the new one; jobs still use the old one.
        assert public_keys(config) == [old, new]
        assert private_key_file(config).read_bytes() == old_file
        with pytest.raises(IdentityError, match="a staged key exists already"):
            stage(config)

        assert activate(config) == new
    with other_app.app_context():  # the other host switches too
        assert public_keys(other) == [new]
        assert private_key_file(other).read_bytes() != old_file
    with app.app_context():
        # Retired but still stored: its copy stays (a job started before the switch may use it).
        new_copy = private_key_file(config)
        assert new_copy != old_copy and old_copy.exists()
        assert retire(config) == 1
        assert session().scalars(select(ControllerKey.state)).all() == ["active"]
        # Removed: the next job's key lookup deletes this host's copy of it.
        assert private_key_file(config) == new_copy and not old_copy.exists()
        with pytest.raises(IdentityError, match="no staged key"):
            activate(config)


def test_a_mounted_key_file_is_used_as_it_is(tmp_path, migrated_database_url):
    key = tmp_path / "mounted" / "id_ed25519"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "shared", "-f", str(key)], check=True)
    config, app = host(tmp_path, migrated_database_url, "host-a", GPUAAS_SSH_KEY_FILE=str(key))
    with app.app_context():
        (shown,) = public_keys(config)
        assert shown.split()[:2] == key.with_suffix(".pub").read_text().split()[:2]  # derived from the private key
        assert private_key_file(config) == key
        with pytest.raises(IdentityError, match="rotate it by replacing the file"):
            stage(config)
    broken = tmp_path / "not-a-key"
    broken.write_text("nonsense\n")
    config, app = host(tmp_path, migrated_database_url, "host-b", GPUAAS_SSH_KEY_FILE=str(broken))
    with app.app_context(), pytest.raises(IdentityError, match="GPUAAS_SSH_KEY_FILE"):
        public_keys(config)


def test_without_either_setting_rotation_says_what_it_needs(tmp_path, migrated_database_url):
    config, app = host(tmp_path, migrated_database_url, "host-a")
    with app.app_context():
        assert private_key_file(config) == tmp_path / "host-a" / "ssh" / "id_ed25519"
        with pytest.raises(IdentityError, match="set GPUAAS_SECRET_KEY on every host"):
            stage(config)


def test_the_cli_rotates_and_shows(tmp_path, migrated_database_url):
    env = {"GPUAAS_DATA_DIR": str(tmp_path / "cli"), "GPUAAS_DATABASE_URL": migrated_database_url,
           "GPUAAS_SECRET_KEY": SECRET, "PATH": "/usr/bin:/bin"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "gpuaas_api.cli", "ssh-key", *args], capture_output=True,
                              text=True, env=env, check=False)

    shown = cli("show")
    staged = cli("stage")
    assert shown.returncode == 0 and staged.returncode == 0 and "Add it to every node" in staged.stderr
    assert cli("show").stdout.splitlines() == [shown.stdout.strip(), staged.stdout.strip()]
    assert cli("activate").stdout.strip() == staged.stdout.strip()
    assert "removed 1 key pair(s)" in cli("retire").stderr
    assert cli("activate").returncode == 1


def test_a_shared_database_without_a_shared_identity_is_warned_of(tmp_path):
    from gpuaas_api.ssh_keys import shared_identity_warning

    postgres = "postgresql+psycopg://gpuaas@127.0.0.1/gpuaas"
    warning = shared_identity_warning(Config({"GPUAAS_DATA_DIR": str(tmp_path), "GPUAAS_DATABASE_URL": postgres}))
    assert "neither GPUAAS_SECRET_KEY nor GPUAAS_SSH_KEY_FILE is set" in warning and str(tmp_path / "ssh") in warning
    for shared in ({"GPUAAS_SECRET_KEY": SECRET}, {"GPUAAS_SSH_KEY_FILE": str(tmp_path / "mounted")}):
        assert shared_identity_warning(Config({"GPUAAS_DATA_DIR": str(tmp_path), "GPUAAS_DATABASE_URL": postgres,
                                               **shared})) is None
    assert shared_identity_warning(Config({"GPUAAS_DATA_DIR": str(tmp_path)})) is None  # SQLite: one host
