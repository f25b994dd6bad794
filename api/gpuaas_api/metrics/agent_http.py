"""GPU readings pulled from the gpuaas agents over HTTP (``GET /status``, bearer token).

One request per node, with a fresh connection each (``Connection: close``: a minute apart, a
kept-alive connection would only hold a thread on every agent), all nodes at once up to a bound
on the threads, each with a connect and a read timeout, and the whole within a deadline. A node
is *answered* (its report, parsed) or *failed* (the reason, one line); a node still in flight
at the deadline is neither, and the caller leaves it alone this period.

Standard library only (http.client): the collector runs in each API process's housekeeper, where
every millisecond of CPU per node counts (bench/agent_collector.py).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import socket
import time

from .series import GPU_METRICS

STATUS_PATH = "/status"
# A node's status with a few hundred slots is tens of KiB; anything far larger is not an agent's.
MAX_REPLY_BYTES = 4 * 1024 * 1024
HEALTHY = "Healthy"  # the agent's word (gpuaas_agent.plugin.HEALTHY)


@dataclasses.dataclass(frozen=True)
class Target:
    node_id: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass
class AgentReads:
    answered: dict[int, dict]  # node id -> the agent's status
    failed: dict[int, str]  # node id -> why it did not answer
    skipped: list[int]  # still in flight at the deadline: no verdict this period
    seconds: float


class AgentError(Exception):
    pass


def fetch_status(target: Target, token: str, connect_timeout: float, read_timeout: float) -> dict:
    """The agent's status as JSON; AgentError with one line otherwise."""
    connection = http.client.HTTPConnection(target.host, target.port, timeout=connect_timeout)
    try:
        connection.connect()
        connection.sock.settimeout(read_timeout)  # each read, from here on
        connection.request("GET", STATUS_PATH, headers={"Authorization": f"Bearer {token}", "Accept": "application/json",
                                                        "Connection": "close"})
        response = connection.getresponse()
        body = response.read(MAX_REPLY_BYTES + 1)
        if response.status == 401:
            raise AgentError("HTTP 401: the agent refused the token")
        if response.status != 200:
            raise AgentError(f"HTTP {response.status}")
        return status_from_bytes(body)
    except socket.timeout as error:
        raise AgentError(f"timed out ({error})") from error
    except ConnectionRefusedError as error:
        raise AgentError("connection refused (is the agent running with http_listen?)") from error
    except (OSError, http.client.HTTPException) as error:
        raise AgentError(f"{type(error).__name__}: {error}") from error
    except ValueError as error:  # JSON, or a header http.client could not parse
        raise AgentError(f"the reply is not JSON: {error}") from error
    finally:
        connection.close()


def status_from_bytes(body: bytes) -> dict:
    """An agent's status (its HTTP reply or its status file) parsed; AgentError with one line otherwise."""
    if len(body) > MAX_REPLY_BYTES:
        raise AgentError(f"a reply over {MAX_REPLY_BYTES} bytes")
    try:
        status = json.loads(body)
    except ValueError as error:
        raise AgentError(f"the reply is not JSON: {error}") from error
    if not isinstance(status, dict) or not isinstance(status.get("gpus"), dict):
        raise AgentError("the reply is not an agent's status (no gpus)")
    return status


def tenant_section(status: dict) -> dict | None:
    """The status's ``tenants`` (checked when stored: node_reports.tenant_report); None without one
    (an agent older than 0.2.0)."""
    tenants = status.get("tenants")
    return tenants if isinstance(tenants, dict) else None


def read_agents(targets: list[Target], token: str, connect_timeout: float, read_timeout: float,
                concurrency: int, deadline_seconds: float) -> AgentReads:
    """Every target's status, concurrently; returns by the deadline whatever is still in flight."""
    started = time.monotonic()
    reads = AgentReads({}, {}, [], 0.0)
    if not targets:
        return reads
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(concurrency, len(targets)),
                                                 thread_name_prefix="gpuaas-agent-read")
    try:
        futures = {pool.submit(fetch_status, target, token, connect_timeout, read_timeout): target for target in targets}
        done, not_done = concurrent.futures.wait(futures, timeout=deadline_seconds)
        for future in done:
            target = futures[future]
            try:
                reads.answered[target.node_id] = future.result()
            except AgentError as error:
                reads.failed[target.node_id] = str(error)
            # A verdict for the node, never a raise out of the collection.
            except Exception as error:  # pylint: disable=broad-except
                reads.failed[target.node_id] = f"{type(error).__name__}: {error}"
        reads.skipped = sorted(futures[future].node_id for future in not_done)
    finally:
        # Unstarted reads are dropped; those in flight end within their own timeouts.
        pool.shutdown(wait=False, cancel_futures=True)
    reads.seconds = time.monotonic() - started
    return reads


def gpu_readings(status: dict) -> dict[str, dict]:
    """uuid -> readings for each GPU the agent reports healthy with every reading the store keeps."""
    found = {}
    for uuid, gpu in status.get("gpus", {}).items():
        if not isinstance(gpu, dict) or gpu.get("health") != HEALTHY:
            continue
        readings = gpu.get("readings")
        if isinstance(readings, dict) and all(_number(readings.get(name)) for name in GPU_METRICS):
            found[uuid] = readings
    return found


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
