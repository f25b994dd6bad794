"""One job, one ansible-runner run.

The pitfalls of driving ansible-runner from a service (shared/notes/ansible-runner.md)
each have their answer here: a fresh private data dir per job, the inventory and
extravars as data, events taken through a cheap event_handler, a cancel_callback
always, the whole process tree ended on cancel, a minimal environment, and the
runner's `command` artifact deleted because it holds the environment.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..checkout import COLLECTION_ROOT
from .identity import Claimant, claimant

MAX_EVENT_STDOUT = 64 * 1024  # per event, like AWX's cap but smaller: logs are paginated anyway


@dataclass
class HostSpec:
    node_id: int
    name: str
    address: str
    port: int
    user: str
    groups: list[str]
    host_key: str | None
    hostvars: dict = field(default_factory=dict)


@dataclass
class RunResult:
    status: str  # successful, failed, canceled, timeout, error
    rc: int | None
    stats: dict
    artifact_data: dict
    new_host_keys: dict[int, str]  # node id -> "type base64", for nodes contacted for the first time
    explanation: str = ""


UNSAFE_MARKER = "__ansible_unsafe"


def as_data(value):
    """``value`` with every string in it marked for Ansible as data, never a template.

    Everything the service puts into a job's inventory and extra vars came from an API user or a
    node (a display name, an address, a GPU's UUID), and ansible-core renders inventory values and
    extra vars as templates: `{{ lookup('pipe', …) }}` would run on this host. ansible-runner writes
    both files as JSON, and ansible-core's JSON decoder reads ``{"__ansible_unsafe": "…"}`` as an
    unsafe string at any depth (ansible_host included). Only strings are wrapped: ansible-core 2.19
    refuses the marker around anything else, and then quietly re-reads the whole file as YAML, where
    every string is trusted again (tests/api/test_runner_data.py shows both). Keys are left as
    they are: Ansible never renders a key, and every key here is the service's own; a key that
    ansible-core's JSON reader would take for one of its markers (`__ansible_…`) is refused, since
    one around a non-string would throw the whole file back to YAML in the same way.
    """
    if isinstance(value, str):
        return {UNSAFE_MARKER: value}
    if isinstance(value, dict):
        if any(str(key).startswith("__ansible_") for key in value):
            raise ValueError("a key of a job's variables names an ansible-core JSON marker (__ansible_…)")
        return {key: as_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_data(item) for item in value]
    return value


def collections_path(data_dir: Path) -> Path:
    """A collections tree in the data dir whose hostedai/gpuaas is this checkout.

    Job threads and processes sharing a data dir call this at once on a fresh one, so each makes
    its link under a name of its own (pid and thread) and renames it into place: os.replace is
    atomic, and the last one in points where all of them would. A link left by another checkout
    (the data dir reused after a move) is re-pointed the same way."""
    root = data_dir / "collections"
    link = root / "ansible_collections" / "hostedai" / "gpuaas"
    if not (link.is_symlink() and Path(os.readlink(link)) == COLLECTION_ROOT):
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".gpuaas.{os.getpid()}.{threading.get_ident()}")
        tmp.unlink(missing_ok=True)  # left by a thread of a killed process whose ids came round again
        tmp.symlink_to(COLLECTION_ROOT)
        os.replace(tmp, link)
    return root


class AnsibleNotFound(RuntimeError):
    """This service's install has no ansible-playbook to run jobs with."""


def ansible_bin_dir() -> Path:
    """Where this service's own Ansible lives: the scripts directory of its interpreter's install.

    A virtual environment's `bin`, or the `bin` beside the interpreter.  Never looked up on
    PATH: a service started by its absolute path (systemd, an operator's script) has no venv
    on PATH, and a PATH-found ansible-playbook would be another install's, with other
    versions and another Python.
    """
    for directory in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if os.access(directory / "ansible-playbook", os.X_OK):
            return directory
    raise AnsibleNotFound(f"ansible-playbook not found at {Path(sysconfig.get_path('scripts')) / 'ansible-playbook'} "
                          f"(the service runs the Ansible installed beside its interpreter {sys.executable}; "
                          "install requirements/runtime.txt there)")


def build_inventory(hosts: list[HostSpec], key_file: Path, known_hosts: Path) -> dict:
    """The inventory as data (never text assembled from strings); every host variable's strings are
    marked as data (as_data)."""
    inventory: dict = {"all": {"hosts": {}, "children": {}}}
    for host in hosts:
        # accept-new pins the key at the first contact; once pinned it is enforced strictly.
        checking = "yes" if host.host_key else "accept-new"
        inventory["all"]["hosts"][host.name] = as_data({
            "ansible_host": host.address,
            "ansible_port": host.port,
            "ansible_user": host.user,
            "ansible_ssh_private_key_file": str(key_file),
            "ansible_ssh_common_args": (f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking={checking} "
                                        "-o HashKnownHosts=no -o ConnectTimeout=10 -o ServerAliveInterval=10 -o ServerAliveCountMax=3"),
            "ansible_python_interpreter": "/usr/bin/python3",
            **host.hostvars,
        })
        for group in host.groups:
            inventory["all"]["children"].setdefault(group, {"hosts": {}})["hosts"][host.name] = None
    return inventory


def _known_hosts_lines(hosts: list[HostSpec]) -> str:
    lines = []
    for host in hosts:
        if host.host_key:
            target = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
            lines.append(f"{target} {host.host_key}")
    return "\n".join(lines) + ("\n" if lines else "")


def _read_new_keys(known_hosts: Path, hosts: list[HostSpec]) -> dict[int, str]:
    found = {}
    if not known_hosts.exists():
        return found
    by_target = {(h.address if h.port == 22 else f"[{h.address}]:{h.port}"): h.node_id
                 for h in hosts if not h.host_key}
    for line in known_hosts.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in by_target:
            found[by_target[parts[0]]] = f"{parts[1]} {parts[2]}"
    return found


CLAIMANT_VARIABLE = "GPUAAS_JOB_CLAIMANT"  # in every run's environment: the API process that ran it


def end_processes_of(claimed_by: str) -> int:
    """End every run process of the API process ``claimed_by`` names (it died; its runs did not)."""
    return kill_job_processes(f"{CLAIMANT_VARIABLE}={claimed_by}")


def end_processes_of_worker(worker: Claimant) -> int:
    """End every run process of gunicorn's worker ``worker`` (the master's child_exit), whatever it
    started at: its host, pid and scope alone name it once it is gone."""
    return kill_job_processes(f"{CLAIMANT_VARIABLE}={worker.process_slot()}", exact=False)


def kill_job_processes(job_marker: str, private_dir: str | None = None, rounds: int = 100, exact: bool = True) -> int:
    """End every process carrying this job's marker in its environment, or naming the job's
    private directory on its command line.

    Ansible's workers (and their ssh children) leave the playbook's process group
    and can outlive a cancel; the marker finds them wherever they were re-parented.
    An SSH multiplexing master hides it: OpenSSH's setproctitle reuses the argv and
    environment area for its title ("ssh: <private>/cp/<hash> [mux]"), so the master
    is found by the control path in its title.
    A process can fork while the scan passes it, so scan again until one finds none
    (a killed process, dead or a zombie, has no environment left to match).
    """
    killed: list[int] = []
    needle = job_marker.encode() + (b"\0" if exact else b"")
    for _round in range(rounds):
        found = _kill_marked(needle, private_dir)
        if not found:
            break
        killed += found
        time.sleep(0.02)
    # SIGKILL is not instant: return once they are gone (or zombies), so the job is
    # finalised only after its processes.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in killed):
        time.sleep(0.02)
    return len(killed)


def pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (dead, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _kill_marked(needle: bytes, private_dir: str | None) -> list[int]:
    title = private_dir.encode() + b"/" if private_dir else None
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes() or (title and title in (entry / "cmdline").read_bytes()):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return killed


def _close_ptys_without_pause() -> None:
    """Let the runner's pty close without ptyprocess's fixed 0.1 s sleep.

    ansible-runner closes its pexpect child only after the playbook has exited and been
    reaped, yet ptyprocess sleeps 0.1 s on every close "to give the kernel time to update
    the process status": 0.1 s added to every job, measured in bench/api_overhead.py.
    ansible-runner has no setting for it, so pexpect's spawn class (the only pexpect user in
    this process) gets ptys that close at once. A child still alive at close (a cancel) is
    still terminated: close(force=True) checks and signals it as before.
    """
    import pexpect
    import ptyprocess

    if getattr(pexpect.spawn, "_gpuaas_prompt_close", False):
        return

    class PromptlyClosedPty(ptyprocess.PtyProcess):
        def __init__(self, pid, fd):
            super().__init__(pid, fd)
            self.delayafterclose = 0

    pexpect.spawn._spawnpty = lambda _spawn, args, **kwargs: PromptlyClosedPty.spawn(args, **kwargs)
    pexpect.spawn._gpuaas_prompt_close = True


def remove_stale_job_dirs(data_dir: Path, running_job_ids) -> list[str]:
    """Remove the private dirs of runs that ended without their own clean-up (a process killed, or
    a gunicorn worker aborted after a SIGSTOP past its timeout): they hold an inventory and
    variables (the agents' token among them). A run's dir is named after its first job, which is
    running before the dir is made and until it is removed; so a dir listed here whose job is not
    running when ``running_job_ids()`` answers, after the listing, is stale, whichever process
    made it. Returns the names removed."""
    jobs_dir = data_dir / "jobs"
    listed = [(int(entry.name.split("-")[1]), entry) for entry in
              (jobs_dir.glob("job-*-*") if jobs_dir.is_dir() else ()) if entry.name.split("-")[1].isdigit()]
    if not listed:
        return []
    running = running_job_ids()
    removed = []
    for job_id, entry in listed:
        if job_id not in running:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def run_playbook(job_id: int, playbook: str, hosts: list[HostSpec], extravars: dict, data_dir: Path,
                 key_file: Path, on_event, should_cancel, timeout: int = 3600,
                 operator_extravars: dict | None = None) -> RunResult:
    """Run playbooks/<playbook>.yml against ``hosts``; ``on_event`` gets each event (keep it cheap).

    ``extravars`` are data (as_data: never rendered); ``operator_extravars`` are the operator's own
    settings (GPUAAS_ANSIBLE_EXTRA_VARS), the one source whose templates are meant to be rendered,
    and are passed as written. Where both name a variable, ``extravars`` wins."""
    bin_dir = ansible_bin_dir()  # before anything is written: a missing Ansible leaves nothing behind
    jobs_dir = data_dir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=jobs_dir))  # fresh per job, never reused
    known_hosts = private / "known_hosts"
    known_hosts.write_text(_known_hosts_lines(hosts))
    marker_value = f"{job_id}-{private.name}"
    events = RunEvents(on_event, should_cancel)

    import ansible_runner  # here, not at import: the web workers never need it

    _close_ptys_without_pause()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private),
            playbook=str(COLLECTION_ROOT / "playbooks" / f"{playbook}.yml"),
            inventory=build_inventory(hosts, key_file, known_hosts),
            extravars={**(operator_extravars or {}), **as_data(extravars)},
            envvars=runner_environment(bin_dir, private, data_dir, marker_value),
            event_handler=events.handle,
            cancel_callback=events.cancel_asked,
            timeout=timeout,
            quiet=True,
            # Events carry the output (stored by on_event); a stdout file would be written only to
            # be deleted with the private dir.
            suppress_output_file=True,
            ident="run",
        )
        status, rc = runner.status, runner.rc
    finally:
        kill_job_processes(f"GPUAAS_JOB_MARKER={marker_value}", str(private))  # no process of this job outlives it
        new_keys = _read_new_keys(known_hosts, hosts)
        # The private dir holds the inventory, the env and the command line: gone with the job.
        shutil.rmtree(private, ignore_errors=True)
    return events.result(status, rc, new_keys, timeout)


