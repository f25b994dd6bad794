"""Status and readings over HTTP, for the platform's collectors and for Prometheus.

``GET /status`` is JSON: what the agent advertises, each GPU's health and the sharing applied,
and per GPU its utilisation, memory used, temperature and power. ``GET /metrics`` is the same
readings as Prometheus text. Every request needs ``Authorization: Bearer <token>``, the token
the role installs (http_token_file); without a token the server does not start, and it listens
only where the operator says (http_listen), never by default.
"""
from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("gpuaas_agent.http")

# Every name the agent exports starts with gpuaas_agent_: the REST service's own /metrics uses
# gpuaas_gpu_* with other labels (docs/api.md), and a Prometheus that scrapes both must not mix them.
# Prometheus metric -> (the reading's key, help); the readings are nvml_access.gpu_metrics's.
GPU_GAUGES = {
    "gpuaas_agent_gpu_utilization_percent": ("utilization_gpu_percent", "GPU utilisation, percent"),
    "gpuaas_agent_gpu_memory_utilization_percent": ("utilization_memory_percent", "GPU memory controller utilisation, percent"),
    "gpuaas_agent_gpu_memory_used_megabytes": ("memory_used_mb", "GPU memory used, MiB"),
    "gpuaas_agent_gpu_temperature_celsius": ("temperature_c", "GPU temperature, degrees Celsius"),
    "gpuaas_agent_gpu_power_watts": ("power_w", "GPU power draw, watts"),
}
# A slot's series: which device of which resource on which GPU, and its tenant (empty when free).
SLOT_LABELS = ["resource", "slot", "gpu", "namespace", "pod", "container"]


class TokenMissing(Exception):
    pass


def read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as error:
        raise TokenMissing(f"{path}: {error.strerror}") from error
    if not token:
        raise TokenMissing(f"{path} is empty")
    return token


