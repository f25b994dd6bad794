"""Configuration from the environment (see README: GPUAAS_*)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .states import SHARING_POLICY


# The gpu_sharing role's variables the service sets on each node when the agents serve HTTP.
AGENT_ROLE_VARS = frozenset({"gpu_sharing_agent_http_listen", "gpu_sharing_agent_token"})


def _agent_token(env) -> str:
    """The agents' bearer token: GPUAAS_AGENT_TOKEN_FILE's content (preferred: no secret in the
    environment), or GPUAAS_AGENT_TOKEN."""
    path, value = env.get("GPUAAS_AGENT_TOKEN_FILE"), env.get("GPUAAS_AGENT_TOKEN")
    if path and value:
        raise ValueError("set GPUAAS_AGENT_TOKEN_FILE or GPUAAS_AGENT_TOKEN, not both")
    if path:
        try:
            value = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"GPUAAS_AGENT_TOKEN_FILE: {path}: {error.strerror}") from error
        if not value.strip():
            raise ValueError(f"GPUAAS_AGENT_TOKEN_FILE: {path} is empty")
    value = (value or "").strip()
    if value and any(character.isspace() or not character.isprintable() for character in value):
        raise ValueError("the agents' token must be one printable word (it is sent as an HTTP header)")
    return value


class Config:
    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        self.BIND = env.get("GPUAAS_BIND", "127.0.0.1:8080")
        self.DATA_DIR = Path(env.get("GPUAAS_DATA_DIR", "./var")).resolve()
        self.DATABASE_URL = env.get("GPUAAS_DATABASE_URL") or f"sqlite:///{self.DATA_DIR / 'gpuaas.sqlite3'}"
        self.ADMIN_USER = env.get("GPUAAS_ADMIN_USER")
        self.ADMIN_PASSWORD = env.get("GPUAAS_ADMIN_PASSWORD")
        self.TOKEN_TTL_HOURS = int(env.get("GPUAAS_TOKEN_TTL_HOURS", "24"))
        # Tokens for automation (`create-token`, POST /api/tokens) expire after this many days unless
        # told otherwise; 0: never. Tokens issued before a change keep their own expiry.
        self.API_TOKEN_TTL_DAYS = int(env.get("GPUAAS_API_TOKEN_TTL_DAYS", "365"))
        if self.API_TOKEN_TTL_DAYS < 0:
            raise ValueError("GPUAAS_API_TOKEN_TTL_DAYS must be 0 (never expire) or more")
        # The audit trail (audit.py) keeps each record this many days; 0 keeps them forever.
        self.AUDIT_RETENTION_DAYS = int(env.get("GPUAAS_AUDIT_RETENTION_DAYS", "365"))
        if self.AUDIT_RETENTION_DAYS < 0:
            raise ValueError("GPUAAS_AUDIT_RETENTION_DAYS must be 0 (keep forever) or more")
        # The login cookie is Secure when the request came over TLS (request.is_secure); true makes it
        # Secure always, for a proxy that terminates TLS but is not trusted to say so (GPUAAS_TRUSTED_PROXY_HOPS).
        self.SESSION_COOKIE_SECURE = env.get("GPUAAS_SECURE_COOKIES", "false").lower() == "true"
        # The largest request body, in bytes: a larger one is refused (413) before it is read, a chunked
        # one as soon as it passes this. The largest real body (a pool with a thousand GPUs' UUIDs) is
        # under 64 KiB. Without a cap, one 54 MB login body held a worker 1.1 s and raised its peak memory by 390 MB.
        self.MAX_BODY_BYTES = int(env.get("GPUAAS_MAX_BODY_BYTES", str(1024 * 1024)))
        # Failed logins counted (login_throttle.py) over a sliding window: for one user name from one
        # address, 5 (a person's typos; a guesser gets 5 tries per window), and from one address over
        # every user name, 50 (password spraying; room for the people of an office behind one NAT).
        # No count is per user name alone: that would let anyone lock a user (hosted·ai's client) out.
        self.LOGIN_FAILURES_PER_USER_ADDRESS = int(env.get("GPUAAS_LOGIN_FAILURES_PER_USER_ADDRESS", "5"))
        self.LOGIN_FAILURES_PER_ADDRESS = int(env.get("GPUAAS_LOGIN_FAILURES_PER_ADDRESS", "50"))
        # 5 minutes: the longest a person who mistyped waits, and 5 guesses per 5 minutes (1,440 a day)
        # for one user name from one address.
        self.LOGIN_FAILURE_WINDOW_SECONDS = int(env.get("GPUAAS_LOGIN_FAILURE_WINDOW_SECONDS", "300"))
        # Reverse proxies in front of the service whose X-Forwarded-For and X-Forwarded-Proto are
        # trusted (werkzeug's ProxyFix): 0 ignores them, since any client can send them; 1 for one nginx.
        self.TRUSTED_PROXY_HOPS = int(env.get("GPUAAS_TRUSTED_PROXY_HOPS", "0"))
        self._check_limits()
        # Site-wide variables for every playbook run, as JSON (for example a fleet's boot-id command).
        self.ANSIBLE_EXTRA_VARS = json.loads(env.get("GPUAAS_ANSIBLE_EXTRA_VARS", "{}"))
        self.JOB_TIMEOUT_SECONDS = int(env.get("GPUAAS_JOB_TIMEOUT_SECONDS", "3600"))
        self.JOB_WORKERS = int(env.get("GPUAAS_JOB_WORKERS", "2"))
        # A running job's lease (jobs/lease.py): renewed this often by its worker; when it has not been
        # renewed for GPUAAS_JOB_LEASE_SECONDS, any API process finalises the job.
        self.JOB_LEASE_SECONDS = float(env.get("GPUAAS_JOB_LEASE_SECONDS", "60"))
        self.JOB_LEASE_RENEW_SECONDS = float(env.get("GPUAAS_JOB_LEASE_RENEW_SECONDS", "10"))
        if not 0 < self.JOB_LEASE_RENEW_SECONDS < self.JOB_LEASE_SECONDS:
            raise ValueError("GPUAAS_JOB_LEASE_RENEW_SECONDS must be positive and less than GPUAAS_JOB_LEASE_SECONDS")
        # Node operations (init, deinit, join, leave, disable, reboot) for different nodes that arrive
        # together share one playbook run (jobs/queue.py): a job waits while requests for its operation
        # keep coming less than the quiet interval apart, and never longer than the window. A quiet
        # interval of 0 holds no job back: it runs at once, with those already pending it can join.
        self.NODE_BATCH_QUIET_SECONDS = float(env.get("GPUAAS_NODE_BATCH_QUIET_SECONDS", "0.25"))
        self.NODE_BATCH_WINDOW_SECONDS = float(env.get("GPUAAS_NODE_BATCH_WINDOW_SECONDS", "2"))
        if self.NODE_BATCH_QUIET_SECONDS < 0 or self.NODE_BATCH_WINDOW_SECONDS < self.NODE_BATCH_QUIET_SECONDS:
            raise ValueError("GPUAAS_NODE_BATCH_QUIET_SECONDS must be 0 or more, and GPUAAS_NODE_BATCH_WINDOW_SECONDS "
                             "no less than it")
        # Reboot requests that arrive together run as one rolling node_reboot play (jobs/queue.py): this
        # many of its nodes (a count, or a percentage as Ansible's `serial` takes it) go down at once.
        # 20 %, as Kubespray's rolling upgrades; the playbook run by hand defaults to 1.
        self.REBOOT_SERIAL = env.get("GPUAAS_REBOOT_SERIAL", "20%")
        if not re.fullmatch(r"[1-9][0-9]*%?", self.REBOOT_SERIAL) or self.REBOOT_SERIAL in ("0%",) or \
                (self.REBOOT_SERIAL.endswith("%") and int(self.REBOOT_SERIAL[:-1]) > 100):
            raise ValueError("GPUAAS_REBOOT_SERIAL must be a positive count or a percentage from 1% to 100%")
        # gunicorn's access log: "-" for stdout or a file path; none by default, as gunicorn's own
        # default: a line per request cost a quarter of the cached reads' throughput (bench/api_reads.py).
        self.ACCESS_LOG = env.get("GPUAAS_ACCESS_LOG") or None
        # The collector samples every pool GPU and storage node this often; 0 turns it off.
        self.METRICS_INTERVAL_SECONDS = float(env.get("GPUAAS_METRICS_INTERVAL_SECONDS", "60"))
        self.METRICS_RAW_RETENTION_DAYS = int(env.get("GPUAAS_METRICS_RAW_RETENTION_DAYS", "7"))
        # Minute buckets are many (1,440 a day per pool): kept long enough for a month's query;
        # hour, day and week buckets for GPUAAS_METRICS_ROLLUP_RETENTION_DAYS.
        self.METRICS_MINUTE_RETENTION_DAYS = int(env.get("GPUAAS_METRICS_MINUTE_RETENTION_DAYS", "35"))
        self.METRICS_ROLLUP_RETENTION_DAYS = int(env.get("GPUAAS_METRICS_ROLLUP_RETENTION_DAYS", "400"))
        # GPU readings pulled from each GPU node's gpuaas agent over HTTP (metrics/agent_http.py), instead
        # of the collect_metrics playbook: the port the agents listen on (on each node's node_ip) and the
        # bearer token the roles install on the nodes. Both or neither; neither keeps the Ansible path and
        # the agents' HTTP off.
        self.AGENT_PORT = int(env.get("GPUAAS_AGENT_PORT") or 0)
        self.AGENT_TOKEN = _agent_token(env)
        if bool(self.AGENT_PORT) != bool(self.AGENT_TOKEN):
            raise ValueError("GPUAAS_AGENT_PORT and a token (GPUAAS_AGENT_TOKEN_FILE or GPUAAS_AGENT_TOKEN) go together: "
                             "the agents never serve without one")
        if not 0 <= self.AGENT_PORT <= 65535:
            raise ValueError("GPUAAS_AGENT_PORT must be a TCP port (1-65535)")
        if self.AGENT_PORT and AGENT_ROLE_VARS & set(self.ANSIBLE_EXTRA_VARS):
            raise ValueError(f"with GPUAAS_AGENT_PORT the service sets {', '.join(sorted(AGENT_ROLE_VARS))} per node; "
                             "remove them from GPUAAS_ANSIBLE_EXTRA_VARS (extra vars would override every node's address)")
        self.AGENT_CONNECT_TIMEOUT_SECONDS = float(env.get("GPUAAS_AGENT_CONNECT_TIMEOUT_SECONDS", "2"))
        self.AGENT_READ_TIMEOUT_SECONDS = float(env.get("GPUAAS_AGENT_READ_TIMEOUT_SECONDS", "5"))
        self.AGENT_CONCURRENCY = int(env.get("GPUAAS_AGENT_CONCURRENCY", "64"))
        if self.AGENT_CONCURRENCY < 1 or self.AGENT_CONNECT_TIMEOUT_SECONDS <= 0 or self.AGENT_READ_TIMEOUT_SECONDS <= 0:
            raise ValueError("GPUAAS_AGENT_CONCURRENCY and the GPUAAS_AGENT_*_TIMEOUT_SECONDS must be positive")
        # With the agents' readings, storage nodes (which run no agent) are still read by the
        # collect_metrics playbook, this often (0 turns it off); without them, in every collection.
        self.STORAGE_METRICS_INTERVAL_SECONDS = float(env.get("GPUAAS_STORAGE_METRICS_INTERVAL_SECONDS", "300"))
        # /metrics (Prometheus) asks for a token like the API unless this is true.
        self.METRICS_PUBLIC = env.get("GPUAAS_METRICS_PUBLIC", "false").lower() == "true"
        # A pool's slots are the extended resource <prefix><pool id> on its nodes (the gpuaas agent
        # advertises it; tenants' Pods request it). Passed to the gpu_sharing role, so both name it alike.
        self.POOL_RESOURCE_PREFIX = env.get("GPUAAS_POOL_RESOURCE_PREFIX") or SHARING_POLICY.POOL_RESOURCE_PREFIX
        # The controller's SSH identity (ssh_keys.py): a private key file every host mounts, or the
        # key pair in the database encrypted with this secret (Fernet: 32 url-safe base64 bytes);
        # neither: a key pair in this host's data directory (one host only).
        self.SSH_KEY_FILE = env.get("GPUAAS_SSH_KEY_FILE") or None
        self.SECRET_KEY = env.get("GPUAAS_SECRET_KEY") or None
        if self.SECRET_KEY:
            from cryptography.fernet import Fernet

            try:
                Fernet(self.SECRET_KEY.encode())
            except ValueError as error:
                raise ValueError("GPUAAS_SECRET_KEY must be 32 url-safe base64-encoded bytes; make one with: python3 -c "
                                 "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'") from error
        self.TESTING = False

    def _check_limits(self) -> None:
        """The request body cap, the login throttle's limits and the proxy hops: in range."""
        if self.MAX_BODY_BYTES < 1024:
            raise ValueError("GPUAAS_MAX_BODY_BYTES must be at least 1024 (a login body)")
        if min(self.LOGIN_FAILURES_PER_USER_ADDRESS, self.LOGIN_FAILURES_PER_ADDRESS, self.LOGIN_FAILURE_WINDOW_SECONDS) < 1:
            raise ValueError("GPUAAS_LOGIN_FAILURES_PER_USER_ADDRESS, GPUAAS_LOGIN_FAILURES_PER_ADDRESS and "
                             "GPUAAS_LOGIN_FAILURE_WINDOW_SECONDS must be positive")
        if self.TRUSTED_PROXY_HOPS < 0:
            raise ValueError("GPUAAS_TRUSTED_PROXY_HOPS must be 0 or more")

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
