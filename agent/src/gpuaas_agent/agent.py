"""The agent's loop: read the sharing configuration, apply it to the GPUs, advertise it.

Every ``poll_seconds`` it looks for:
- a new sharing configuration (the file changed, or SIGHUP): parsed whole, refused in one log
  line if malformed (the last good one stays in force), else applied and re-advertised without
  a restart;
- a new kubelet (kubelet.sock re-created, or a plugin socket gone, which a starting kubelet
  removes): every resource's server is started again and registered again;
- GPU health (NVML): a lost GPU's slots turn Unhealthy through ListAndWatch;
- each medium GPU's MPS control daemon: one that a tenant stopped, or whose defaults a tenant
  changed, is put back with its pool's limits (mps.py), within this one poll;
- each slot's tenant, its processes, their vRAM and GPU time (tenants.py).
Then it writes its status file.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

import grpc

from . import __version__
from .config import EMPTY_SHARING, ConfigError, Settings, parse_sharing
from .devices import HEALTHY, ResourcePlan, mps_pipe_dir, mps_shm_dir, plan
from .gpus import Gpus
from .mps import REPAIR_REASONS, MpsDaemons
from .plugin import KUBELET_SOCKET, ResourceServer, health_of
from .sharing_policy import DEFAULT_COMPUTE_MODE, MPS_SECURITY_LEVELS
from .tenants import Tenants

log = logging.getLogger("gpuaas_agent")
LAST_GOOD = "sharing.last-good.yaml"
# Failed compute modes are tried again every this many polls (MPS daemons are checked every poll).
REPAIR_POLLS = 10


def file_identity(path: str):
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


class Agent:
    def __init__(self, settings: Settings, gpus: Gpus | None = None):
        self.settings = settings
        self.gpus = gpus or Gpus()
        self.mps = MpsDaemons(settings)
        self.tenants = Tenants(settings, self.gpus)
        self.sharing = EMPTY_SHARING
        self.config_error = ""
        self.config_seen = None
        self.kubelet_seen = None
        self.servers: dict = {}  # resource name -> ResourceServer
        self.gpu_states: dict = {}
        self.mode_errors: dict = {}
        self.reload_requested = threading.Event()
        self.stopping = threading.Event()
        self.wake = threading.Event()  # a signal ends the wait between two steps
        self.started_at = time.time()
        self.polls = 0  # steps taken: a repair's poll number says how soon it came
        self.next_repair = 0.0
        self.apply_pending = False  # apply() failed or is due: the next step runs it

    # ---------------------------------------------------------------- configuration
    def read_sharing(self) -> None:
        """Take the sharing file if it parses; otherwise keep what is in force."""
        path = self.settings.sharing_config
        self.config_seen = file_identity(path)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            text = ""
        except OSError as error:
            self.refuse(f"{path}: {error.strerror}")
            return
        try:
            sharing = parse_sharing(text, path)
        except ConfigError as error:
            self.refuse(str(error))
            return
        self.sharing, self.config_error = sharing, ""
        os.makedirs(self.settings.state_dir, exist_ok=True)
        write_atomically(os.path.join(self.settings.state_dir, LAST_GOOD), text)
        log.info("sharing configuration version %d: %d GPUs in %d pool resources", sharing.version,
                 len(sharing.gpus), len(sharing.resources))

    def refuse(self, reason: str) -> None:
        self.config_error = reason
        log.error("sharing configuration refused, version %d stays in force: %s", self.sharing.version, reason)
        if self.sharing is EMPTY_SHARING:  # at start: the last configuration accepted before
            try:
                with open(os.path.join(self.settings.state_dir, LAST_GOOD), encoding="utf-8") as handle:
                    self.sharing = parse_sharing(handle.read(), LAST_GOOD)
            except (OSError, ConfigError):
                pass

    # ---------------------------------------------------------------- applying
    def apply(self) -> None:
        """GPU modes, MPS daemons, and the advertised resources, from the configuration in force."""
        self.gpu_states = self.gpus.probe(readings=True)
        shares = self.sharing.gpus
        if self.settings.manage_gpu_modes:
            wanted = {uuid: shares[uuid].compute_mode if uuid in shares else DEFAULT_COMPUTE_MODE
                      for uuid, state in self.gpu_states.items() if state.healthy}
            self.mode_errors = self.gpus.apply_modes(wanted)
            self.gpu_states = self.gpus.probe(readings=True)
        # Which GPUs keep a daemon follows the configuration, not health: a GPU that misses one
        # probe must not have its tenants' MPS server stopped.
        self.mps.stop_others({uuid for uuid, share in shares.items() if share.security_level in MPS_SECURITY_LEVELS})
        self.mps.ensure(self.medium_shares())
        self.next_repair = time.monotonic() + REPAIR_POLLS * self.settings.poll_seconds
        self.advertise()

    def medium_shares(self) -> dict:
        """The healthy medium GPUs' shares: those whose MPS daemon must run."""
        return {uuid: share for uuid, share in self.sharing.gpus.items() if share.security_level in MPS_SECURITY_LEVELS
                and uuid in self.gpu_states and self.gpu_states[uuid].healthy}

    def repair_due(self) -> bool:
        """Every REPAIR_POLLS polls: a failed compute mode is tried again."""
        if time.monotonic() < self.next_repair:
            return False
        self.next_repair = time.monotonic() + REPAIR_POLLS * self.settings.poll_seconds
        return bool(self.mode_errors)

    def usable_gpus(self) -> set:
        return {uuid for uuid, state in self.gpu_states.items()
                if state.healthy and uuid not in self.mode_errors and uuid not in self.mps.errors}

    def advertise(self) -> None:
        plans = plan(self.sharing, sorted(self.gpu_states), self.settings)
        usable = self.usable_gpus()
        for name, resource_plan in plans.items():
            server = self.servers.get(name)
            if server is None:
                server = self.servers[name] = ResourceServer(resource_plan, self.settings)
                server.update(resource_plan, health_of(resource_plan, usable))
                self.start_and_register(server)
            elif server.update(resource_plan, health_of(resource_plan, usable)):
                log.info("%s: %d devices, %d healthy", name, len(resource_plan.slots),
                         sum(1 for h in server.health.values() if h == HEALTHY))
        for name in [name for name in self.servers if name not in plans]:
            server = self.servers.pop(name)
            # An empty list first, so that the kubelet's capacity for it drops to 0 at once
            # (it keeps a stopped endpoint's devices, unhealthy, for its grace period).
            server.update(ResourcePlan(name, server.plan.endpoint, (), {}), {})
            time.sleep(0.2)
            server.stop()
            log.info("%s: no longer advertised", name)

    def start_and_register(self, server: ResourceServer) -> None:
        """Serve (if not yet) and register; a failure is logged once per reason, and tried again
        at the next step."""
        try:
            if not server.serving():
                server.start()
            server.register()
            server.last_error = ""
        except grpc.RpcError as error:
            self.note_failure(server, f"cannot register with the kubelet yet: "
                                      f"{error.details() if hasattr(error, 'details') else error}")
        except (OSError, RuntimeError) as error:  # grpc raises RuntimeError when it cannot bind
            self.note_failure(server, f"cannot serve on {server.socket_path}: {error}")

    @staticmethod
    def note_failure(server: ResourceServer, reason: str) -> None:
        if reason != server.last_error:
            log.warning("%s: %s", server.plan.name, reason)
        server.last_error = reason

    def kubelet_restarted(self) -> bool:
        seen = file_identity(os.path.join(self.settings.device_plugin_dir, KUBELET_SOCKET))
        changed = seen != self.kubelet_seen
        self.kubelet_seen = seen
        return changed and seen is not None

    # ---------------------------------------------------------------- the loop
    def step(self) -> None:
        """One look at the configuration, the kubelet and the GPUs. Nothing it meets stops the
        agent: an error is logged and the next step tries again."""
        self.polls += 1
        self.mps.poll = self.polls
        try:
            self._step()
        except Exception:  # pylint: disable=broad-exception-caught
            log.exception("step failed; trying again in %s s", self.settings.poll_seconds)
            self.apply_pending = True

    def _step(self) -> None:
        if self.reload_requested.is_set() or file_identity(self.settings.sharing_config) != self.config_seen:
            self.reload_requested.clear()
            before = self.sharing
            self.read_sharing()
            if self.sharing is not before:
                self.apply_pending = True
        if self.apply_pending:
            self.apply_pending = False
            self.apply()
        if self.kubelet_restarted():
            log.info("kubelet.sock is new: serving and registering every resource again")
            for server in self.servers.values():
                server.stop()
                self.start_and_register(server)
        for server in self.servers.values():
            if not server.serving():
                log.info("%s: its socket is gone: serving it again", server.plan.name)
                self.start_and_register(server)
            elif server.registered_at is None:
                self.start_and_register(server)
        before = self.usable_gpus()
        self.gpu_states = self.gpus.probe(readings=True)
        # Every poll, not every REPAIR_POLLS: a tenant can stop its GPU's daemon or change its
        # defaults at any time, and co-tenants depend on it (one query per default per GPU).
        self.mps.ensure(self.medium_shares())
        if self.usable_gpus() != before:
            log.warning("GPU health changed: usable %s", ", ".join(sorted(self.usable_gpus())) or "none")
            self.apply()
        elif self.repair_due():
            self.apply()
        self.refresh_tenants()
        self.write_status()

    def refresh_tenants(self) -> None:
        """Each advertised slot's tenant. A failure here is logged and leaves the tenants unknown;
        it never stops the device plugin or the rest of the step."""
        started = time.thread_time()
        slots = {slot.id: (name, slot.gpu) for name, server in dict(self.servers).items() for slot in server.plan.slots}
        medium = {uuid for uuid, share in self.sharing.gpus.items() if share.security_level in MPS_SECURITY_LEVELS}
        healthy = [uuid for uuid, state in sorted(self.gpu_states.items()) if state.healthy]
        try:
            self.tenants.refresh(slots, medium, healthy)
        except Exception as error:  # pylint: disable=broad-exception-caught
            log.exception("tenants: the look failed")
            self.tenants.report = {**self.tenants.report, "state": "unknown", "reason": f"the agent failed: {error}"}
        # A new dict, not an update: the HTTP thread may be serialising the last one.
        self.tenants.report = {**self.tenants.report, "poll_cpu_ms": round((time.thread_time() - started) * 1000, 3)}

    def run(self) -> None:
        # The last run's report must not stand for this one (the role checks it).
        remove_quietly(self.settings.status_file)

        def on_signal(event):
            def handler(*_):
                event.set()
                self.wake.set()
            return handler
        signal.signal(signal.SIGHUP, on_signal(self.reload_requested))
        signal.signal(signal.SIGTERM, on_signal(self.stopping))
        signal.signal(signal.SIGINT, on_signal(self.stopping))
        log.info("gpuaas-agent %s starting", __version__)
        if not self.gpus.start():
            log.error("NVML: %s; advertising nothing until it answers", self.gpus.unavailable)
        self.read_sharing()
        self.kubelet_seen = file_identity(os.path.join(self.settings.device_plugin_dir, KUBELET_SOCKET))
        self.apply_pending = True
        self.step()
        while not self.stopping.is_set():
            self.wake.wait(self.settings.poll_seconds)
            self.wake.clear()
            if not self.stopping.is_set():
                self.step()
        self.shutdown()

    def shutdown(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.gpus.stop()
        remove_quietly(self.settings.status_file)
        log.info("gpuaas-agent stopped")

    # ---------------------------------------------------------------- status
    def status(self, readings: bool = False) -> dict:
        """What the agent applied and advertises; built from the loop's last probe (the HTTP
        thread calls it too, and never touches NVML itself)."""
        states = self.gpu_states
        gpus = {}
        for uuid, state in sorted(states.items()):
            share = self.sharing.gpus.get(uuid)
            gpus[uuid] = {
                "index": state.index, "health": HEALTHY if state.healthy else "Unhealthy", "error": state.error,
                "compute_mode": state.compute_mode or None,
                "pool_id": share.pool_id if share else None,
                "resource": share.resource if share else (self.settings.whole_gpu_resource or None),
                "security_level": share.security_level if share else None,
                "mps": (self.mps_status(uuid) if share and share.security_level in MPS_SECURITY_LEVELS else None),
                "mode_error": self.mode_errors.get(uuid, ""),
            }
            if readings:
                gpus[uuid]["readings"] = state.readings
        resources = {}
        for name, server in sorted(dict(self.servers).items()):  # a copy: the HTTP thread reads it too
            devices = server.devices()
            resources[name] = {"endpoint": server.plan.endpoint, "registered": server.registered_at is not None,
                               "devices": len(devices),
                               "healthy": sum(1 for device in devices if device["health"] == HEALTHY),
                               "device_ids": [device["id"] for device in devices],
                               "allocations": server.allocations}
        return {"agent_version": __version__, "pid": os.getpid(), "started_at": self.started_at,
                "updated_at": time.time(), "polls": self.polls, "nvml": self.gpus.unavailable or "ok",
                "manage_gpu_modes": self.settings.manage_gpu_modes,
                "config": {"path": self.settings.sharing_config, "version": self.sharing.version,
                           "error": self.config_error},
                "resources": resources, "gpus": gpus, "tenants": self.tenants.report}

    def mps_status(self, uuid: str) -> dict:
        """A medium GPU's daemon: where it is, the limits it runs with, and the repairs the agent
        made (a tenant stopped it, or changed its defaults), counted since the agent started."""
        memory_mb, percent = self.mps.limits.get(uuid, (None, None))
        return {"pipe_directory": mps_pipe_dir(self.settings, uuid), "shm_directory": mps_shm_dir(self.settings, uuid),
                "error": self.mps.errors.get(uuid, ""), "default_pinned_mem_limit_mb": memory_mb,
                "default_active_thread_percentage": percent,
                "repairs": dict(self.mps.repairs.get(uuid, dict.fromkeys(REPAIR_REASONS, 0))),
                "last_repair": self.mps.last_repair.get(uuid)}

    def write_status(self) -> None:
        # Compact: it is written every poll, and with 80 held slots indenting doubles its cost
        # (`gpuaas-agent status` prints it indented).
        write_atomically(self.settings.status_file, json.dumps(self.status(), sort_keys=True, separators=(",", ":")) + "\n")


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:  # not there (or its directory is not): nothing stale to remove
        pass


def write_atomically(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}.tmp"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)
