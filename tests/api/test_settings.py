"""The settings table (config.SETTINGS): parsing every setting, its documents, and its coverage.

No database: Config is built from dicts.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from gpuaas_api import settings_doc
from gpuaas_api.config import SETTINGS, Config, SettingError
from gpuaas_api.states import ClusterStatus

API_SOURCE = Path(__file__).resolve().parents[2] / "api/gpuaas_api"
BY_NAME = {setting.name: setting for setting in SETTINGS}
FERNET_KEY = Fernet.generate_key().decode()

# A setting that needs another to be accepted at all.
COMPANIONS = {
    "GPUAAS_AGENT_PORT": {"GPUAAS_AGENT_TOKEN": "t"},
    "GPUAAS_AGENT_TOKEN": {"GPUAAS_AGENT_PORT": "9460"},
    "GPUAAS_AGENT_TOKEN_FILE": {"GPUAAS_AGENT_PORT": "9460"},
    "GPUAAS_JOB_LEASE_SECONDS": {"GPUAAS_JOB_LEASE_RENEW_SECONDS": "0.5"},
    "GPUAAS_NODE_BATCH_QUIET_SECONDS": {"GPUAAS_NODE_BATCH_WINDOW_SECONDS": "100"},
}

# (variable, its text, the value Config holds); "" is the default.
GOOD = [
    ("GPUAAS_BIND", "0.0.0.0:9000", "0.0.0.0:9000"), ("GPUAAS_BIND", "", "127.0.0.1:8080"),
    ("GPUAAS_DATA_DIR", "/srv/gpuaas", Path("/srv/gpuaas")), ("GPUAAS_DATA_DIR", "", Path("var").resolve()),
    ("GPUAAS_DATABASE_URL", "postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ("GPUAAS_DATABASE_URL", "", f"sqlite:///{Path('var').resolve() / 'gpuaas.sqlite3'}"),
    ("GPUAAS_ACCESS_LOG", "-", "-"), ("GPUAAS_ACCESS_LOG", "", None),
    ("GPUAAS_ADMIN_USER", "root", "root"), ("GPUAAS_ADMIN_USER", "", None),
    ("GPUAAS_ADMIN_PASSWORD", "pw", "pw"),
    ("GPUAAS_TOKEN_TTL_HOURS", "1", 1), ("GPUAAS_TOKEN_TTL_HOURS", "", 24),
    ("GPUAAS_API_TOKEN_TTL_DAYS", "0", 0), ("GPUAAS_API_TOKEN_TTL_DAYS", "", 365),
    ("GPUAAS_SECURE_COOKIES", "TRUE", True), ("GPUAAS_SECURE_COOKIES", "false", False), ("GPUAAS_SECURE_COOKIES", "", False),
    ("GPUAAS_TRUSTED_PROXY_HOPS", "2", 2), ("GPUAAS_TRUSTED_PROXY_HOPS", "", 0),
    ("GPUAAS_LOGIN_FAILURES_PER_USER_ADDRESS", "1", 1), ("GPUAAS_LOGIN_FAILURES_PER_ADDRESS", "500", 500),
    ("GPUAAS_LOGIN_FAILURE_WINDOW_SECONDS", "60", 60),
    ("GPUAAS_MAX_BODY_BYTES", "1024", 1024), ("GPUAAS_MAX_BODY_BYTES", "", 1024 * 1024),
    ("GPUAAS_AUDIT_RETENTION_DAYS", "0", 0),
    ("GPUAAS_JOB_RETENTION_DAYS", "0", 0), ("GPUAAS_JOB_RETENTION_DAYS", "", 90),
    ("GPUAAS_SCAN_RETENTION_DAYS", "7", 7), ("GPUAAS_SCAN_RETENTION_DAYS", "", 90),
    ("GPUAAS_ANSIBLE_EXTRA_VARS", '{"a": [1]}', {"a": [1]}), ("GPUAAS_ANSIBLE_EXTRA_VARS", "", {}),
    ("GPUAAS_JOB_TIMEOUT_SECONDS", "60", 60), ("GPUAAS_JOB_WORKERS", "0", 0),
    ("GPUAAS_JOB_LEASE_SECONDS", "1.5", 1.5), ("GPUAAS_JOB_LEASE_RENEW_SECONDS", "0.5", 0.5),
    ("GPUAAS_JOB_DRAIN_SECONDS", "0", 0.0), ("GPUAAS_JOB_DRAIN_SECONDS", "60", 60.0), ("GPUAAS_JOB_DRAIN_SECONDS", "", 45.0),
    ("GPUAAS_NODE_BATCH_QUIET_SECONDS", "0", 0.0), ("GPUAAS_NODE_BATCH_WINDOW_SECONDS", "0.25", 0.25),
    ("GPUAAS_NODE_QUEUE_MAX", "1", 1), ("GPUAAS_NODE_QUEUE_MAX", "", 20),
    ("GPUAAS_REBOOT_SERIAL", "3", "3"), ("GPUAAS_REBOOT_SERIAL", "100%", "100%"), ("GPUAAS_REBOOT_SERIAL", "", "20%"),
    ("GPUAAS_SSH_KEY_FILE", "/etc/gpuaas/id", "/etc/gpuaas/id"), ("GPUAAS_SSH_KEY_FILE", "", None),
    ("GPUAAS_SECRET_KEY", FERNET_KEY, FERNET_KEY), ("GPUAAS_SECRET_KEY", "", None),
    ("GPUAAS_METRICS_INTERVAL_SECONDS", "0", 0.0), ("GPUAAS_METRICS_PUBLIC", "True", True),
    ("GPUAAS_METRICS_RAW_RETENTION_DAYS", "1", 1), ("GPUAAS_METRICS_MINUTE_RETENTION_DAYS", "2", 2),
    ("GPUAAS_METRICS_ROLLUP_RETENTION_DAYS", "3", 3), ("GPUAAS_STORAGE_METRICS_INTERVAL_SECONDS", "0", 0.0),
    ("GPUAAS_AGENT_PORT", "65535", 65535), ("GPUAAS_AGENT_PORT", "", 0),
    ("GPUAAS_AGENT_TOKEN_FILE", "", None), ("GPUAAS_AGENT_TOKEN", " s3cret ", "s3cret"), ("GPUAAS_AGENT_TOKEN", "", ""),
    ("GPUAAS_AGENT_CONNECT_TIMEOUT_SECONDS", "0.1", 0.1), ("GPUAAS_AGENT_READ_TIMEOUT_SECONDS", "30", 30.0),
    ("GPUAAS_AGENT_CONCURRENCY", "1", 1),
    ("GPUAAS_POOL_RESOURCE_PREFIX", "example.com/pool-", "example.com/pool-"),
]

# (variable, a text refused); every setting whose type can refuse a text has some.
BAD = [
    ("GPUAAS_TOKEN_TTL_HOURS", "0"), ("GPUAAS_TOKEN_TTL_HOURS", "1.5"),
    ("GPUAAS_API_TOKEN_TTL_DAYS", "-1"), ("GPUAAS_API_TOKEN_TTL_DAYS", "a year"),
    ("GPUAAS_SECURE_COOKIES", "yes"), ("GPUAAS_SECURE_COOKIES", "1"),
    ("GPUAAS_TRUSTED_PROXY_HOPS", "-1"), ("GPUAAS_LOGIN_FAILURES_PER_USER_ADDRESS", "0"),
    ("GPUAAS_LOGIN_FAILURES_PER_ADDRESS", "-1"), ("GPUAAS_LOGIN_FAILURE_WINDOW_SECONDS", "0"),
    ("GPUAAS_MAX_BODY_BYTES", "abc"), ("GPUAAS_MAX_BODY_BYTES", "1023"), ("GPUAAS_AUDIT_RETENTION_DAYS", "-1"),
    ("GPUAAS_JOB_RETENTION_DAYS", "-1"), ("GPUAAS_SCAN_RETENTION_DAYS", "a month"),
    ("GPUAAS_NODE_QUEUE_MAX", "0"), ("GPUAAS_NODE_QUEUE_MAX", "2.5"),
    ("GPUAAS_ANSIBLE_EXTRA_VARS", "{"), ("GPUAAS_ANSIBLE_EXTRA_VARS", "[1]"),
    ("GPUAAS_JOB_TIMEOUT_SECONDS", "0"), ("GPUAAS_JOB_WORKERS", "-1"),
    ("GPUAAS_JOB_LEASE_SECONDS", "0"), ("GPUAAS_JOB_LEASE_SECONDS", "nan"), ("GPUAAS_JOB_LEASE_RENEW_SECONDS", "-1"),
    ("GPUAAS_JOB_LEASE_RENEW_SECONDS", "60"), ("GPUAAS_JOB_LEASE_RENEW_SECONDS", "30.5"),
    ("GPUAAS_JOB_DRAIN_SECONDS", "-1"), ("GPUAAS_JOB_DRAIN_SECONDS", "60.5"), ("GPUAAS_NODE_BATCH_QUIET_SECONDS", "-0.1"),
    ("GPUAAS_NODE_BATCH_WINDOW_SECONDS", "0.1"), ("GPUAAS_NODE_BATCH_WINDOW_SECONDS", "inf"),
    ("GPUAAS_REBOOT_SERIAL", "0%"), ("GPUAAS_REBOOT_SERIAL", "all"),
    ("GPUAAS_SECRET_KEY", "not-a-fernet-key"),
    ("GPUAAS_METRICS_INTERVAL_SECONDS", "-1"), ("GPUAAS_METRICS_PUBLIC", "on"),
    ("GPUAAS_METRICS_RAW_RETENTION_DAYS", "0"), ("GPUAAS_METRICS_MINUTE_RETENTION_DAYS", "x"),
    ("GPUAAS_METRICS_ROLLUP_RETENTION_DAYS", "0"), ("GPUAAS_STORAGE_METRICS_INTERVAL_SECONDS", "-5"),
    ("GPUAAS_AGENT_PORT", "65536"), ("GPUAAS_AGENT_PORT", "http"),
    ("GPUAAS_AGENT_TOKEN_FILE", "/nonexistent/token"), ("GPUAAS_AGENT_TOKEN", "two words"),
    ("GPUAAS_AGENT_CONNECT_TIMEOUT_SECONDS", "0"), ("GPUAAS_AGENT_READ_TIMEOUT_SECONDS", "-1"),
    ("GPUAAS_AGENT_CONCURRENCY", "0"),
]
NEVER_REFUSED = {name for name, setting in BY_NAME.items() if setting.kind.name in ("text", "path")} - {
    "GPUAAS_AGENT_TOKEN_FILE", "GPUAAS_AGENT_TOKEN"}  # the token's checks are the agents' (config._agent_token)


def build(name: str, text: str) -> Config:
    """Config with `name` set to `text` (and what it needs beside it, unless it is left to its default)."""
    companions = COMPANIONS.get(name, {}) if text else {}
    return Config({**companions, "GPUAAS_DATA_DIR": "", name: text})


@pytest.mark.parametrize("name, text, value", GOOD)
def test_a_good_value_is_read(name, text, value):
    assert getattr(build(name, text), BY_NAME[name].config_attribute) == value


@pytest.mark.parametrize("name, text", BAD)
def test_a_bad_value_is_refused_naming_the_variable(name, text):
    with pytest.raises(SettingError) as refused:
        build(name, text)
    message = str(refused.value)
    assert message.startswith(name) or f" {name}" in message, message
    if not BY_NAME[name].secret:
        assert text in message, message  # the value, to find the typo


def test_the_error_says_what_is_allowed():
    with pytest.raises(SettingError) as refused:
        Config({"GPUAAS_MAX_BODY_BYTES": "abc"})
    assert str(refused.value) == "GPUAAS_MAX_BODY_BYTES must be an integer >= 1024, not 'abc'"
    with pytest.raises(SettingError) as refused:
        Config({"GPUAAS_TRUSTED_PROXY_HOPS": "-1"})
    assert str(refused.value) == "GPUAAS_TRUSTED_PROXY_HOPS must be an integer >= 0, not '-1'"


def test_a_secret_is_never_repeated_in_an_error():
    with pytest.raises(SettingError) as refused:
        Config({"GPUAAS_SECRET_KEY": "hunter2"})
    assert "hunter2" not in str(refused.value)


def test_every_setting_has_cases():
    assert {case[0] for case in GOOD} == set(BY_NAME)
    assert {case[0] for case in BAD} == set(BY_NAME) - NEVER_REFUSED


def test_every_setting_is_documented_in_one_line():
    assert len(BY_NAME) == len(SETTINGS), "a variable is in the table twice"
    for setting in SETTINGS:
        assert setting.name.startswith("GPUAAS_") and setting.doc.strip() and "\n" not in setting.doc, setting.name
        assert setting.default is not None or setting.default_doc, f"{setting.name}: say what unset means"


# Every GPUAAS_* name in the service's source is a setting, or one of these: the cluster statuses,
# and the variable each job's processes carry (jobs/runner.py), which the service sets, not reads.
NOT_SETTINGS = {status.value for status in ClusterStatus} | {"GPUAAS_JOB_MARKER", "GPUAAS_JOB_CLAIMANT"}
NAME = re.compile(r"\bGPUAAS_[A-Z0-9_]*[A-Z0-9]\b")
# Reading the environment by a literal name: only config.py reads it, through the table.
DIRECT_READ = re.compile(r"(?:environ|getenv)\b[^\n]{0,20}?[\"'](GPUAAS_[A-Z0-9_]+)")


def unknown_names(source: str) -> set[str]:
    return set(NAME.findall(source)) - set(BY_NAME) - NOT_SETTINGS


def direct_reads(source: str) -> set[str]:
    return set(DIRECT_READ.findall(source))


def service_sources() -> dict[str, str]:
    return {str(path.relative_to(API_SOURCE)): path.read_text(encoding="utf-8") for path in sorted(API_SOURCE.rglob("*.py"))}


def test_every_variable_the_service_names_is_in_the_table():
    unknown = {path: names for path, source in service_sources().items() if (names := unknown_names(source))}
    assert not unknown, f"add these to config.SETTINGS (or to NOT_SETTINGS, if no setting): {unknown}"
    reads = {path: names for path, source in service_sources().items() if (names := direct_reads(source))}
    assert not reads, f"read these through config.Config, not the environment: {reads}"


def test_the_source_checks_catch_an_unlisted_variable():
    source = 'url = os.environ.get("GPUAAS_SWAGGER_UI_URL", CDN)  # GPUAAS_ACTIVE is a status\n'
    assert unknown_names(source) == {"GPUAAS_SWAGGER_UI_URL"}
    assert direct_reads(source) == {"GPUAAS_SWAGGER_UI_URL"}
    assert direct_reads("os.getenv('GPUAAS_BIND')") == {"GPUAAS_BIND"}


def test_the_readme_table_is_current():
    readme = settings_doc.README.read_text(encoding="utf-8")
    assert readme == settings_doc.with_table(readme), \
        f"README.md's settings table is stale: run `PYTHONPATH=api {settings_doc.REGENERATE}`"


def test_the_example_environment_file_is_current():
    assert settings_doc.ENV_EXAMPLE.read_text(encoding="utf-8") == settings_doc.env_example(), \
        f"deploy/systemd/gpuaas-api.env is stale: run `PYTHONPATH=api {settings_doc.REGENERATE}`"


def test_the_example_sets_real_settings_to_accepted_values():
    assert set(settings_doc.DEPLOYMENT) <= set(BY_NAME)
    set_here = {name: entry[0] for name, entry in settings_doc.DEPLOYMENT.items() if entry[0] is not None}
    config = Config({**set_here, "GPUAAS_DATA_DIR": ""})
    assert (config.SESSION_COOKIE_SECURE, config.TRUSTED_PROXY_HOPS) == (True, 1)


def test_a_stale_table_is_replaced_and_a_missing_one_appended():
    fresh = settings_doc.with_table("# Title\n")
    assert fresh.startswith("# Title\n\n## Settings\n\n<!-- settings-table:start") and fresh.endswith("-->\n")
    stale = fresh.replace("`GPUAAS_BIND`", "`GPUAAS_OLD`")
    assert stale != fresh and settings_doc.with_table(stale) == fresh
    assert settings_doc.with_table(fresh + "\nmore\n") == fresh + "\nmore\n"