def runner_environment(bin_dir: Path, private: Path, data_dir: Path, marker_value: str) -> dict:
    """The run's whole environment: the artifacts and status callbacks must not carry the service's."""
    build = data_dir / "ansible"
    return {
        # The service's own bin first: ansible-runner starts `ansible-playbook` by name, looked up
        # on this PATH (pexpect's which(env=)), and what the playbooks run on the controller
        # (kubectl from PyPI) is that install's too.
        "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": str(private),
        "LANG": "C.UTF-8",
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path(data_dir)),
        "ANSIBLE_HOME": str(build),
        "ANSIBLE_LOCAL_TEMP": str(build / "tmp"),
        "ANSIBLE_PIPELINING": "True",
        # SSH multiplexing masters belong to the job: they are ended with it (kill_job_processes),
        # so their sockets must not be left where the next job would find them.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(private / "cp"),
        "ANSIBLE_FORKS": "50",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "GPUAAS_JOB_MARKER": marker_value,
        CLAIMANT_VARIABLE: claimant(),
    }


class RunEvents:
    """ansible-runner's callbacks for one run: each event passed on (its output capped), the final
    stats kept, and the cancel question asked."""

    def __init__(self, on_event, should_cancel):
        self.on_event, self.should_cancel = on_event, should_cancel
        self.canceled = threading.Event()
        self.final_stats: dict = {}

    def cancel_asked(self) -> bool:
        if self.should_cancel():
            self.canceled.set()
            return True
        return False

    def handle(self, event: dict) -> bool:
        stdout = event.get("stdout", "")
        if len(stdout) > MAX_EVENT_STDOUT:
            event["stdout"] = stdout[:MAX_EVENT_STDOUT] + "\n[... output truncated]"
        if event.get("event") == "playbook_on_stats":
            self.final_stats.update(event.get("event_data", {}))
        self.on_event(event)
        return False  # the runner need not keep its own copy on disk

    def result(self, status: str, rc: int | None, new_keys: dict, timeout: int) -> RunResult:
        explanation = ""
        if self.canceled.is_set():
            status, explanation = "canceled", "canceled on request"
        elif status == "timeout":
            explanation = f"the playbook ran past its {timeout}s limit and was stopped"
        return RunResult(status=status, rc=rc, stats={key: self.final_stats.get(key, {}) for key in
                                                      ("ok", "changed", "failures", "dark", "skipped", "processed")},
                         artifact_data=self.final_stats.get("artifact_data", {}), new_host_keys=new_keys,
                         explanation=explanation)
