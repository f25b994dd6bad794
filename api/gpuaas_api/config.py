"""Configuration from the environment: every GPUAAS_* setting the service reads, in one table.

SETTINGS drives the parsing (a bad value stops the service at start, naming the variable, the
value and what is allowed), the README's Settings table and the example environment file
deploy/systemd/gpuaas-api.env (settings_doc.py renders both; tests/api/test_settings.py fails
when either is stale). Unset and empty are alike: the default, so that a `GPUAAS_...=` line in a
systemd environment file means "not set".
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Callable

from .shared import sharing_policy


# The gpu_sharing role's variables the service sets on each node when the agents serve HTTP.
AGENT_ROLE_VARS = frozenset({"gpu_sharing_agent_http_listen", "gpu_sharing_agent_token"})


class SettingError(ValueError):
    """A setting, or a combination of settings, the service refuses; the message names the variables."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """A setting's type: its name in the table, what a value must be, and how a string becomes one."""
    name: str
    requirement: str  # in an error: "<VARIABLE> must be <requirement>"
    parse: Callable[[str], object]  # raises ValueError for a string that is not one
    choices: str = ""  # the table's "Allowed" column, when bounds don't say it


def _boolean(text: str) -> bool:
    # Strictly true or false (any case): "yes" or "1" once read as false without a word.
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # nan passes every comparison with a bound
        raise ValueError(text)
    return value


def _json_object(text: str) -> dict:
    value = json.loads(text)  # a json.JSONDecodeError is a ValueError
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


def _serial(text: str) -> str:
    """Ansible's `serial`, as a rolling reboot takes it: a positive count, or a percentage from 1% to 100%."""
    if not re.fullmatch(r"[1-9][0-9]*%?", text) or (text.endswith("%") and int(text[:-1]) > 100):
        raise ValueError(text)
    return text


def _fernet_key(text: str) -> str:
    from cryptography.fernet import Fernet  # imported only when the setting is given

    Fernet(text.encode())  # ValueError (binascii.Error is one) unless 32 url-safe base64-encoded bytes
    return text


TEXT = Kind("text", "text", str, choices="any")
PATH = Kind("path", "a path", lambda text: Path(text).resolve(), choices="any")
INTEGER = Kind("integer", "an integer", int)
NUMBER = Kind("number", "a number", _finite)
BOOLEAN = Kind("boolean", "true or false", _boolean, choices="`true`, `false`")
JSON_OBJECT = Kind("JSON", "a JSON object", _json_object, choices="a JSON object")
SERIAL = Kind("count or %", "a positive count or a percentage from 1% to 100%", _serial,
              choices="a count >= 1, or 1%-100%")
FERNET_KEY = Kind("Fernet key", "32 url-safe base64-encoded bytes (a Fernet key; make one with: python3 -c "
                  "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')",
                  _fernet_key, choices="32 url-safe base64-encoded bytes")


def _number_text(number: float) -> str:
    return f"{number:g}"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One GPUAAS_* variable: its type, default, allowed values and one line of doc."""
    name: str
    kind: Kind
    default: str | None  # as written in the environment; None: no value (the attribute is None, or derived)
    doc: str
    minimum: float | None = None  # the least value allowed
    above: float | None = None  # a bound the value must exceed
    maximum: float | None = None
    allowed: str = ""  # what a value must be, where the kind and the bounds do not say it
    default_doc: str = ""  # the default in words, where `default` is None
    secret: bool = False  # its value is never repeated in an error
    attribute: str = ""  # Config's attribute; the name without GPUAAS_ when empty

    @property
    def config_attribute(self) -> str:
        return self.attribute or self.name.removeprefix("GPUAAS_")

    def bounds(self) -> str:
        """The numeric range in words: '>= 1024', '> 0', '0-65535', or ''."""
        if self.minimum is not None and self.maximum is not None:
            return f"{_number_text(self.minimum)}-{_number_text(self.maximum)}"
        if self.minimum is not None:
            return f">= {_number_text(self.minimum)}"
        return f"> {_number_text(self.above)}" if self.above is not None else ""

    def allowed_text(self) -> str:
        """The table's "Allowed" column."""
        return self.allowed or self.bounds() or self.kind.choices

    def requirement(self) -> str:
        """What a value must be, for an error: 'an integer >= 1024'."""
        return self.allowed or " ".join(filter(None, (self.kind.requirement, self.bounds())))

    def parse(self, text: str | None):
        """This setting's value from its text in the environment (None or empty: the default)."""
        text = text or self.default
        if text is None:
            return None
        try:
            value = self.kind.parse(text)
        except ValueError:
            raise self.refusal(text) from None
        if not self.in_bounds(value):
            raise self.refusal(text)
        return value

    def in_bounds(self, value) -> bool:
        too_low = (self.minimum is not None and value < self.minimum) or (self.above is not None and value <= self.above)
        return not too_low and (self.maximum is None or value <= self.maximum)

    def refusal(self, text: str) -> SettingError:
        given = "" if self.secret else f", not {text!r}"
        return SettingError(f"{self.name} must be {self.requirement()}{given}")


