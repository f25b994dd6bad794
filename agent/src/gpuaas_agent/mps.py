"""One MPS control daemon per medium-level GPU: its own pipe, log and /dev/shm, its pool's
limits as its defaults, and a check every poll that it still runs with them.

NVIDIA's MPS documentation (docs.nvidia.com/deploy/mps, "Legacy MPS v2 Interface" and
"Appendix: Environment Variables"): ``nvidia-cuda-mps-control -d`` starts the control daemon in
the background; it and its clients find each other through CUDA_MPS_PIPE_DIRECTORY, it logs to
CUDA_MPS_LOG_DIRECTORY (control.log); CUDA_VISIBLE_DEVICES limits it to its GPU. Any process that
reaches the pipe directory can send it any command: ``quit`` stops it, and
``set_default_active_thread_percentage`` / ``set_default_device_pinned_mem_limit`` change the
defaults of the next MPS server it spawns.

**A private /dev/shm.** NVIDIA's k8s-device-plugin gives its MPS control daemon a tmpfs of its
own as /dev/shm (cmd/mps-control-daemon/mount/mount-shm.go: tmpfs, rw,nosuid,nodev,noexec, half
the RAM; the daemon's container mounts it at /dev/shm) and mounts the same tmpfs at /dev/shm in
every client (internal/plugin/mps.go). Our daemons run on the host, so each starts in a mount
namespace of its own (``unshare --mount``) in which <mps_root>/<uuid>/shm, a tmpfs the agent
mounted on the host, is bind-mounted on /dev/shm; Allocate mounts that tmpfs at a client's
/dev/shm. Propagation "slave": an unmount on the host reaches the daemon's namespace (a private
copy would hold every mount that existed when it started, pod volumes included, for as long as
the daemon runs), and the daemon's /dev/shm does not reach the host.

**Repair.** Every poll the agent asks each daemon for its defaults. One that no longer answers
(a tenant sent ``quit``) is started again; one whose defaults differ from the pool's (a tenant
sent ``set_default_*``) has them set again. Each is counted per GPU and reason (status,
/metrics). The daemons outlive an agent restart (the unit's KillMode=process): tenants' running
MPS clients are not cut off, and a new agent finds each daemon through its pipe directory.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from concurrent import futures

from .config import Settings
from .devices import mps_log_dir, mps_pipe_dir, mps_shm_dir

log = logging.getLogger("gpuaas_agent.mps")
CONTROL_TIMEOUT_SECONDS = 10  # starting, stopping, setting limits
# Each poll's check: a daemon that does not answer holds the loop this long at most (the GPUs are
# checked in parallel), and its slots turn Unhealthy.
CHECK_TIMEOUT_SECONDS = 3
REPAIR_REASONS = ("stopped", "defaults_changed")
# Run inside the daemon's own mount namespace: its tmpfs on /dev/shm, then the daemon itself.
STARTER = 'mount --bind "$1" /dev/shm && exec "$2" -d'
# A memory limit as the daemon answers it: NVIDIA documents the value set as an integer with G or
# M; its GPU Operator's MPS guide (NVIDIA/cloud-native-docs gpu-operator/gpu-sharing-mps.rst)
# shows "3G" answered where the device plugin set 3840M (a T4 in 4 replicas), so whole GiB,
# truncated, are accepted too.
_MEMORY_ANSWER = re.compile(r"(\d+(?:\.\d+)?)\s*([MG])(?:i?B)?", re.IGNORECASE)


def one_line(text: str) -> str:
    return " ".join(text.split())


def what_it_said(done: subprocess.CompletedProcess) -> str:
    return one_line(done.stderr + done.stdout) or f"exit status {done.returncode}"


def same_megabytes(answer: str, megabytes: int) -> bool:
    match = _MEMORY_ANSWER.fullmatch(answer.strip())
    if not match:
        return False
    value = float(match[1])
    if match[2].upper() == "M":
        return value == megabytes
    return value in (megabytes / 1024, megabytes // 1024)


def same_percentage(answer: str, percent: int) -> bool:
    try:
        return float(answer.strip()) == float(percent)
    except ValueError:
        return False


class MpsDaemons:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.errors: dict = {}  # uuid -> why its daemon is not running with its limits
        self.limits: dict = {}  # uuid -> (memory MB, thread percent) the daemon runs with
        self.repairs: dict = {}  # uuid -> {reason: count}
        self.last_repair: dict = {}  # uuid -> {"reason", "time", "poll", "detail"}
        self.poll = 0  # the agent's poll number, for the record of a repair

    # ------------------------------------------------------------ talking to a daemon
    def _env(self, uuid: str) -> dict:
        return {**os.environ, "CUDA_VISIBLE_DEVICES": uuid, "CUDA_MPS_PIPE_DIRECTORY": mps_pipe_dir(self.settings, uuid),
                "CUDA_MPS_LOG_DIRECTORY": mps_log_dir(self.settings, uuid)}

    def _control(self, uuid: str, *args: str, command: str | None = None,
                 timeout: float = CONTROL_TIMEOUT_SECONDS) -> subprocess.CompletedProcess:
        return subprocess.run([self.settings.mps_control, *args], input=command, env=self._env(uuid),
                              capture_output=True, text=True, timeout=timeout, check=False)

    def ask(self, uuid: str, command: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> str | None:
        """The daemon's answer to one command; None when no daemon answers on the pipe directory."""
        done = self._control(uuid, command=command + "\n", timeout=timeout)
        return done.stdout.strip() if done.returncode == 0 else None

    def running(self, uuid: str) -> bool:
        try:
            return self.ask(uuid, "get_server_list", CONTROL_TIMEOUT_SECONDS) is not None
        except (OSError, subprocess.TimeoutExpired):
            return False

    @staticmethod
    def queries(uuid: str) -> tuple:
        """The defaults the agent sets, as it reads them back. The memory limit is read for both
        names of the GPU: the daemon keeps one per identifier, does not translate between them,
        and a server takes whichever was set last (MPS v2 interface,
        set_default_device_pinned_mem_limit)."""
        return ("get_default_active_thread_percentage",
                *(f"get_default_device_pinned_mem_limit {device}" for device in ("0", uuid)))

    def defaults(self, uuid: str) -> dict | None:
        """Query -> answer; None when the daemon does not run.

        The front-end answers each get_* command on a line of its own, in order, so the queries
        go in one call: one process per GPU and poll, not one per query (on a node of eight
        medium GPUs, 8 rather than 24 a second). Answers that do not come one a line are asked
        again one query a call."""
        queries = self.queries(uuid)
        together = self.ask(uuid, "\n".join(queries))
        if together is None:
            return None
        lines = together.splitlines()
        if len(lines) == len(queries):
            return dict(zip(queries, (line.strip() for line in lines)))
        answers = {}
        for query in queries:
            answer = self.ask(uuid, query)
            if answer is None:
                return None
            answers[query] = answer
        return answers

    @staticmethod
    def hold(answers: dict, wanted: tuple) -> bool:
        memory_mb, percent = wanted
        return all(same_percentage(answer, percent) if query.endswith("percentage") else same_megabytes(answer, memory_mb)
                   for query, answer in answers.items())

    # ------------------------------------------------------------ keeping them
    def ensure(self, shares: dict) -> None:
        """Each GPU of ``shares`` (uuid -> GpuShare) has a daemon running with its pool's limits;
        repaired where not, or the reason recorded. Called every poll; the GPUs in parallel."""
        self.errors = {uuid: error for uuid, error in self.errors.items() if uuid in shares}
        with futures.ThreadPoolExecutor(max_workers=max(1, len(shares))) as pool:
            list(pool.map(lambda uuid: self._keep(uuid, shares[uuid]), sorted(shares)))

    def _keep(self, uuid: str, share) -> None:
        wanted = (share.memory_limit_mb, share.compute_share_percent)
        try:
            answers = self.defaults(uuid)
        except subprocess.TimeoutExpired:
            self.fail(uuid, f"its MPS control daemon does not answer within {CHECK_TIMEOUT_SECONDS} s")
            return
        except OSError as error:
            self.fail(uuid, f"cannot run {self.settings.mps_control}: {error}")
            return
        if answers is not None and not os.path.ismount(mps_shm_dir(self.settings, uuid)):
            # Started by an agent before private /dev/shm: its clients cannot attach. Once.
            log.warning("GPU %s: its MPS control daemon has no /dev/shm of its own: starting it again", uuid)
            self.quit(uuid)
            answers = None
        applied = self.limits.get(uuid) == wanted
        if answers is None:
            self.limits.pop(uuid, None)
            if applied:
                self.note_repair(uuid, "stopped", "its control daemon no longer answered")
            if not self.start(uuid):
                return
        elif self.hold(answers, wanted):
            self.limits[uuid] = wanted
            self.errors.pop(uuid, None)
            return
        elif applied:
            self.note_repair(uuid, "defaults_changed", "; ".join(f"{query}: {answer!r}" for query, answer in answers.items()))
        self.set_limits(uuid, share)

    def start(self, uuid: str) -> bool:
        shm = mps_shm_dir(self.settings, uuid)
        for directory in (mps_pipe_dir(self.settings, uuid), mps_log_dir(self.settings, uuid), shm):
            os.makedirs(directory, mode=0o755, exist_ok=True)
        trouble = self.mount_shm(shm) or self.launch(uuid, shm)
        if not trouble:
            log.info("GPU %s: MPS control daemon started (pipe %s, /dev/shm %s)", uuid, mps_pipe_dir(self.settings, uuid), shm)
            return True
        self.fail(uuid, trouble)
        return False

    def launch(self, uuid: str, shm: str) -> str:
        """The daemon, in a mount namespace of its own with ``shm`` on /dev/shm; returns what failed."""
        argv = ["unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", STARTER, "sh", shm, self.settings.mps_control]
        try:
            started = subprocess.run(argv, env=self._env(uuid), capture_output=True, text=True,
                                     timeout=CONTROL_TIMEOUT_SECONDS, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"cannot run {self.settings.mps_control} in a mount namespace of its own: {error}"
        if started.returncode == 0 and self.running(uuid):
            return ""
        return f"MPS control daemon did not start: {what_it_said(started)}"

    def mount_shm(self, shm: str) -> str:
        """The GPU's tmpfs, mounted once and kept while the GPU is medium: running containers hold
        it at their /dev/shm, so a restarted daemon must find the same one. Returns what failed."""
        if os.path.ismount(shm):
            return ""
        argv = ["mount", "-t", "tmpfs", "-o", f"rw,nosuid,nodev,noexec,size={self.settings.mps_shm_size}", "gpuaas-mps-shm", shm]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=CONTROL_TIMEOUT_SECONDS, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"cannot mount a tmpfs on {shm}: {error}"
        return "" if done.returncode == 0 else f"cannot mount a tmpfs on {shm}: {one_line(done.stderr) or done.returncode}"

    def set_limits(self, uuid: str, share) -> None:
        """One slot's share as the daemon's default for every client: the MPS server applies it
        to a client that sets no limit of its own; CUDA_MPS_PINNED_DEVICE_MEM_LIMIT and
        CUDA_MPS_ACTIVE_THREAD_PERCENTAGE in a client's environment (as Allocate sets for the
        slots a container holds) can only lower it. The memory limit under both of the GPU's
        names (queries); device 0 because the daemon sees only its GPU."""
        commands = "".join(f"set_default_device_pinned_mem_limit {device} {share.memory_limit_mb}M\n" for device in ("0", uuid))
        commands += f"set_default_active_thread_percentage {share.compute_share_percent}\n"
        wanted = (share.memory_limit_mb, share.compute_share_percent)
        # Read back: a second try when the answers differ, since a tenant may have changed them in
        # between (then counted); answers that differ twice are ones the agent cannot read.
        first = None
        for unused_attempt in range(2):
            try:
                answer = self._control(uuid, command=commands)
                answers = self.defaults(uuid) if answer.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired) as error:
                self.fail(uuid, f"cannot set the MPS daemon's limits: {error}")
                return
            if answer.returncode != 0:
                self.fail(uuid, f"cannot set the MPS daemon's limits: {what_it_said(answer)}")
                return
            if answers is not None and self.hold(answers, wanted):
                if first:
                    self.note_repair(uuid, "defaults_changed", "while the agent set them: " + "; ".join(
                        f"{query}: {value!r}" for query, value in first.items()))
                self.limits[uuid] = wanted
                self.errors.pop(uuid, None)
                return
            first = answers
        self.fail(uuid, f"the MPS daemon does not answer the limits it was given: {answers}")

    def fail(self, uuid: str, reason: str) -> None:
        """Record why the GPU's daemon is not usable (its slots turn Unhealthy); logged once per reason."""
        if self.errors.get(uuid) != reason:
            log.error("GPU %s: %s", uuid, reason)
        self.errors[uuid] = reason
        self.limits.pop(uuid, None)

    def note_repair(self, uuid: str, reason: str, detail: str) -> None:
        counts = self.repairs.setdefault(uuid, dict.fromkeys(REPAIR_REASONS, 0))
        counts[reason] += 1
        self.last_repair[uuid] = {"reason": reason, "time": time.time(), "poll": self.poll, "detail": detail}
        log.warning("GPU %s: MPS control daemon %s (%s): putting back the pool's daemon and limits", uuid,
                    reason.replace("_", " "), detail)

    # ------------------------------------------------------------ stopping them
    def quit(self, uuid: str) -> bool:
        try:
            self._control(uuid, command="quit\n")
        except (OSError, subprocess.TimeoutExpired) as error:
            log.error("GPU %s: cannot stop its MPS control daemon: %s", uuid, error)
            return False
        return True

    def stop_others(self, keep: set) -> None:
        """Stop the daemons of GPUs that are no longer medium, and unmount their tmpfs (lazily:
        a container that still runs keeps its own mount of it)."""
        root = self.settings.mps_root
        for uuid in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            if uuid in keep or not os.path.isdir(mps_pipe_dir(self.settings, uuid)):
                continue
            if self.running(uuid):
                if not self.quit(uuid):
                    continue
                self.limits.pop(uuid, None)
                log.info("GPU %s: MPS control daemon stopped", uuid)
            shm = mps_shm_dir(self.settings, uuid)
            if os.path.ismount(shm):
                subprocess.run(["umount", "--lazy", shm], capture_output=True, check=False, timeout=CONTROL_TIMEOUT_SECONDS)
