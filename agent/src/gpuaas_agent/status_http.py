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

# Prometheus metric -> (the reading's key, help); the readings are nvml_access.gpu_metrics's.
GPU_GAUGES = {
    "gpuaas_gpu_utilization_percent": ("utilization_gpu_percent", "GPU utilisation, percent"),
    "gpuaas_gpu_memory_utilization_percent": ("utilization_memory_percent", "GPU memory controller utilisation, percent"),
    "gpuaas_gpu_memory_used_megabytes": ("memory_used_mb", "GPU memory used, MiB"),
    "gpuaas_gpu_temperature_celsius": ("temperature_c", "GPU temperature, degrees Celsius"),
    "gpuaas_gpu_power_watts": ("power_w", "GPU power draw, watts"),
}


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
        healthy = GaugeMetricFamily("gpuaas_gpu_healthy", "1 when NVML answers for the GPU", labels=labels)
        for uuid, gpu in self.status["gpus"].items():
            values = [uuid, str(gpu["index"]), str(gpu["pool_id"] or ""), gpu["resource"] or ""]
            healthy.add_metric(values, 1.0 if gpu["health"] == "Healthy" else 0.0)
            for name, (key, unused_help) in GPU_GAUGES.items():
                if key in gpu.get("readings", {}):
                    gauges[name].add_metric(values, float(gpu["readings"][key]))
        devices = GaugeMetricFamily("gpuaas_resource_devices", "Devices advertised to the kubelet",
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

    def mps_repairs(self) -> CounterMetricFamily:
        """Per medium GPU, how often its MPS control daemon was put back since the agent started:
        reason stopped (a tenant sent quit) or defaults_changed (a tenant sent set_default_*)."""
        repairs = CounterMetricFamily("gpuaas_agent_mps_repairs", "MPS control daemons put back with their pool's limits",
                                      labels=["gpu", "reason"])
        for uuid, gpu in self.status["gpus"].items():
            for reason, count in ((gpu.get("mps") or {}).get("repairs") or {}).items():
                repairs.add_metric([uuid, reason], count)
        return repairs


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
