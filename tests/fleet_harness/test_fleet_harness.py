"""The fleet harness itself: refusal over a running fleet, a clean stop, real reboots, failure controls.

These start and stop real fleets (namespaces, overlays, systemd-nspawn, sshd), so they run as root
and one at a time; `make test-fleet` runs them before the molecule scenarios.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLEET = [sys.executable, str(REPO / "tests/fleet/fleet.py")]
sys.path.insert(0, str(REPO / "tests/fleet"))
import fleet as fleet_module  # noqa: E402  (the harness itself, for its PID 1 lookup)
STATE_DIR = Path("/var/lib/hostedai-gpuaas-fleet")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fleet needs root (namespaces, mounts)")


def fleet(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*FLEET, *args], capture_output=True, text=True, check=check, timeout=120)


def in_hub(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return fleet("exec", "--", *command, check=check)


def ssh(node: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    address = json.loads((STATE_DIR / "state.json").read_text())["nodes"][node]["address"]
    return in_hub("ssh", "-i", str(STATE_DIR / "id_ed25519"), "-o", f"UserKnownHostsFile={STATE_DIR / 'known_hosts'}",
                  "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3",
                  f"root@{address}", command, check=check)


def namespaces() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture
def running_fleet():
    fleet("down", check=False)
    fleet("up", "3")
    yield
    fleet("down", check=False)


def test_up_gives_each_node_its_own_identity_and_pinned_host_key(running_fleet):
    names = {node: ssh(node, "hostname").stdout.strip() for node in ("node1", "node2", "node3")}
    known_hosts = (STATE_DIR / "known_hosts").read_text().splitlines()

    assert names == {"node1": "node1", "node2": "node2", "node3": "node3"}
    assert len({line.split()[2] for line in known_hosts}) == 3  # one distinct host key per node
    # Each node runs systemd as its PID 1 (its own PID namespace), booted with no failed unit.
    assert ssh("node1", "cat /proc/1/comm").stdout.strip() == "systemd"
    assert ssh("node1", "systemctl is-system-running --wait").stdout.strip() == "running"
    assert ssh("node1", "systemctl is-active ssh.service").stdout.strip() == "active"
    ssh("node1", "touch /root/only-on-node1")
    assert ssh("node2", "test -e /root/only-on-node1", check=False).returncode == 1


def test_host_key_mismatch_is_refused(running_fleet, tmp_path):
    wrong = tmp_path / "known_hosts"
    lines = (STATE_DIR / "known_hosts").read_text().splitlines()
    # node1's address with node2's key
    wrong.write_text(f"{lines[0].split()[0]} {' '.join(lines[1].split()[1:])}\n")

    result = in_hub("ssh", "-i", str(STATE_DIR / "id_ed25519"), "-o", f"UserKnownHostsFile={wrong}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "root@198.18.0.11", "true", check=False)

    assert result.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in result.stderr or "Host key verification failed" in result.stderr


def test_refuses_to_start_over_a_running_fleet(running_fleet):
    before = json.loads((STATE_DIR / "state.json").read_text())

    second = fleet("up", "2", check=False)

    assert second.returncode == 1
    assert "already running" in second.stderr
    assert json.loads((STATE_DIR / "state.json").read_text()) == before
    assert ssh("node3", "true").returncode == 0


def node_pids_after_its_supervisor_is_killed(name: str) -> tuple[int, set[int]]:
    """SIGKILL the node's supervisor (and nspawn, in its process group), as a CI job stopped
    with SIGKILL does: the node's systemd is handed to the host's init and goes on running."""
    node = json.loads((STATE_DIR / "state.json").read_text())["nodes"][name]
    init_pid = fleet_module.node_init_pid(node)
    os.killpg(node["supervisor_pid"], 9)
    time.sleep(1)
    assert alive(init_pid), "the node's systemd outlives its supervisor"
    procs = Path(f"/sys/fs/cgroup/systemd/gpuaas-fleet/{name}").rglob("cgroup.procs")
    return init_pid, {int(pid) for path in procs for pid in path.read_text().split()}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("where", ["host", "hub"])
def test_down_stops_a_node_whose_supervisor_was_killed_from_outside(running_fleet, where):
    init_pid, pids = node_pids_after_its_supervisor_is_killed("node1")
    mounts_before = Path("/proc/self/mountinfo").read_text().count(" cgroup")

    if where == "hub":
        # As molecule's destroy and the e2e tests run it: there `ip netns exec` gave fleet.py a
        # sysfs without the cgroup hierarchies, which it mounts again to read them.
        in_hub(*FLEET, "down", "--keep-hub")
    else:
        fleet("down", "--keep-hub")

    assert not [pid for pid in pids | {init_pid} if alive(pid)]
    for hierarchy in ("systemd", "unified"):
        assert not Path(f"/sys/fs/cgroup/{hierarchy}/gpuaas-fleet").exists(), hierarchy
    assert [ns for ns in namespaces() if ns.startswith("gpuaas-")] == ["gpuaas-hub"]
    assert Path("/proc/self/mountinfo").read_text().count(" cgroup") == mounts_before  # none on this host


def test_down_without_a_record_removes_the_nodes_a_crashed_run_left(running_fleet):
    left = [node_pids_after_its_supervisor_is_killed(name) for name in ("node1", "node2")]
    shutil.rmtree(STATE_DIR)  # the run that crashed took its record with it

    result = fleet("down")

    assert "removed what was left of 3 nodes" in result.stdout  # node3's supervisor was alive
    assert not [pid for init_pid, pids in left for pid in pids | {init_pid} if alive(pid)]
    assert not Path("/sys/fs/cgroup/systemd/gpuaas-fleet").exists()
    assert not [ns for ns in namespaces() if ns.startswith("gpuaas-")]
    server = subprocess.run(["pgrep", "-f", "http.server --bind 198.18.0.1"], capture_output=True, text=True,
                            check=False)
    assert server.stdout == "", "the crashed run's repository server is gone too"
    fleet("up", "1")  # nothing left in the way


def test_down_stops_every_process_and_leaves_nothing(running_fleet):
    state = json.loads((STATE_DIR / "state.json").read_text())
    supervisors = [node["supervisor_pid"] for node in state["nodes"].values()]

    fleet("down")

    assert not [ns for ns in namespaces() if ns.startswith("gpuaas-")]
    assert not STATE_DIR.exists()
    for pid in supervisors:
        # Gone, or a zombie that this machine's PID 1 has not reaped yet (it holds nothing).
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z", stat.read_text()
    mounts = Path("/proc/mounts").read_text()
    assert "hostedai-gpuaas-fleet" not in mounts
    assert str(REPO / ".build/fleet") not in mounts  # no node overlay still holds the image
    leftover = subprocess.run(["pgrep", "--runstates", "D,R,S,T,t", "-f", "systemd-nspawn"],  # zombies excepted
                              capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == ""
    for node in state["nodes"]:  # nspawn's cgroups and propagation directory are gone with the node
        for hierarchy in ("systemd", "unified"):
            assert not Path(f"/sys/fs/cgroup/{hierarchy}/gpuaas-fleet/{node}").exists(), hierarchy
        assert not Path(f"/run/systemd/nspawn/propagate/{node}").exists()
    server = subprocess.run(["pgrep", "-f", "http.server --bind 198.18.0.1"], capture_output=True, text=True,
                            check=False)
    assert state["package_repo"]["pid"] and server.stdout.strip() == ""  # the repository server stopped too


def test_reboot_takes_the_node_away_and_brings_it_back_with_its_files(running_fleet):
    boot_before = ssh("node2", "cat /run/fleet-boot-id").stdout.strip()
    ssh("node2", "echo kept > /root/persistent; echo gone > /run/volatile")

    ssh("node2", "reboot")
    went_away = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if ssh("node2", "true", check=False).returncode != 0:
            went_away = True
        elif went_away:
            break
        time.sleep(0.3)

    assert went_away, "the node never stopped answering"
    assert ssh("node2", "cat /run/fleet-boot-id").stdout.strip() != boot_before
    assert ssh("node2", "cat /root/persistent").stdout.strip() == "kept"
    assert ssh("node2", "test -e /run/volatile", check=False).returncode == 1


def test_a_power_off_keeps_the_node_down_until_it_is_started(running_fleet):
    # systemd-nspawn ends with 0 after a power-off and 133 after a reboot: only a reboot boots
    # the node again by itself.
    ssh("node2", "systemctl poweroff", check=False)
    deadline = time.monotonic() + 20
    while ssh("node2", "true", check=False).returncode == 0:
        assert time.monotonic() < deadline, "the node did not power off"
        time.sleep(0.3)
    time.sleep(5)  # longer than the supervisor's pause before a reboot's next boot
    still_down = ssh("node2", "true", check=False)
    fleet("node", "node2", "start")

    assert still_down.returncode == 255
    assert ssh("node2", "systemctl is-system-running --wait").stdout.strip() == "running"


def test_each_node_has_its_own_swap_that_comes_back_at_boot_from_fstab(running_fleet):
    # Swap is machine-wide on this host: each node's is a view of its own (node_files/swap).
    assert ssh("node1", "swapon --show --noheadings").stdout.split()[0] == "/swap.img"
    ssh("node1", "swapoff -a")
    off_again = ssh("node1", "swapoff /swap.img", check=False)

    assert ssh("node1", "tail -n +2 /proc/swaps").stdout.strip() == ""
    assert off_again.returncode == 1 and "Invalid argument" in off_again.stderr
    assert "/swap.img" in ssh("node2", "cat /proc/swaps").stdout  # another node's swap is untouched

    ssh("node1", "reboot", check=False)
    time.sleep(1.5)
    deadline = time.monotonic() + 30
    while ssh("node1", "test -e /run/fleet-boot-id", check=False).returncode != 0:
        assert time.monotonic() < deadline, "node1 did not come back"
        time.sleep(0.3)
    assert "/swap.img" in ssh("node1", "cat /proc/swaps").stdout  # fstab still has it: on again

    ssh("node1", "swapoff -a && sed -i 's|^/swap.img|#/swap.img|' /etc/fstab && reboot", check=False)
    time.sleep(1.5)
    deadline = time.monotonic() + 30
    while ssh("node1", "test -e /run/fleet-boot-id", check=False).returncode != 0:
        assert time.monotonic() < deadline, "node1 did not come back"
        time.sleep(0.3)
    assert ssh("node1", "tail -n +2 /proc/swaps").stdout.strip() == ""
    refused = ssh("node1", "swapon /etc/hostname", check=False)
    assert refused.returncode == 1 and "read swap header failed" in refused.stderr


def test_stopped_sshd_refuses_connections_and_comes_back(running_fleet):
    fleet("sshd", "node3", "stop")
    time.sleep(2.5)  # a stopped service stays stopped: systemd restarts only a failed one
    refused = ssh("node3", "true", check=False)
    fleet("sshd", "node3", "start")

    assert refused.returncode == 255
    assert ssh("node3", "true").returncode == 0


def test_an_sshd_that_dies_is_started_again_by_systemd(running_fleet):
    # ssh.service has Restart=on-failure: death by SIGKILL is a failure, so systemd restarts it.
    fleet("node-exec", "node3", "--", "pkill", "-KILL", "-x", "sshd")
    deadline = time.monotonic() + 10
    while ssh("node3", "true", check=False).returncode != 0:
        assert time.monotonic() < deadline, "sshd was not started again"
        time.sleep(0.3)

    assert ssh("node3", "systemctl show --value -p NRestarts ssh.service").stdout.strip() == "1"


def test_lost_gpu_toggles_in_the_node_filesystem(running_fleet):
    fleet("lose-gpu", "node1", "2")
    lost = ssh("node1", "python3 -c 'import pynvml as n; n.nvmlInit(); n.nvmlDeviceGetUUID(n.nvmlDeviceGetHandleByIndex(2))'",
               check=False)
    fleet("restore-gpu", "node1", "2")
    back = ssh("node1", "python3 -c 'import pynvml as n; n.nvmlInit(); print(n.nvmlDeviceGetCount())'")

    assert lost.returncode == 1 and "GPU is lost" in lost.stderr
    assert back.stdout.strip() == "8"


def test_compute_mode_persists_in_the_node_across_a_reboot(running_fleet):
    ssh("node1", "python3 -c 'import pynvml as n; n.nvmlInit(); n.nvmlDeviceSetComputeMode(n.nvmlDeviceGetHandleByIndex(0), 3)'")
    ssh("node1", "reboot")
    time.sleep(1.5)
    deadline = time.monotonic() + 20
    while ssh("node1", "test -e /run/fleet-boot-id", check=False).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.3)

    mode = ssh("node1", "python3 -c 'import pynvml as n; n.nvmlInit(); print(n.nvmlDeviceGetComputeMode(n.nvmlDeviceGetHandleByIndex(0)))'")
    other_node = ssh("node3", "python3 -c 'import pynvml as n; n.nvmlInit(); print(n.nvmlDeviceGetComputeMode(n.nvmlDeviceGetHandleByIndex(0)))'")

    assert mode.stdout.strip() == "3"
    assert other_node.stdout.strip() == "0"


def test_gpu_less_node_has_no_nvml_library(running_fleet):
    fleet("down")
    fleet("up", "5")
    result = ssh("node5", "python3 -c 'import pynvml as n; n.nvmlInit()'", check=False)

    assert result.returncode == 1
    assert "NVML Shared Library Not Found" in result.stderr


# --------------------------------------------------------------------------- the image

def build_image_into(cache: Path, mirror: str = "http://127.0.0.1:9/debian") -> subprocess.CompletedProcess:
    """`fleet.py image` into another cache dir, from a mirror that refuses connections."""
    env = dict(os.environ, FLEET_CACHE_DIR=str(cache), FLEET_APT_MIRROR=mirror)
    return subprocess.run([*FLEET, "image"], env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_image_is_built_under_the_checkout_not_machine_wide():
    # `make test` builds it before the harness runs: a clean clone has its own.
    assert (REPO / ".build/fleet/rootfs/usr/sbin/sshd").exists()
    assert (REPO / ".build/fleet/image.digest").exists()
    assert (REPO / ".build/fleet/debootstrap/usr/sbin/sshd").exists()  # the base it was copied from
    assert (REPO / ".build/fleet/debootstrap.digest").exists()
    assert not Path("/var/cache/hostedai-gpuaas-fleet").exists()


def test_a_failed_debootstrap_says_why_in_one_line_and_leaves_no_image(tmp_path):
    cache = tmp_path / "fleet"

    result = build_image_into(cache)

    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("fleet: debootstrap from http://127.0.0.1:9/debian failed (rc ")
    assert f"full log: {cache / 'debootstrap.log'}" in errors[0]
    for left in ("rootfs", "rootfs.partial", "image.digest", "debootstrap", "debootstrap.partial", "debootstrap.digest"):
        assert not (cache / left).exists(), left


def test_the_base_system_needs_no_venv(tmp_path):
    # `make test` debootstraps it with Debian's own Python while pip fills the venv.
    cache = tmp_path / "fleet"
    env = dict(os.environ, FLEET_CACHE_DIR=str(cache), FLEET_APT_MIRROR="http://127.0.0.1:9/debian",
               PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    # -S: not even Debian's own site-packages (this machine's has PyYAML; a fresh one's may not).
    result = subprocess.run(["/usr/bin/python3", "-I", "-S", str(REPO / "tests/fleet/fleet.py"), "base"], env=env,
                            capture_output=True, text=True, timeout=300, check=False)

    # It got as far as debootstrap (no import failed), which the refusing mirror stops.
    assert result.returncode == 1
    assert result.stderr.startswith("fleet: debootstrap from http://127.0.0.1:9/debian failed (rc "), result.stderr
    assert not (cache / "debootstrap").exists() and not (cache / "debootstrap.digest").exists()


def test_a_half_built_image_is_never_taken_for_a_good_one(tmp_path):
    cache = tmp_path / "fleet"
    # What an interrupted build leaves: debootstrap got as far as sshd.
    (cache / "rootfs.partial/usr/sbin").mkdir(parents=True)
    (cache / "rootfs.partial/usr/sbin/sshd").write_text("")
    # An image without its digest (the digest is written last), and likewise a base system.
    (cache / "rootfs/usr/sbin").mkdir(parents=True)
    (cache / "debootstrap.partial/usr/sbin").mkdir(parents=True)
    (cache / "debootstrap/usr/sbin").mkdir(parents=True)

    result = build_image_into(cache)

    # It started over with debootstrap instead of finishing any of them.
    assert result.returncode == 1 and "debootstrap from" in result.stderr
    for left in ("rootfs.partial", "image.digest", "debootstrap.partial", "debootstrap.digest"):
        assert not (cache / left).exists(), left


def test_a_second_image_build_waits_for_the_first(tmp_path):
    # `make test` runs test-standins beside test-fleet, and both build the image: the second
    # waits on the lock instead of debootstrapping into the same rootfs.partial.
    cache = tmp_path / "fleet"
    cache.mkdir()
    with open(cache / ".image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = dict(os.environ, FLEET_CACHE_DIR=str(cache), FLEET_APT_MIRROR="http://127.0.0.1:9/debian")
        second = subprocess.Popen([*FLEET, "image"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        assert second.poll() is None, second.communicate()
        assert not (cache / "debootstrap.log").exists() and not (cache / "rootfs.partial").exists()
        assert not (cache / "debootstrap.partial").exists()
        fcntl.flock(lock, fcntl.LOCK_UN)
    err = second.communicate(timeout=300)[1]
    assert second.returncode == 1 and "debootstrap from http://127.0.0.1:9/debian failed" in err


def test_a_full_disk_fails_before_debootstrap_starts(tmp_path):
    cache = tmp_path / "small"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(cache)], check=True)
    try:
        result = build_image_into(cache / "fleet")
    finally:
        subprocess.run(["umount", str(cache)], check=True)

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "debootstrap needs about 1 GiB free under" in result.stderr
    assert "MiB is free" in result.stderr


# --------------------------------------------------------------------------- the package repository

REPO_PUBLIC = REPO / ".build/fleet/repo/public"
FLEET_SOURCES = """Types: deb
URIs: {url}
Suites: fleet
Components: main
Signed-By: /etc/apt/keyrings/gpuaas-fleet.gpg
"""


def ssh_input(node: str, command: str, data: bytes) -> None:
    address = json.loads((STATE_DIR / "state.json").read_text())["nodes"][node]["address"]
    subprocess.run([*FLEET, "exec", "--", "ssh", "-i", str(STATE_DIR / "id_ed25519"),
                    "-o", f"UserKnownHostsFile={STATE_DIR / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "BatchMode=yes", f"root@{address}", command], input=data, check=True, timeout=60)


def use_repository(node: str, keyring: bytes, url: str) -> None:
    """Add a repository to a node as a role does: a signed-by keyring and a deb822 source."""
    ssh_input(node, "mkdir -p /etc/apt/keyrings && cat > /etc/apt/keyrings/gpuaas-fleet.gpg", keyring)
    ssh_input(node, "cat > /etc/apt/sources.list.d/gpuaas-fleet.sources", FLEET_SOURCES.format(url=url).encode())


@pytest.fixture(scope="module")
def repo_fleet():
    """One fleet for the repository tests (each uses a node of its own): these run last in the module."""
    fleet("down", check=False)
    fleet("up", "3")
    yield json.loads((STATE_DIR / "state.json").read_text())["package_repo"]
    fleet("down", check=False)


def test_a_node_installs_the_real_kubectl_from_the_signed_repository(repo_fleet):
    repo = repo_fleet
    use_repository("node1", Path(repo["keyring"]).read_bytes(), repo["url"])

    updated = ssh("node1", "apt-get update 2>&1", check=False)
    installed = ssh("node1", "DEBIAN_FRONTEND=noninteractive apt-get install -y kubectl 2>&1", check=False)

    assert updated.returncode == 0, updated.stdout
    assert "W:" not in updated.stdout and "E:" not in updated.stdout, updated.stdout
    assert installed.returncode == 0, installed.stdout
    # /usr/bin: the package's path (the fleet's kubectl stand-in in /usr/local/bin comes first on PATH).
    client = json.loads(ssh("node1", "/usr/bin/kubectl version --client -o json").stdout)["clientVersion"]
    assert client["gitVersion"] == "v1.37.1" and client["platform"] == "linux/amd64"
    assert ssh("node1", "dpkg-query -W -f '${Version}' kubectl").stdout == "1.37.1-1.1"
    # containerd comes from Debian, through the node's distribution mirror (the Debian suite).
    policy = ssh("node1", "apt-cache policy containerd runc").stdout
    assert policy.count(f"500 {repo['url'].rstrip('/')} bookworm/main amd64 Packages") == 2, policy


def test_the_kubelet_runs_but_registers_no_node_before_a_join(repo_fleet):
    # As on a kubeadm node: the package starts the kubelet, which has no configuration before
    # `kubeadm join` writes one, so it exits and systemd restarts it in a loop; no Node appears.
    repo = repo_fleet
    use_repository("node1", Path(repo["keyring"]).read_bytes(), repo["url"])
    # kubeadm too: its drop-in (10-kubeadm.conf) gives the kubelet --config, as on a node_init node.
    installed = ssh("node1", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                             "containerd kubelet kubeadm 2>&1", check=False)
    assert installed.returncode == 0, installed.stdout
    time.sleep(2)

    state = ssh("node1", "systemctl show -p ActiveState,SubState --value kubelet").stdout.split()
    journal = ssh("node1", "journalctl -u kubelet --no-pager -n 20").stdout
    assert state in (["activating", "auto-restart"], ["failed", "failed"]), state
    assert "failed to load kubelet config file" in journal, journal
    assert not (STATE_DIR / "cluster/etcd").exists()  # no control plane: the fake API server has no store


def test_apt_refuses_the_repository_under_another_key(repo_fleet, tmp_path):
    repo = repo_fleet
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--batch", "--homedir", str(home)]
    subprocess.run([*gpg, "--passphrase", "", "--quick-generate-key", "someone else <x@invalid>", "ed25519", "sign",
                    "never"], check=True, capture_output=True)
    other_key = subprocess.run([*gpg, "--export", "someone else"], check=True, capture_output=True).stdout
    use_repository("node2", other_key, repo["url"])

    updated = ssh("node2", "apt-get update 2>&1", check=False)

    assert updated.returncode == 100, updated.stdout
    assert "NO_PUBKEY" in updated.stdout and "is not signed" in updated.stdout, updated.stdout
    assert ssh("node2", "apt-cache policy kubectl").stdout == ""  # apt knows no such package


def test_apt_refuses_a_release_file_changed_after_signing(repo_fleet, tmp_path):
    repo = repo_fleet
    tampered = tmp_path / "public"
    subprocess.run(["cp", "-al", str(REPO_PUBLIC), str(tampered)], check=True)
    in_release = tampered / "dists/fleet/InRelease"
    text = in_release.read_text()
    in_release.unlink()  # a hard link to the real one: write a new file
    in_release.write_text(text.replace("Label: gpuaas-fleet", "Label: gpuaas-fleeT"))
    (tampered / "dists/fleet/Release.gpg").unlink()
    server = subprocess.Popen(["ip", "netns", "exec", "gpuaas-hub", sys.executable, "-m", "http.server",
                               "--bind", "198.18.0.1", "--directory", str(tampered), "8081"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        use_repository("node3", Path(repo["keyring"]).read_bytes(), "http://198.18.0.1:8081/")
        deadline = time.monotonic() + 10
        while ssh("node3", "exec 3<>/dev/tcp/198.18.0.1/8081", check=False).returncode and time.monotonic() < deadline:
            time.sleep(0.2)

        updated = ssh("node3", "apt-get update 2>&1", check=False)
    finally:
        server.kill()
        server.wait()

    assert updated.returncode == 100, updated.stdout
    assert "BADSIG" in updated.stdout, updated.stdout
    assert ssh("node3", "apt-cache policy kubectl").stdout == ""
