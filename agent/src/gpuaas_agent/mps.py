"""One MPS control daemon per medium-level GPU, each with its own pipe and log directories.

NVIDIA's MPS documentation: ``nvidia-cuda-mps-control -d`` starts the control daemon in the
background; it and its clients find each other through CUDA_MPS_PIPE_DIRECTORY, it logs to
CUDA_MPS_LOG_DIRECTORY (control.log), and ``echo quit | nvidia-cuda-mps-control`` with the
same pipe directory stops it. CUDA_VISIBLE_DEVICES limits the daemon to its GPU.

The daemons outlive an agent restart (the unit's KillMode=process): tenants' running MPS
clients are not cut off, and a new agent finds each daemon through its pipe directory.
"""
from __future__ import annotations

import logging
import os
import subprocess

from .config import Settings
from .devices import mps_log_dir, mps_pipe_dir

log = logging.getLogger("gpuaas_agent.mps")
CONTROL_TIMEOUT_SECONDS = 10


class MpsDaemons:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.errors: dict = {}  # uuid -> why its daemon is not running
        self.limits: dict = {}  # uuid -> (memory MB, thread percent) set as the daemon's defaults

    def _env(self, uuid: str) -> dict:
        return {**os.environ, "CUDA_VISIBLE_DEVICES": uuid, "CUDA_MPS_PIPE_DIRECTORY": mps_pipe_dir(self.settings, uuid),
                "CUDA_MPS_LOG_DIRECTORY": mps_log_dir(self.settings, uuid)}

    def _control(self, uuid: str, *args: str, command: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([self.settings.mps_control, *args], input=command, env=self._env(uuid),
                              capture_output=True, text=True, timeout=CONTROL_TIMEOUT_SECONDS, check=False)

    def running(self, uuid: str) -> bool:
        """The daemon answers on its pipe directory."""
        try:
            return self._control(uuid, command="get_server_list\n").returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def ensure(self, shares: dict) -> None:
        """Run a daemon for each GPU of ``shares`` (uuid -> GpuShare), with its slot's limits as the
        daemon's defaults; record why one cannot run."""
        self.errors = {uuid: error for uuid, error in self.errors.items() if uuid in shares}
        for uuid in sorted(shares):
            if self.running(uuid):
                self.set_limits(uuid, shares[uuid])
                continue
            for directory in (mps_pipe_dir(self.settings, uuid), mps_log_dir(self.settings, uuid)):
                os.makedirs(directory, mode=0o755, exist_ok=True)
            try:
                started = self._control(uuid, "-d")
            except (OSError, subprocess.TimeoutExpired) as error:
                self.errors[uuid] = f"cannot run {self.settings.mps_control}: {error}"
            else:
                if started.returncode == 0 and self.running(uuid):
                    log.info("GPU %s: MPS control daemon started (pipe %s)", uuid, mps_pipe_dir(self.settings, uuid))
                    self.set_limits(uuid, shares[uuid])
                    continue
                output = " ".join((started.stderr + started.stdout).split()) or f"exit status {started.returncode}"
                self.errors[uuid] = f"MPS control daemon did not start: {output}"
            log.error("GPU %s: %s", uuid, self.errors[uuid])

    def set_limits(self, uuid: str, share) -> None:
        """One slot's share as the daemon's default for every client: the MPS server applies it
        to a client that sets no limit of its own (CUDA_MPS_PINNED_DEVICE_MEM_LIMIT and
        CUDA_MPS_ACTIVE_THREAD_PERCENTAGE in the client's environment set its own, as Allocate
        does for the slots a container holds). Device 0: the daemon sees only its GPU."""
        commands = (f"set_default_device_pinned_mem_limit 0 {share.memory_limit_mb}M\n"
                    f"set_default_active_thread_percentage {share.compute_share_percent}\n")
        try:
            answer = self._control(uuid, command=commands)
        except (OSError, subprocess.TimeoutExpired) as error:
            self.errors[uuid] = f"cannot set the MPS daemon's limits: {error}"
        else:
            if answer.returncode == 0:
                self.errors.pop(uuid, None)
                self.limits[uuid] = (share.memory_limit_mb, share.compute_share_percent)
                return
            self.errors[uuid] = "cannot set the MPS daemon's limits: " + (
                " ".join((answer.stderr + answer.stdout).split()) or f"exit status {answer.returncode}")
        log.error("GPU %s: %s", uuid, self.errors[uuid])

    def stop_others(self, keep: set) -> None:
        """Stop the daemons of GPUs that are no longer medium."""
        root = self.settings.mps_root
        for uuid in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            if uuid in keep or not os.path.isdir(mps_pipe_dir(self.settings, uuid)):
                continue
            if self.running(uuid):
                try:
                    self._control(uuid, command="quit\n")
                except (OSError, subprocess.TimeoutExpired) as error:
                    log.error("GPU %s: cannot stop its MPS control daemon: %s", uuid, error)
                    continue
                self.limits.pop(uuid, None)
                log.info("GPU %s: MPS control daemon stopped", uuid)
