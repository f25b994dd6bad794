"""What one host's part of a playbook run came to (ansible-runner's stats per host)."""
from __future__ import annotations


def host_outcome(result, host: str) -> tuple[str, int | None]:
    """(runner status, rc) for ``host``: a whole-run end (canceled, timeout, error) is every host's."""
    if result.status not in ("successful", "failed"):
        return result.status, result.rc
    if host in result.stats.get("dark", {}):
        return "failed", 4
    if host in result.stats.get("failures", {}):
        return "failed", 2
    if host not in result.stats.get("processed", {}):
        return "failed", result.rc
    return "successful", 0


def reached(result, host: str) -> bool:
    return any(host in result.stats.get(kind, {}) for kind in ("processed", "dark", "failures"))


def someone_failed(result) -> bool:
    return bool(result.stats.get("dark") or result.stats.get("failures"))


def host_artifact(artifact_data: dict, host: str) -> dict:
    """The part of a batch's result about ``host``: each per-host key, narrowed to it."""
    return {key: {host: value[host]} for key, value in artifact_data.items() if isinstance(value, dict) and host in value}


def stopped_before(result, host: str) -> bool:
    """The run stopped before it reached ``host`` because others failed (a rolling reboot stops when a
    whole serial batch failed): not this host's failure, and nothing was done to it."""
    return result.status == "failed" and not reached(result, host) and someone_failed(result)