SETTINGS: tuple[Setting, ...] = (
    # The service.
    Setting("GPUAAS_BIND", TEXT, "127.0.0.1:8080", "The address gunicorn listens on (host:port)."),
    Setting("GPUAAS_DATA_DIR", PATH, "./var",
            "The data directory: the SQLite file, the controller's SSH key, the jobs' private directories."),
    Setting("GPUAAS_DATABASE_URL", TEXT, None, "The database URL: `postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME` for production.",
            default_doc="SQLite in the data dir"),
    # gunicorn's access log: none by default, as gunicorn's own default: a line per request cost a
    # quarter of the cached reads' throughput (bench/api_reads.py).
    Setting("GPUAAS_ACCESS_LOG", TEXT, None, "gunicorn's access log: `-` for stdout, or a file path.",
            default_doc="none"),
    # Users, tokens, logins.
    Setting("GPUAAS_ADMIN_USER", TEXT, None, "The first admin, created on first start when no user exists.",
            default_doc="`admin`, with a random password shown once"),
    Setting("GPUAAS_ADMIN_PASSWORD", TEXT, None, "The first admin's password (with GPUAAS_ADMIN_USER).",
            default_doc="none", secret=True),
    Setting("GPUAAS_TOKEN_TTL_HOURS", INTEGER, "24", "How long a login token (and its cookie) lasts, in hours.",
            minimum=1),
    # Tokens issued before a change keep their own expiry.
    Setting("GPUAAS_API_TOKEN_TTL_DAYS", INTEGER, "365",
            "Automation tokens (`create-token`, POST /api/tokens) expire after this many days unless told otherwise; 0: never.",
            minimum=0),
    # The login cookie is Secure when the request came over TLS (request.is_secure); true makes it
    # Secure always, for a proxy that terminates TLS but is not trusted to say so (GPUAAS_TRUSTED_PROXY_HOPS).
    Setting("GPUAAS_SECURE_COOKIES", BOOLEAN, "false",
            "`true`: the login cookie is always Secure; `false`: Secure when the request came over TLS.",
            attribute="SESSION_COOKIE_SECURE"),
    # Any client can send X-Forwarded-For and -Proto: trusted only from these many proxies (werkzeug's ProxyFix).
    Setting("GPUAAS_TRUSTED_PROXY_HOPS", INTEGER, "0",
            "Reverse proxies in front whose X-Forwarded-For and -Proto count: 0 ignores them; 1 for one nginx.",
            minimum=0),
    # Failed logins counted (login_throttle.py) over a sliding window: for one user name from one
    # address, 5 (a person's typos; a guesser gets 5 tries per window), and from one address over
    # every user name, 50 (password spraying; room for the people of an office behind one NAT).
    # No count is per user name alone: that would let anyone lock a user (hosted·ai's client) out.
    Setting("GPUAAS_LOGIN_FAILURES_PER_USER_ADDRESS", INTEGER, "5",
            "Failed logins for one user name from one address per window; past it a login answers 429.", minimum=1),
    Setting("GPUAAS_LOGIN_FAILURES_PER_ADDRESS", INTEGER, "50",
            "Failed logins from one address over every user name per window; past it a login answers 429.", minimum=1),
    # 5 minutes: the longest a person who mistyped waits, and 5 guesses per 5 minutes (1,440 a day)
    # for one user name from one address.
    Setting("GPUAAS_LOGIN_FAILURE_WINDOW_SECONDS", INTEGER, "300", "The failed-login throttle's sliding window, in seconds.",
            minimum=1),
    # The largest real body (a pool with a thousand GPUs' UUIDs) is under 64 KiB. Without a cap, one
    # 54 MB login body held a worker 1.1 s and raised its peak memory by 390 MB. 1024: a login body.
    Setting("GPUAAS_MAX_BODY_BYTES", INTEGER, str(1024 * 1024),
            "The largest request body, in bytes: a larger one (chunked ones too) is refused with 413.", minimum=1024),
    Setting("GPUAAS_AUDIT_RETENTION_DAYS", INTEGER, "365",
            "How long the audit trail (GET /api/audit) keeps each record, in days; 0: forever.", minimum=0),
    # Jobs and scans (jobs/retention.py, operations/scans.py): a job's log is read for days after its
    # run, rarely after a month; 90 days keeps a quarter's history. Pruned hourly, in chunks.
    Setting("GPUAAS_JOB_RETENTION_DAYS", INTEGER, "90",
            "How long a finished job and its events (the node logs) are kept, in days; 0: forever.", minimum=0),
    Setting("GPUAAS_SCAN_RETENTION_DAYS", INTEGER, "90",
            "How long a scan is kept, in days (each node's latest of each kind stays); 0: forever.", minimum=0),
    # Jobs.
    Setting("GPUAAS_ANSIBLE_EXTRA_VARS", JSON_OBJECT, "{}",
            "Site-wide variables for every playbook run, as a JSON object (the one source rendered as templates)."),
    Setting("GPUAAS_JOB_TIMEOUT_SECONDS", INTEGER, "3600", "The longest a playbook run may take, in seconds.", minimum=1),
    Setting("GPUAAS_JOB_WORKERS", INTEGER, "2", "Job worker threads in each `gpuaas-api serve` worker process; 0: none.",
            minimum=0),
    # A running job's lease (jobs/lease.py): renewed this often by its worker; when it has not been
    # renewed for GPUAAS_JOB_LEASE_SECONDS, any API process finalises the job.
    Setting("GPUAAS_JOB_LEASE_SECONDS", NUMBER, "60",
            "A running job not renewed for this long (its process stopped) is finalised by any other, in seconds.", above=0),
    Setting("GPUAAS_JOB_LEASE_RENEW_SECONDS", NUMBER, "10",
            "How often a running job's worker renews its lease, in seconds; at most half GPUAAS_JOB_LEASE_SECONDS.", above=0),
    # A stop (SIGTERM: systemctl stop or restart) lets running playbooks end within this grace; the
    # runs still going are then stopped and their jobs made pending again, for any process to run.
    # gunicorn's graceful timeout and the unit's TimeoutStopSec are longer (cli.py, the unit file).
    Setting("GPUAAS_JOB_DRAIN_SECONDS", NUMBER, None,
            "On a stop, how long running jobs may take to end before they are handed over (run again), in seconds; "
            "at most GPUAAS_JOB_LEASE_SECONDS.", minimum=0, default_doc="45, or GPUAAS_JOB_LEASE_SECONDS if less"),
    # Node operations (init, deinit, join, leave, disable, reboot) for different nodes that arrive
    # together share one playbook run (jobs/queue.py): a job waits while requests for its operation
    # keep coming less than the quiet interval apart, and never longer than the window. A quiet
    # interval of 0 holds no job back: it runs at once, with those already pending it can join.
    Setting("GPUAAS_NODE_BATCH_QUIET_SECONDS", NUMBER, "0.25",
            "Node operations arriving less than this apart share one playbook run, in seconds; 0: no wait.", minimum=0),
    Setting("GPUAAS_NODE_BATCH_WINDOW_SECONDS", NUMBER, "2",
            "The longest a node operation waits for others to share its run, in seconds; >= the quiet interval.", minimum=0),
    # A node's pending jobs (jobs/submit.py): a request identical to the node's latest pending one is
    # answered with that job; past this many, a request is refused (409). 20: every node operation
    # and scan several times over, far from what a person queues, and a script's loop stops early.
    Setting("GPUAAS_NODE_QUEUE_MAX", INTEGER, "20",
            "The most jobs one node may have pending; a request beyond them is refused with 409.", minimum=1),
    # 20 %, as Kubespray's rolling upgrades; the playbook run by hand defaults to 1.
    Setting("GPUAAS_REBOOT_SERIAL", SERIAL, "20%",
            "How many nodes of a reboot batch go down at once (Ansible's `serial`: a count or a percentage)."),
    # The controller's SSH identity (ssh_keys.py): a private key file every host mounts, or the key
    # pair in the database encrypted with this secret; neither: a key pair in this host's data
    # directory (one host only).
    Setting("GPUAAS_SSH_KEY_FILE", TEXT, None, "The controller's SSH private key, a file every service host mounts.",
            default_doc="a key pair in the data dir"),
    Setting("GPUAAS_SECRET_KEY", FERNET_KEY, None,
            "Encrypts the controller's SSH key pair in the database: one identity for every service host.",
            default_doc="none", secret=True),
    # Metrics.
    Setting("GPUAAS_METRICS_INTERVAL_SECONDS", NUMBER, "60",
            "How often the collector samples every pool GPU (and storage node), in seconds; 0: off.", minimum=0),
    Setting("GPUAAS_METRICS_PUBLIC", BOOLEAN, "false", "`true`: /metrics (Prometheus) is served without a token."),
    Setting("GPUAAS_METRICS_RAW_RETENTION_DAYS", INTEGER, "7", "How long raw metric samples are kept, in days.", minimum=1),
    # Minute buckets are many (1,440 a day per pool): kept long enough for a month's query.
    Setting("GPUAAS_METRICS_MINUTE_RETENTION_DAYS", INTEGER, "35", "How long minute rollups are kept, in days.", minimum=1),
    Setting("GPUAAS_METRICS_ROLLUP_RETENTION_DAYS", INTEGER, "400", "How long hour, day and week rollups are kept, in days.",
            minimum=1),
    # With the agents' readings, storage nodes (which run no agent) are still read by the
    # collect_metrics playbook, this often; without them, in every collection.
    Setting("GPUAAS_STORAGE_METRICS_INTERVAL_SECONDS", NUMBER, "300",
            "With GPUAAS_AGENT_PORT: how often the storage nodes' playbook runs, in seconds; 0: off.", minimum=0),
    # GPU readings pulled from each GPU node's gpuaas agent over HTTP (metrics/agent_http.py), instead
    # of the collect_metrics playbook: the port the agents listen on (on each node's node_ip) and the
    # bearer token the roles install on the nodes. Both or neither; neither keeps the Ansible path and
    # the agents' HTTP off.
    Setting("GPUAAS_AGENT_PORT", INTEGER, "0",
            "The port the nodes' agents serve their readings on (with a token); 0: readings by playbook, agents' HTTP off.",
            minimum=0, maximum=65535, allowed="0 (off) or a TCP port (1-65535)"),
    Setting("GPUAAS_AGENT_TOKEN_FILE", TEXT, None,
            "A file holding the agents' bearer token (preferred to GPUAAS_AGENT_TOKEN: no secret in the environment).",
            default_doc="none"),
    Setting("GPUAAS_AGENT_TOKEN", TEXT, None, "The agents' bearer token (or GPUAAS_AGENT_TOKEN_FILE).",
            default_doc="none", allowed="one printable word", secret=True),
    Setting("GPUAAS_AGENT_CONNECT_TIMEOUT_SECONDS", NUMBER, "2", "Connect timeout of a read from an agent, in seconds.",
            above=0),
    Setting("GPUAAS_AGENT_READ_TIMEOUT_SECONDS", NUMBER, "5", "Read timeout of a read from an agent, in seconds.", above=0),
    Setting("GPUAAS_AGENT_CONCURRENCY", INTEGER, "64", "How many agents are read at once.", minimum=1),
    # Pools. Passed to the gpu_sharing role, so both name the resource alike.
    Setting("GPUAAS_POOL_RESOURCE_PREFIX", TEXT, sharing_policy.POOL_RESOURCE_PREFIX,
            "A pool's slots are the extended resource `<prefix><pool id>` on its nodes (tenants' Pods request it)."),
)