class StatusCollector:
    """Prometheus metrics from one status snapshot."""

    def __init__(self, status: dict):
        self.status = status

    def collect(self):
        labels = ["gpu", "index", "pool_id", "resource"]
        gauges = {name: GaugeMetricFamily(name, help_, labels=labels) for name, (unused_key, help_) in GPU_GAUGES.items()}
        healthy = GaugeMetricFamily("gpuaas_agent_gpu_healthy", "1 when NVML answers for the GPU", labels=labels)
        for uuid, gpu in self.status["gpus"].items():
            values = [uuid, str(gpu["index"]), str(gpu["pool_id"] or ""), gpu["resource"] or ""]
            healthy.add_metric(values, 1.0 if gpu["health"] == "Healthy" else 0.0)
            for name, (key, unused_help) in GPU_GAUGES.items():
                if key in gpu.get("readings", {}):
                    gauges[name].add_metric(values, float(gpu["readings"][key]))
        devices = GaugeMetricFamily("gpuaas_agent_resource_devices", "Devices advertised to the kubelet",
                                    labels=["resource", "health"])
        for name, resource in self.status["resources"].items():
            devices.add_metric([name, "Healthy"], resource["healthy"])
            devices.add_metric([name, "Unhealthy"], resource["devices"] - resource["healthy"])
        version = GaugeMetricFamily("gpuaas_agent_config_version", "The sharing configuration version in force")
        version.add_metric([], self.status["config"]["version"])
        yield healthy
        yield from gauges.values()
        yield devices
        yield version
        yield self.mps_repairs()
        if "tenants" in self.status:
            yield from self.tenants(self.status["tenants"])

    def mps_repairs(self) -> CounterMetricFamily:
        """Per medium GPU, how often its MPS control daemon was put back since the agent started:
        reason stopped (a tenant sent quit) or defaults_changed (a tenant sent set_default_*)."""
        repairs = CounterMetricFamily("gpuaas_agent_mps_repairs", "MPS control daemons put back with their pool's limits",
                                      labels=["gpu", "reason"])
        for uuid, gpu in self.status["gpus"].items():
            for reason, count in ((gpu.get("mps") or {}).get("repairs") or {}).items():
                repairs.add_metric([uuid, reason], count)
        return repairs

    @staticmethod
    def tenants(report: dict):
        """Per slot: its state, its tenant's processes, vRAM and GPU time (a counter per tenant:
        a new tenant starts a new series), with the Pod's namespace and name as labels; per GPU,
        the processes flagged (a Pod's, outside its allocation or of an ended Pod) and unknown."""
        known = GaugeMetricFamily("gpuaas_agent_tenants_known",
                                  "1 when the kubelet's PodResources answered, so every slot's tenant is known")
        known.add_metric([], 1.0 if report["state"] == "ok" else 0.0)
        state = GaugeMetricFamily("gpuaas_agent_slot_state", "1 for the slot's state (free, idle, running, unknown)",
                                  labels=SLOT_LABELS + ["state"])
        processes = GaugeMetricFamily("gpuaas_agent_slot_processes", "The tenant's processes on the slot's GPU",
                                      labels=SLOT_LABELS)
        vram = GaugeMetricFamily("gpuaas_agent_slot_memory_used_megabytes",
                                 "vRAM the tenant's processes use, MiB (a container's k slots on a GPU: 1/k each)",
                                 labels=SLOT_LABELS)
        seconds = CounterMetricFamily("gpuaas_agent_slot_gpu_seconds",
                                      "GPU time the tenant's processes received, seconds (NVML process utilisation)",
                                      labels=SLOT_LABELS)
        for device, slot in report["slots"].items():
            tenant = slot["tenant"] or {}
            values = [slot["resource"], device, slot["gpu"], tenant.get("namespace", ""), tenant.get("pod", ""),
                      tenant.get("container", "")]
            state.add_metric(values + [slot["state"]], 1.0)
            if slot["state"] in ("idle", "running"):
                processes.add_metric(values, len(slot["processes"]))
                vram.add_metric(values, slot["vram_used_mb"])
                seconds.add_metric(values, slot["gpu_seconds"])
        flagged = GaugeMetricFamily("gpuaas_agent_flagged_processes",
                                    "A Pod's processes on a GPU outside its container's allocation, or of an ended Pod",
                                    labels=["gpu", "namespace", "pod", "container", "flag"])
        counts: dict = {}
        for entry in report["flagged"]:
            key = (entry["gpu"], entry["namespace"], entry["pod"], entry["container"], entry["flag"])
            counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            flagged.add_metric(list(key), count)
        unknown = GaugeMetricFamily("gpuaas_agent_unknown_processes", "Processes on the GPU that belong to no known Pod",
                                    labels=["gpu"])
        per_gpu: dict = {}
        for entry in report["unknown"]:
            per_gpu[entry["gpu"]] = per_gpu.get(entry["gpu"], 0) + 1
        for gpu, count in sorted(per_gpu.items()):
            unknown.add_metric([gpu], count)
        yield from (known, state, processes, vram, seconds, flagged, unknown)


def serve(listen: str, token: str, snapshot) -> ThreadingHTTPServer:
    """Start the server in a thread; ``snapshot()`` gives the status with readings."""
    host, port = listen.rsplit(":", 1)
    host = host.strip("[]")

    class Handler(BaseHTTPRequestHandler):
        server_version = "gpuaas-agent"
        timeout = 10  # an idle or slow client does not hold its thread

        def log_message(self, format, *args):  # pylint: disable=redefined-builtin
            log.debug("%s %s", self.address_string(), format % args)

        def reply(self, status: HTTPStatus, body: bytes, content_type: str, extra: dict | None = None):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # pylint: disable=invalid-name
            given = self.headers.get("Authorization", "")
            if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode())):
                self.reply(HTTPStatus.UNAUTHORIZED, b'{"error": "a bearer token is required"}\n', "application/json",
                           {"WWW-Authenticate": 'Bearer realm="gpuaas-agent"'})
                return
            path = self.path.split("?", 1)[0]
            if path == "/status":
                self.reply(HTTPStatus.OK, (json.dumps(snapshot(), sort_keys=True) + "\n").encode(), "application/json")
            elif path == "/metrics":
                registry = CollectorRegistry(auto_describe=False)
                registry.register(StatusCollector(snapshot()))
                self.reply(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self.reply(HTTPStatus.NOT_FOUND, b'{"error": "not found; try /status or /metrics"}\n', "application/json")

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    httpd = Server((host, int(port)), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="status-http", daemon=True).start()
    log.info("status and readings on http://%s/status and /metrics (bearer token)", listen)
    return httpd