def _agent_token(path: str | None, value: str | None) -> str:
    """The agents' bearer token: GPUAAS_AGENT_TOKEN_FILE's content (preferred: no secret in the
    environment), or GPUAAS_AGENT_TOKEN; '' for none."""
    if path and value:
        raise SettingError("set GPUAAS_AGENT_TOKEN_FILE or GPUAAS_AGENT_TOKEN, not both")
    source = "GPUAAS_AGENT_TOKEN"
    if path:
        source, value = "GPUAAS_AGENT_TOKEN_FILE's content", _read_token_file(path)
    value = (value or "").strip()
    if any(character.isspace() or not character.isprintable() for character in value):
        raise SettingError(f"{source} must be one printable word (it is sent as an HTTP header)")
    return value


def _read_token_file(path: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise SettingError(f"GPUAAS_AGENT_TOKEN_FILE: {path}: {error.strerror}") from error
    if not value.strip():
        raise SettingError(f"GPUAAS_AGENT_TOKEN_FILE: {path} is empty")
    return value


DEFAULT_DRAIN_SECONDS = 45.0


class Config:
    """The service's settings: an attribute per SETTINGS entry (its name without GPUAAS_, unless the
    entry names another), read from `environ` (os.environ when None). Tests may change them after."""

    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        for setting in SETTINGS:
            setattr(self, setting.config_attribute, setting.parse(env.get(setting.name)))
        self._derive()
        self._check_jobs()
        self._check_agents()
        self.TESTING = False

    def _derive(self) -> None:
        """The values that depend on another setting."""
        if self.DATABASE_URL is None:
            self.DATABASE_URL = f"sqlite:///{self.DATA_DIR / 'gpuaas.sqlite3'}"
        self.AGENT_TOKEN = _agent_token(self.AGENT_TOKEN_FILE, self.AGENT_TOKEN)

    def _check_jobs(self) -> None:
        """The job settings that bound each other."""
        if self.JOB_LEASE_SECONDS < 2 * self.JOB_LEASE_RENEW_SECONDS:  # one lost renewal must not lose the lease
            raise SettingError(f"GPUAAS_JOB_LEASE_SECONDS ({self.JOB_LEASE_SECONDS:g}) must be at least twice "
                               f"GPUAAS_JOB_LEASE_RENEW_SECONDS ({self.JOB_LEASE_RENEW_SECONDS:g})")
        if self.JOB_DRAIN_SECONDS is None:
            self.JOB_DRAIN_SECONDS = min(DEFAULT_DRAIN_SECONDS, self.JOB_LEASE_SECONDS)
        if self.JOB_DRAIN_SECONDS > self.JOB_LEASE_SECONDS:
            raise SettingError(f"GPUAAS_JOB_DRAIN_SECONDS ({self.JOB_DRAIN_SECONDS:g}) must be no longer than "
                               f"GPUAAS_JOB_LEASE_SECONDS ({self.JOB_LEASE_SECONDS:g})")
        if self.NODE_BATCH_WINDOW_SECONDS < self.NODE_BATCH_QUIET_SECONDS:
            raise SettingError(f"GPUAAS_NODE_BATCH_WINDOW_SECONDS ({self.NODE_BATCH_WINDOW_SECONDS:g}) must be no less than "
                               f"GPUAAS_NODE_BATCH_QUIET_SECONDS ({self.NODE_BATCH_QUIET_SECONDS:g})")

    def _check_agents(self) -> None:
        """The agents' port and token go together, and the service alone sets their role variables."""
        if bool(self.AGENT_PORT) != bool(self.AGENT_TOKEN):
            raise SettingError("GPUAAS_AGENT_PORT and a token (GPUAAS_AGENT_TOKEN_FILE or GPUAAS_AGENT_TOKEN) go together: "
                               "the agents never serve without one")
        if self.AGENT_PORT and AGENT_ROLE_VARS & set(self.ANSIBLE_EXTRA_VARS):
            raise SettingError(f"with GPUAAS_AGENT_PORT the service sets {', '.join(sorted(AGENT_ROLE_VARS))} per node; "
                               "remove them from GPUAAS_ANSIBLE_EXTRA_VARS (extra vars would override every node's address)")

    @property
    def agent_http(self) -> bool:
        """True when GPU readings come from the agents over HTTP (GPUAAS_AGENT_PORT and its token)."""
        return bool(self.AGENT_PORT and self.AGENT_TOKEN)

    def agent_address(self, node_ip: str) -> str:
        """host:port where a node's agent listens (and is read): its registered address, bracketed if IPv6."""
        host = f"[{node_ip}]" if ":" in node_ip else node_ip
        return f"{host}:{self.AGENT_PORT}"

    def as_flask(self) -> dict:
        """What Flask and flask-smorest read from app.config."""
        return {
            "API_TITLE": "hosted·ai GPUaaS infrastructure API",
            "API_VERSION": "1",
            "OPENAPI_VERSION": "3.0.3",
            "OPENAPI_URL_PREFIX": "/api",
            "OPENAPI_JSON_PATH": "openapi.json",
            # No OPENAPI_SWAGGER_UI_*: the docs page, /api/docs, is docs_page's, with every file served by
            # this service (flask-smorest's has an inline script and loads its files from a URL given here).
            "TESTING": self.TESTING,
            "MAX_CONTENT_LENGTH": self.MAX_BODY_BYTES,
            "GPUAAS": self,
        }
