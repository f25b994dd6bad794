#!/usr/bin/env python3
"""The test fleet: several Debian nodes on this one machine, reached over real SSH.

Each node is a systemd-nspawn container booted with systemd as its PID 1 (as on a
server: services, handlers and reboots are real) in a network namespace of its
own, with a veth into a bridge that lives in a "hub" namespace, on an overlay of
one shared debootstrap image.  Ansible (and anything that drives it) runs inside
the hub namespace, so no host interface is touched.

    fleet.py base             debootstrap the base system the image is made from, once per
                              checkout (the standard library only: Debian's Python runs it
                              while pip fills the venv)
    fleet.py image            build the node image (from the base) and the signed package
                              repository once per checkout, reuse them
    fleet.py hub              create the hub namespace (idempotent)
    fleet.py up [N] [--without-driver NODE ...]
                              start N nodes (refuses if a fleet is running); a node named
                              by --without-driver has its GPUs but no NVIDIA driver
    fleet.py down [--keep-hub]  stop every node by PID and remove all traces
    fleet.py status           print the running fleet as JSON
    fleet.py exec -- CMD...   run CMD inside the hub namespace
    fleet.py sshd NODE stop|start
    fleet.py node NODE stop|start
    fleet.py lose-gpu NODE INDEX / restore-gpu NODE INDEX
    fleet.py node-exec NODE -- CMD...   run CMD inside a node

The fleet is a machine-wide resource (namespaces, a bridge, one address
range), so `up` takes a lock and refuses to start over a running fleet.
"""
from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import inspect
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

# Nothing but the standard library at module level: `fleet.py base` runs under Debian's own
# Python before the venv exists (PyYAML and nvidia-ml-py are imported where they are used).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import package_repo  # noqa: E402  (beside this file)

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]
# The image lives under the checkout, so a clean clone (CI's included) builds it
# and never reuses one that an older checkout made.  Only what must be
# machine-wide (the running fleet's state, namespaces and lock) is outside it.
CACHE_DIR = Path(os.environ.get("FLEET_CACHE_DIR", CHECKOUT / ".build" / "fleet"))
STATE_DIR = Path(os.environ.get("FLEET_STATE_DIR", "/var/lib/hostedai-gpuaas-fleet"))
BASE_DIR = CACHE_DIR / "debootstrap"  # debootstrap's system, which the image is copied from
IMAGE_DIR = CACHE_DIR / "rootfs"
REPO_DIR = CACHE_DIR / "repo"  # the signed apt repository (package_repo.py), served from the hub
CNI_MANIFEST = "kube-flannel.yml"  # tests/fleet/cni: the copy of the CNI release manifest the fleet serves
REPO_PORT = 80
HUB_NS = "gpuaas-hub"
NODE_NS_PREFIX = "gpuaas-"
BRIDGE = "gpuaas-br0"
# RFC 2544 benchmarking range: never routed, and not this machine's network.
SUBNET = ipaddress.ip_network(os.environ.get("FLEET_SUBNET", "198.18.0.0/24"))
HUB_ADDRESS = SUBNET.network_address + 1
FIRST_NODE_HOST = 11
MAX_NODES = 32
# systemd-nspawn(1), EXIT STATUS: "the container was rebooted" is 133; the supervisor boots it again.
REBOOT_EXIT_CODE = 133
# Each node's processes live in a cgroup of their own under this one, in each hierarchy that
# systemd-nspawn uses: nspawn puts its payload beside itself, so two nodes must not share one.
CGROUP_PARENT = "gpuaas-fleet"
CGROUP_HIERARCHIES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
# python-is-python3: the Python stand-ins start with `#!/usr/bin/env python` (ansible-test's shebang rule).
IMAGE_PACKAGES = "systemd,systemd-sysv,dbus,openssh-server,python3,python-is-python3,iproute2,procps,sudo"
# debootstrap --variant=minbase with these packages takes about 300 MB; ask for
# headroom so that a full disk fails before the download, not half-way.
IMAGE_MIN_FREE_BYTES = 1 << 30
GPU_UUID_NAMESPACE = uuid.UUID("5f1d1c1e-9a43-4c1b-8f61-6a2f0e0a9a10")


class FleetError(Exception):
    """A precondition the operator must fix; printed as one line."""


def run(*cmd: str, check: bool = True, capture: bool = False, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None, **kwargs)


def process_state(pid: int) -> str | None:
    """The state letter in /proc/PID/stat (R, S, Z, ...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


# A killed process stays a zombie until its parent reaps it.  The fleet's supervisors outlive
# the `fleet.py up` that started them, so their parent is then this machine's PID 1, which
# reaps late (a second or two here): a zombie counts as gone.
def pid_alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def process_group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is left in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def load_slots() -> list[dict]:
    import yaml

    return yaml.safe_load((HERE / "profiles.yml").read_text())["slots"]


def node_name(number: int) -> str:
    return f"node{number}"


def node_address(number: int) -> str:
    return str(SUBNET.network_address + FIRST_NODE_HOST + number - 1)


def gpu_uuid(node: str, index: int) -> str:
    return "GPU-" + str(uuid.uuid5(GPU_UUID_NAMESPACE, f"{node}/{index}"))


def node_hardware(number: int, driver: bool = True) -> dict:
    """What node N has: groups, GPUs (with UUIDs), NVSwitches, NPUs and volume group.

    driver: the node's GPUs come with NVIDIA's driver installed (False: the GPUs only).
    """
    slots = load_slots()
    slot = slots[(number - 1) % len(slots)]
    name = node_name(number)
    hardware: dict = {"groups": slot["groups"], "nvml": None, "gpus": [], "nvswitches": 0, "driver": False,
                      "npus": [], "npu_board": None, "volume_group": None}
    if "nvml" in slot:
        nvml = slot["nvml"]
        spec = nvml["gpus"]
        hardware["nvml"] = {"driver_version": nvml["driver_version"], "cuda_version": nvml["cuda_version"]}
        hardware["nvswitches"] = nvml.get("nvswitches", 0)
        hardware["driver"] = driver
        hardware["gpus"] = [
            {"index": i, "uuid": gpu_uuid(name, i), "model": spec["model"], "memory_mib": spec["memory_mib"],
             "pci_bus_id": f"00000000:{spec['first_bus'] + i * 0x10:02X}:00.0"}
            for i in range(spec["count"])
        ]
    if "npus" in slot:
        spec = slot["npus"]
        # One entry per compute chip, card by card: an Atlas A2 (910B) card holds one, an A3 card two.
        hardware["npu_board"] = {"layout": spec["layout"], "npu_name": spec.get("npu_name")}
        hardware["npus"] = [{"card": card, "chip": chip, "name": spec["chip"], "memory_mb": spec["memory_mb"],
                             "health": "OK"}
                            for card in range(spec["cards"]) for chip in range(spec.get("chips_per_card", 1))]
    if "volume_group" in slot:
        hardware["volume_group"] = slot["volume_group"]
    return hardware


# --------------------------------------------------------------------------- image

def base_inputs_digest() -> str:
    """Debootstrap again when what goes into the base system changes."""
    digest = hashlib.sha256(IMAGE_PACKAGES.encode())
    digest.update(inspect.getsource(debootstrap).encode())
    digest.update(inspect.getsource(build_base).encode())
    return digest.hexdigest()[:16]


def image_inputs_digest() -> str:
    """Rebuild the image when what goes into it changes."""
    import pynvml  # the same nvidia-ml-py the project pins

    digest = hashlib.sha256(base_inputs_digest().encode())
    digest.update(Path(pynvml.__file__).read_bytes())
    digest.update(inspect.getsource(build_image).encode())
    digest.update(FLEET_BOOT_UNIT.encode())
    digest.update((HERE / "node_files/swap").read_bytes())
    return digest.hexdigest()[:16]


def apt_mirror() -> str:
    """The Debian mirror this machine's apt already uses (no host is hard-coded).

    FLEET_APT_MIRROR overrides it (the tests use it to make debootstrap fail).
    """
    if os.environ.get("FLEET_APT_MIRROR"):
        return os.environ["FLEET_APT_MIRROR"]
    sources = list(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for source in sources:
        if not source.exists():
            continue
        for line in source.read_text().splitlines():
            line = line.strip()
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "security" not in line:
                parts = [p for p in line.split() if not p.startswith("[")]
                return parts[1]
    raise FleetError("no Debian mirror found in /etc/apt sources")


def last_error_line(log: Path) -> str:
    """debootstrap's own reason: its last 'E:' line, else its last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return (errors or lines or ["(no output)"])[-1]


def require_free_space(directory: Path, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < IMAGE_MIN_FREE_BYTES:
        raise FleetError(f"{what} needs about 1 GiB free under {directory}; {free // (1 << 20)} MiB is free")


def debootstrap(target: Path, log: Path) -> None:
    """Run debootstrap into `target`; on failure remove it and raise one line."""
    require_free_space(target.parent, "debootstrap")
    mirror = apt_mirror()
    with open(log, "w") as output:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={IMAGE_PACKAGES}", "bookworm", str(target), mirror],
            stdout=output, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise FleetError(f"debootstrap from {mirror} failed (rc {result.returncode}): {last_error_line(log)}; "
                         f"full log: {log}")


# Runs first at every boot of a node: what the kernel and firmware do on a server.
#  - The boot id: every node shares this kernel's /proc/sys/kernel/random/boot_id, so a node's
#    own boot is told apart by /run/fleet-boot-id (inventory: node_reboot_boot_time_command).
#  - The NVIDIA kernel module: a driver installed since the last boot is loaded now, not
#    before ("installed, loaded after reboot"); the stand-in NVML and nvidia-smi answer only
#    when /run/fake-nvidia/loaded exists.  Then nvidia-persistenced is started, as Ubuntu's udev
#    rule (71-nvidia.rules: SYSTEMD_WANTS on the driver's device) does.
#  - ldconfig, for libraries the fleet placed in the node's overlay before its first boot.
#  - The node's NVIDIA PCI functions (write_pci_view) over /sys/bus/pci/devices.
#  - /proc/sys/net writable: nspawn mounts /proc/sys read-only, but net.* is per network
#    namespace (the node's own), so a role's sysctls reach the node and not the host.
#  - The node's own view of swap (swap is machine-wide on this host): the supervisor writes an
#    empty /var/lib/fleet/swaps before each boot, and it is bound over /proc/swaps.  Then
#    fstab's swap is activated, as systemd's fstab generator does on a server: in a container
#    that generator ignores swap entries (src/fstab-generator: "Running in a container,
#    ignoring fstab swap entry"), so `swapon -a` (the stand-in, node_files/swap) does it here.
FLEET_BOOT_UNIT = """\
[Unit]
Description=Test-fleet node boot (boot id, NVIDIA module load)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target swap.target systemd-sysctl.service ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/uuid > /run/fleet-boot-id'
ExecStart=/bin/mount --bind /var/lib/fleet/swaps /proc/swaps
ExecStart=/bin/sh -c 'mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net'
ExecStart=/bin/sh -c 'if [ -d /var/lib/fleet/pci ]; then mount --bind /var/lib/fleet/pci /sys/bus/pci/devices; fi'
ExecStart=/sbin/swapon -a
ExecStart=/sbin/ldconfig
ExecStart=/bin/sh -c 'if [ -e /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 ]; then mkdir -p /run/fake-nvidia && touch /run/fake-nvidia/loaded; fi'
ExecStart=/bin/sh -c 'if [ -e /run/fake-nvidia/loaded ] && [ -e /lib/systemd/system/nvidia-persistenced.service ]; \\
  then systemctl --no-block start nvidia-persistenced.service; fi'

[Install]
WantedBy=sysinit.target
"""


def complete_build(final: Path, marker: Path, digest: str, force: bool) -> bool:
    """Whether `final` is a finished build of these inputs.

    Each build is made in <final>.partial and renamed into place only when it is complete,
    and its digest is written last: an interrupted or failed build leaves nothing that a
    later run takes for a good one.
    """
    return not force and final.is_dir() and marker.exists() and marker.read_text() == digest


def build_base(force: bool = False) -> None:
    """debootstrap the base system once per checkout (about a minute, mostly downloads)."""
    marker = CACHE_DIR / "debootstrap.digest"
    digest = base_inputs_digest()
    if complete_build(BASE_DIR, marker, digest, force):
        return
    if not shutil.which("debootstrap") and not Path("/usr/sbin/debootstrap").exists():
        raise FleetError("debootstrap is missing; run: apt-get install -y debootstrap")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    partial = CACHE_DIR / "debootstrap.partial"
    shutil.rmtree(partial, ignore_errors=True)  # never resume a build that stopped half-way
    print(f"debootstrapping the fleet's base system in {CACHE_DIR} (about a minute)...", flush=True)
    debootstrap(partial, CACHE_DIR / "debootstrap.log")
    shutil.rmtree(BASE_DIR, ignore_errors=True)
    partial.rename(BASE_DIR)
    marker.write_text(digest)


def build_image(force: bool = False) -> None:
    """Build the node image once per checkout, from the base; rebuild it when its inputs change."""
    marker = CACHE_DIR / "image.digest"
    digest = image_inputs_digest()
    if complete_build(IMAGE_DIR, marker, digest, force):
        print(f"fleet image up to date: {IMAGE_DIR}")
        return
    for tool in ("sshd", "ssh-keygen", "gcc"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            raise FleetError(f"{tool} is missing; run: apt-get install -y openssh-server gcc")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    partial = CACHE_DIR / "rootfs.partial"
    shutil.rmtree(partial, ignore_errors=True)  # never resume a build that stopped half-way
    build_base(force)  # --force debootstraps again too
    # A copy: the base stays for the next image (its inputs change more often than the base's).
    require_free_space(CACHE_DIR, "the image (a copy of the base system)")
    run("cp", "-a", "--reflink=auto", str(BASE_DIR), str(partial))
    # A node has no package repository but what the roles add (debootstrap leaves its mirror,
    # which no node can reach): an apt-get update must not fail on a source nobody asked for.
    (partial / "etc/apt/sources.list").unlink(missing_ok=True)
    units = partial / "etc/systemd/system"
    (units / "fleet-boot.service").write_text(FLEET_BOOT_UNIT)
    (units / "sysinit.target.wants").mkdir(exist_ok=True)
    (units / "sysinit.target.wants/fleet-boot.service").symlink_to("../fleet-boot.service")
    # No nvidia-persistenced user: a GPU server whose driver came with the machine (NVIDIA's .run
    # installer, preinstall_driver) has none, and the packages create their own (Debian's nvpd).
    # No one logs in on the console (nspawn's --console=read-only only records it).
    (units / "console-getty.service").symlink_to("/dev/null")
    # Swap is machine-wide here: each node keeps its own in a view of /proc/swaps (bound per
    # node, see start_node) that stand-in swapon/swapoff edit.  util-linux's own are diverted,
    # as a package would do it, so that systemd's swap units call the stand-in.
    for tool in ("swapon", "swapoff"):
        run("chroot", str(partial), "dpkg-divert", "--quiet", "--local", "--rename", "--divert",
            f"/sbin/{tool}.distrib", "--add", f"/sbin/{tool}")
        shutil.copy2(HERE / "node_files/swap", partial / "usr/sbin" / tool)
    # The swap a stock server install leaves: a swap file in fstab (Ubuntu's /swap.img).
    swap_file = partial / "swap.img"
    with open(swap_file, "wb") as handle:
        handle.write(b"\0" * (1 << 20))
    swap_file.chmod(0o600)
    run("mkswap", "--quiet", str(swap_file))
    with open(partial / "etc/fstab", "a") as fstab:
        fstab.write("/swap.img\tnone\tswap\tsw\t0\t0\n")
    # Every node gets its own host keys at start-up; none may be shared.
    for key in (partial / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (partial / "etc/ssh/sshd_config.d/fleet.conf").write_text(
        "HostKey /etc/ssh/ssh_host_ed25519_key\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "UseDNS no\n"
        "MaxStartups 100:30:200\n"
        "MaxSessions 50\n")
    # nvidia-ml-py is one pure-Python file; production nodes install it too.
    import pynvml

    site = partial / "usr/lib/python3/dist-packages"
    shutil.copy2(pynvml.__file__, site / "pynvml.py")
    shutil.rmtree(IMAGE_DIR, ignore_errors=True)
    partial.rename(IMAGE_DIR)
    marker.write_text(digest)
    print(f"fleet image ready: {IMAGE_DIR}")


# --------------------------------------------------------------------------- state

def read_state() -> dict | None:
    path = STATE_DIR / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_state(state: dict) -> None:
    tmp = STATE_DIR / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(STATE_DIR / "state.json")


def namespaces() -> list[str]:
    listing = run("ip", "netns", "list", capture=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def fleet_is_running(state: dict | None) -> bool:
    """Nodes are running, or node namespaces exist that no record explains."""
    if state and any(pid_alive(n["supervisor_pid"]) for n in state["nodes"].values()):
        return True
    return any(ns.startswith(NODE_NS_PREFIX) and ns != HUB_NS for ns in namespaces())


def ensure_hub() -> None:
    """The hub namespace holds the bridge; the controller (ansible) runs in it.

    It may outlive a fleet (`down --keep-hub`) so that a process already
    running inside it, such as molecule, can bring up the next fleet.
    """
    if HUB_NS in namespaces():
        return
    check_subnet_free()
    run("ip", "netns", "add", HUB_NS)
    run("ip", "-n", HUB_NS, "link", "set", "lo", "up")
    run("ip", "-n", HUB_NS, "link", "add", BRIDGE, "type", "bridge")
    run("ip", "-n", HUB_NS, "addr", "add", f"{HUB_ADDRESS}/{SUBNET.prefixlen}", "dev", BRIDGE)
    run("ip", "-n", HUB_NS, "link", "set", BRIDGE, "up")


class FleetLock:
    """Serialises up/down across processes: the fleet is machine-wide."""

    def __enter__(self):
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.handle = open(STATE_DIR.parent / f".{STATE_DIR.name}.lock", "w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FleetError("another fleet command holds the lock; wait for it") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


class ImageLock:
    """Serialises the image and repository builds of one checkout: `make test` runs the checks
    that need the image beside the fleet's tests, and a second build waits for the first
    (blocking) rather than building into the same rootfs.partial."""

    def __enter__(self):
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        self.handle = open(CACHE_DIR / ".image.lock", "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def build_base_locked(force: bool = False) -> None:
    with ImageLock():
        build_base(force)


def build_image_and_repo(force: bool = False) -> Path:
    with ImageLock():
        build_image(force)  # a no-op when this checkout's image is up to date
        return build_package_repo()  # likewise; node files come from its packages (the NVIDIA driver)


# --------------------------------------------------------------------------- up

def check_subnet_free() -> None:
    addresses = run("ip", "-o", "-4", "addr", "show", capture=True).stdout
    for line in addresses.splitlines():
        address = ipaddress.ip_interface(line.split()[3])
        if address.network.overlaps(SUBNET):
            raise FleetError(f"{SUBNET} is already used on this host ({line.split()[1]}); set FLEET_SUBNET")


def write_pci_view(upper: Path, hardware: dict) -> None:
    """The node's NVIDIA PCI functions, as /sys/bus/pci/devices shows them (bound there at boot).

    This host's /sys has no NVIDIA device; a role finds GPUs (class 0x03xxxx) and NVSwitches
    (class 0x0680xx, vendor 0x10de) there before any driver is installed.
    """
    devices = [(gpu["pci_bus_id"][4:].lower(), "0x030200", "0x2330") for gpu in hardware["gpus"]]
    devices += [(f"0000:{0xc0 + i:02x}:00.0", "0x068000", "0x22a3") for i in range(hardware["nvswitches"])]
    for address, pci_class, device in devices:
        directory = upper / "var/lib/fleet/pci" / address
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vendor").write_text("0x10de\n")
        (directory / "device").write_text(device + "\n")
        (directory / "class").write_text(pci_class + "\n")


def preinstall_driver(upper: Path, version: str) -> None:
    """A driver that came with the server (NVIDIA's .run installer: outside the package manager).

    The files are those of the repository's driver package (package_repo.py), and the driver
    reports the version the node's profile names.
    """
    staging = upper.parent / "driver"
    shutil.rmtree(staging, ignore_errors=True)
    run("dpkg-deb", "-x", str(package_repo.driver_package(REPO_DIR)), str(staging))
    # NVIDIA's .run installer installs no systemd unit for nvidia-persistenced (only a sample
    # under /usr/share/doc) and creates no user for it: the package's unit stays out too.
    for top in ("lib", "usr/lib"):
        (staging / top / "systemd/system/nvidia-persistenced.service").unlink(missing_ok=True)
    # The image is merged-/usr (/lib is a symlink to usr/lib): a real lib/ in the upper dir would
    # hide that link, and with it /lib/systemd/systemd.  Put files where the links lead.
    for top in ("bin", "sbin", "lib", "lib64"):
        if (staging / top).is_dir():
            shutil.copytree(staging / top, staging / "usr" / top, dirs_exist_ok=True)
            shutil.rmtree(staging / top)
    shutil.copytree(staging, upper, dirs_exist_ok=True, symlinks=True)
    shutil.rmtree(staging)
    (upper / "usr/lib/fake-nvidia/version").write_text(version + "\n")


def write_node_files(name: str, number: int, upper: Path, client_pubkey: str, hardware: dict) -> str:
    """Populate the node's overlay upper dir before first boot; return its host public key."""
    for directory in ("etc/ssh", "root/.ssh", "usr/local/sbin", "usr/local/bin", "var/lib/fake-kube-apiserver",
                      "var/log", "etc/gpuaas"):
        (upper / directory).mkdir(parents=True, exist_ok=True)
    (upper / "etc/hostname").write_text(name + "\n")
    (upper / "etc/hosts").write_text(f"127.0.0.1 localhost\n{node_address(number)} {name}\n")
    # The host resolver is unreachable from a namespace: fail lookups fast.
    (upper / "etc/resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    key = upper / "etc/ssh/ssh_host_ed25519_key"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key))
    ssh_dir = upper / "root/.ssh"
    ssh_dir.chmod(0o700)
    (ssh_dir / "authorized_keys").write_text(client_pubkey)
    (ssh_dir / "authorized_keys").chmod(0o600)
    # The node's distribution mirror, as a Debian 12 server has one: the fleet repository's
    # Debian suite, signed by its key (what debian-archive-keyring is to deb.debian.org).
    keyring = upper / "usr/share/keyrings" / package_repo.KEYRING_NAME
    keyring.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO_DIR / "public" / package_repo.KEYRING_NAME, keyring)
    (upper / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (upper / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: http://{HUB_ADDRESS}:{REPO_PORT}/\nSuites: {package_repo.DISTRO_SUITE}\n"
        f"Components: {package_repo.COMPONENT}\nSigned-By: /usr/share/keyrings/{package_repo.KEYRING_NAME}\n")
    if hardware["nvml"]:
        write_pci_view(upper, hardware)
        if hardware["driver"]:
            preinstall_driver(upper, hardware["nvml"]["driver_version"])
        profile = upper / "etc/fake-nvml/profile"
        profile.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"driver_version={hardware['nvml']['driver_version']}",
                 f"cuda_version={hardware['nvml']['cuda_version']}"]
        lines += [f"gpu={g['uuid']}|{g['model']}|{g['memory_mib']}|{g['pci_bus_id']}|0" for g in hardware["gpus"]]
        profile.write_text("\n".join(lines) + "\n")
    if hardware["npus"]:
        shutil.copy2(HERE / "node_files/npu-smi", upper / "usr/local/sbin/npu-smi")
        profile = upper / "etc/fake-npu/profile"
        profile.parent.mkdir(parents=True, exist_ok=True)
        # The stand-in's profile format is described in its header (node_files/npu-smi).
        npu_board = hardware["npu_board"]
        lines = [f"layout={npu_board['layout']}"] + ([f"npu_name={npu_board['npu_name']}"] if npu_board["npu_name"] else [])
        lines += [f"{n['card']}|{n['chip']}|{n['name']}|{n['memory_mb']}|{n['health']}" for n in hardware["npus"]]
        profile.write_text("\n".join(lines) + "\n")
    if hardware["volume_group"]:
        vg = hardware["volume_group"]
        shutil.copy2(HERE / "node_files/vgs", upper / "usr/local/sbin/vgs")
        (upper / "etc/fake-lvm").mkdir(parents=True, exist_ok=True)
        (upper / "etc/fake-lvm/vg").write_text(f"{vg['name']}|{vg['size_bytes']}|{vg['free_bytes']}\n")
    return Path(str(key) + ".pub").read_text().split()[:2]


# Started from inside the hub (`ip netns exec`, where molecule and the e2e tests run), /sys is
# a fresh sysfs without the cgroup hierarchies that nspawn needs and that `down` reads: mount
# this host's again (each hierarchy /proc/self/cgroup names; mounting one again gives the same
# hierarchy).  The mounts stay in that mount namespace, which `ip netns exec` made for the one
# command.
CGROUP_VIEW_SCRIPT = r"""
if [ ! -d /sys/fs/cgroup/systemd ] && [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then
  mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
  while IFS=: read -r _ controllers _; do
    if [ -z "$controllers" ]; then
      mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
    else
      directory=/sys/fs/cgroup/${controllers#name=}
      mkdir -p "$directory" && mount -t cgroup -o "${controllers/name=systemd/none,name=systemd}" cgroup "$directory"
    fi
  done < /proc/self/cgroup
fi
"""

SUPERVISOR_SCRIPT = r"""
# Runs in a mount namespace of its own (unshare), which holds the node's overlay root for
# as long as the node exists: killing the supervisor's process group ends the node and drops
# the mount with it.  Boots the node; boots it again when it was rebooted.
set -u
netns=$1 node_dir=$2 image=$3 cluster=$4 name=$5
{cgroup_view}
for hierarchy in {hierarchies}; do
  [ -d "$hierarchy" ] || continue
  mkdir -p "$hierarchy/{parent}/$name"
  echo $$ > "$hierarchy/{parent}/$name/cgroup.procs"
done
merged=$node_dir/merged
mount -t overlay overlay -o "lowerdir=$image,upperdir=$node_dir/upper,workdir=$node_dir/work" "$merged" || exit 1
while :; do
  # Nothing is swapped on at power-on: systemd activates fstab's swap during the boot.
  mkdir -p "$merged/var/lib/fleet"
  printf 'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n' > "$merged/var/lib/fleet/swaps"
  echo "$(date -u +%FT%TZ) boot"
  # --keep-unit --register=no: this host's PID 1 is not systemd (no machined, no scope units).
  # --tmpfs=/var/lib/containerd: containerd's overlayfs snapshotter refuses an overlayfs upper dir.
  # --resolv-conf/--timezone/--link-journal: the node keeps its own files; nspawn writes none.
  # CAP_NET_ADMIN: the node's network namespace is its own (sysctls, iptables), as nspawn grants
  # with --private-network but not with --network-namespace-path.
  systemd-nspawn --quiet --boot --register=no --keep-unit --console=read-only \
    --directory="$merged" --machine="$name" --network-namespace-path="/run/netns/$netns" \
    --resolv-conf=off --timezone=off --link-journal=no \
    --capability=CAP_NET_ADMIN \
    --tmpfs=/var/lib/containerd \
    --bind="$cluster:/var/lib/fake-kube-apiserver"
  rc=$?
  echo "$(date -u +%FT%TZ) node ended (rc $rc)"
  [ "$rc" -eq {reboot} ] || exit "$rc"
  sleep 3  # the node really is away for a while, as after a real reboot
done
""".replace("{cgroup_view}", CGROUP_VIEW_SCRIPT).replace("{reboot}", str(REBOOT_EXIT_CODE)).replace(
    "{parent}", CGROUP_PARENT).replace("{hierarchies}", " ".join(CGROUP_HIERARCHIES))


def cgroups_visible() -> bool:
    return any(Path(hierarchy).is_dir() for hierarchy in CGROUP_HIERARCHIES)


def in_hub_namespace() -> bool:
    """Whether this process runs inside the hub (`ip netns exec`, which also gave it a mount
    namespace of its own): its network namespace is the one /run/netns names for the hub."""
    try:
        here, hub = os.stat("/proc/self/ns/net"), os.stat(f"/run/netns/{HUB_NS}")
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (hub.st_dev, hub.st_ino)


@functools.cache  # once per process: `down` reads the cgroups every 50 ms while it waits
def see_host_cgroups() -> None:
    """Before reading the nodes' cgroups: inside the hub, mount this host's (CGROUP_VIEW_SCRIPT).
    Without them, a `down` run there would neither find what outlived a node nor remove its
    cgroups.  Never outside the hub: there the mounts would be this host's own."""
    if cgroups_visible() or not in_hub_namespace():
        return
    result = run("bash", "-c", CGROUP_VIEW_SCRIPT, check=False, capture=True)
    if not cgroups_visible():  # warn, and let `down` go on with the namespaces and the state
        print(f"fleet: could not mount this host's cgroup hierarchies in the hub (rc {result.returncode}: "
              f"{result.stderr.strip()}); run `fleet.py down` outside the hub for what outlived a node",
              file=sys.stderr)


def start_node(name: str, node: dict, image: Path) -> int:
    log = open(Path(node["dir"]) / "supervisor.log", "a")
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", SUPERVISOR_SCRIPT, "supervisor",
         node["netns"], node["dir"], str(image), str(STATE_DIR / "cluster"), name],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    return process.pid


def remove_node_cgroups(name: str) -> None:
    """The node's cgroups (and nspawn's payload/supervisor groups below them), deepest first."""
    see_host_cgroups()
    for hierarchy in CGROUP_HIERARCHIES:
        top = Path(hierarchy) / CGROUP_PARENT / name
        if not top.is_dir():
            continue
        for directory in sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: len(d.parts),
                                reverse=True) + [top]:
            try:
                directory.rmdir()
            except OSError:
                pass
        try:
            top.parent.rmdir()  # the fleet's parent group, once its last node is gone
        except OSError:
            pass


def build_package_repo() -> Path:
    try:
        return package_repo.build_repo(REPO_DIR, IMAGE_DIR)
    except package_repo.RepoError as error:
        raise FleetError(f"package repository: {error}") from None


def start_repo_server() -> dict:
    """Serve the repository over HTTP from the hub, where every node reaches it; return its record."""
    public = REPO_DIR / "public"
    if not (public / "dists").is_dir():
        raise FleetError(f"no package repository at {public}; run `fleet.py image`")
    # The CNI manifest gpuaas_enable applies, served as its pinned release URL serves it.
    (public / "cni").mkdir(exist_ok=True)
    shutil.copy2(HERE / "cni" / CNI_MANIFEST, public / "cni" / CNI_MANIFEST)
    log_path = STATE_DIR / "repo-server.log"
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            ["ip", "netns", "exec", HUB_NS, sys.executable, "-m", "http.server", "--bind", str(HUB_ADDRESS),
             "--directory", str(public), str(REPO_PORT)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    record = {"pid": process.pid, "url": f"http://{HUB_ADDRESS}:{REPO_PORT}/",
              "keyring": str(public / "gpuaas-fleet-archive-keyring.gpg")}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = run("ip", "netns", "exec", HUB_NS, sys.executable, "-c",
                    f"import socket; socket.create_connection(('{HUB_ADDRESS}', {REPO_PORT}), 1)",
                    check=False, capture=True)
        if probe.returncode == 0:
            return record
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stop_repo_server(record)
    raise FleetError(f"the package repository server did not start on {HUB_ADDRESS}:{REPO_PORT}; see {log_path}")


def stop_repo_server(record: dict | None) -> None:
    if not record:
        return
    try:
        os.killpg(record["pid"], signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and process_group_alive(record["pid"]):
        time.sleep(0.05)


# Every node's systemd (PID 1, journald, logind, udev...) takes inotify instances, all under
# root's one per-user limit: at the kernel's default of 128, about the 20th node's systemd
# fails to start ("Failed to allocate manager object: Too many open files"). Measured: 30 booted
# nodes hold 212 instances (about 7 each); 16 each leaves room for what the tests start.
INOTIFY_INSTANCES_PER_NODE = 16
INOTIFY_INSTANCES_SYSCTL = Path("/proc/sys/fs/inotify/max_user_instances")


def ensure_inotify_instances(count: int) -> None:
    """Raise root's inotify instance limit to what ``count`` nodes need (never lower it)."""
    needed = 128 + INOTIFY_INSTANCES_PER_NODE * count
    if int(INOTIFY_INSTANCES_SYSCTL.read_text()) < needed:
        INOTIFY_INSTANCES_SYSCTL.write_text(f"{needed}\n")


def up(count: int, without_driver: tuple[str, ...] = ()) -> None:
    if not 1 <= count <= MAX_NODES:
        raise FleetError(f"N must be between 1 and {MAX_NODES}")
    with FleetLock():
        state = read_state()
        if fleet_is_running(state):
            raise FleetError("a fleet is already running; run `make fleet-down` first")
        if state:  # leftovers of a fleet that died: clean them before reuse
            teardown(state, keep_hub=True)
        unknown = sorted(set(without_driver) - {node_name(n) for n in range(1, count + 1)})
        if unknown:
            raise FleetError(f"--without-driver names no node of this fleet: {', '.join(unknown)}")
        build_image_and_repo()
        ensure_hub()
        ensure_inotify_instances(count)
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        STATE_DIR.mkdir(parents=True)
        (STATE_DIR / "cluster").mkdir()
        repo_server = start_repo_server()
        client_key = STATE_DIR / "id_ed25519"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpuaas-fleet-controller", "-f", str(client_key))
        state = {"subnet": str(SUBNET), "hub_netns": HUB_NS, "nodes": {}, "package_repo": repo_server}
        write_state(state)  # from here on `down` can clean up whatever follows

        known_hosts = []
        for number in range(1, count + 1):
            name = node_name(number)
            netns = NODE_NS_PREFIX + name
            node_dir = STATE_DIR / "nodes" / name
            for sub in ("upper", "work", "merged"):
                (node_dir / sub).mkdir(parents=True)
            hardware = node_hardware(number, driver=name not in without_driver)
            host_key = write_node_files(name, number, node_dir / "upper", (client_key.with_suffix(".pub")).read_text(),
                                        hardware)
            known_hosts.append(f"{node_address(number)} {host_key[0]} {host_key[1]}")
            run("ip", "netns", "add", netns)
            run("ip", "-n", HUB_NS, "link", "add", f"veth-{name}", "type", "veth", "peer", "name", "eth0",
                "netns", netns)
            run("ip", "-n", HUB_NS, "link", "set", f"veth-{name}", "master", BRIDGE, "up")
            run("ip", "-n", netns, "link", "set", "lo", "up")
            run("ip", "-n", netns, "addr", "add", f"{node_address(number)}/{SUBNET.prefixlen}", "dev", "eth0")
            run("ip", "-n", netns, "link", "set", "eth0", "up")
            node = {"number": number, "address": node_address(number), "netns": netns, "dir": str(node_dir),
                    "hardware": hardware}
            node["supervisor_pid"] = start_node(name, node, IMAGE_DIR)
            state["nodes"][name] = node
            write_state(state)

        (STATE_DIR / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        write_inventory(state)
        wait_for_sshd(state)
        print(f"fleet up: {count} nodes; inventory {STATE_DIR / 'inventory.yml'}; "
              f"run ansible with: {sys.argv[0]} exec -- ansible ...")


def write_inventory(state: dict) -> None:
    groups: dict[str, dict] = {}
    for name, node in state["nodes"].items():
        for group in node["hardware"]["groups"]:
            groups.setdefault(group, {"hosts": {}})["hosts"][name] = None
    hosts = {}
    for name, node in state["nodes"].items():
        host = {"ansible_host": node["address"], "fleet_hardware": node["hardware"]}
        if node["hardware"]["volume_group"]:
            host["node_init_volume_group"] = node["hardware"]["volume_group"]["name"]
            host["storage_metrics_volume_group"] = node["hardware"]["volume_group"]["name"]
        if "gateway" in node["hardware"]["groups"]:
            host["node_init_external_service_ip"] = node["address"]
        hosts[name] = host
    repo = state["package_repo"]
    sources = {vendor: {"uri": f"{repo['url']}{vendor}/", "suites": [package_repo.SUITE],
                        "components": [package_repo.COMPONENT], "signed_by": repo["url"] + package_repo.KEYRING_NAME}
               for vendor in package_repo.VENDOR_PATHS}
    ssh_args = (f"-o UserKnownHostsFile={STATE_DIR / 'known_hosts'} -o StrictHostKeyChecking=yes "
                "-o ControlMaster=auto -o ControlPersist=60s -o ConnectTimeout=5 "
                "-o ServerAliveInterval=5 -o ServerAliveCountMax=2")
    inventory = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_private_key_file": str(STATE_DIR / "id_ed25519"),
                "ansible_ssh_common_args": ssh_args,
                # Fleet nodes have no kernel boot id of their own: PID 1 writes one at boot.
                "node_reboot_boot_time_command": "cat /run/fleet-boot-id",
                # Every repository a role adds is the fleet's signed one (package_repo.py), added
                # as the real ones are: a deb822 source whose Signed-By key is fetched by URL.
                "fleet_package_repo_url": repo["url"],
                "fleet_package_repo_keyring": repo["keyring"],
                "node_init_kubernetes_apt_repository": sources["kubernetes"],
                "node_init_nvidia_cuda_apt_repository": sources["cuda"],
                "node_init_nvidia_container_toolkit_apt_repository": sources["nvidia-container-toolkit"],
                # pip takes a plain-HTTP index only from a host named trusted.
                "node_init_nvidia_ml_py_pip_environment": {"PIP_INDEX_URL": f"{repo['url']}simple/",
                                                           "PIP_TRUSTED_HOST": str(HUB_ADDRESS)},
                # The same index serves the gpuaas agent's wheel and its dependencies' wheels.
                "gpu_sharing_agent_pip_environment": {"PIP_INDEX_URL": f"{repo['url']}simple/",
                                                      "PIP_TRUSTED_HOST": str(HUB_ADDRESS)},
                "cluster_controller_cni_manifest_url": f"{repo['url']}cni/{CNI_MANIFEST}",
                # The fake API server keeps its objects in etcd's data directory; the fleet's is the
                # directory every node shares (the cluster CA's key is there too), where tests read them.
                "cluster_controller_etcd_data_dir": "/var/lib/fake-kube-apiserver/etcd",
                # No kernel headers package matches this host's kernel (the stand-in driver needs none).
                "node_init_nvidia_driver_prerequisites": [],
            },
            "hosts": hosts,
            "children": groups,
        }
    }
    import yaml

    (STATE_DIR / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))


def wait_for_sshd(state: dict, names: list[str] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    for name in names or list(state["nodes"]):
        address = state["nodes"][name]["address"]
        while True:
            probe = run("ip", "netns", "exec", HUB_NS, "bash", "-c", f"exec 3<>/dev/tcp/{address}/22",
                        check=False, capture=True)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                log = Path(state["nodes"][name]["dir"]) / "supervisor.log"
                raise FleetError(f"{name}: sshd did not answer within {timeout:.0f}s; see {log}")
            time.sleep(0.1)


# --------------------------------------------------------------------------- down

def node_init_pid(node: dict) -> int | None:
    """The host PID of the node's systemd: the one descendant of the supervisor that is
    PID 1 of a PID namespace (the last field of its NSpid line is 1)."""
    pending = [node["supervisor_pid"]]
    while pending:
        pid = pending.pop(0)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspid) > 1 and nspid[-1] == "1":
            return pid
        pending.extend(children)
    return None


def is_supervisor_of(pid: int, node: dict) -> bool:
    """Whether ``pid`` is the node's supervisor still (start_node's command line, its netns)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid > 0 else []
    except OSError:
        return False
    return b"supervisor" in argv and node["netns"].encode() in argv


def kill_quietly(pid: int, group: bool = False) -> None:
    """SIGKILL, for a process that may have ended meanwhile."""
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def node_cgroup_pids(name: str) -> set[int]:
    """Every process in the node's cgroups (nspawn puts the container there)."""
    see_host_cgroups()
    pids: set[int] = set()
    for hierarchy in CGROUP_HIERARCHIES:
        top = Path(hierarchy) / CGROUP_PARENT / name
        for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
            try:
                pids.update(int(pid) for pid in procs.read_text().split())
            except (OSError, ValueError):
                pass
    return pids


def stop_node_processes(nodes: dict) -> None:
    """Kill each node's supervisor, unshare and PID 1, and wait until they are all gone.

    The supervisor leads its own process group (start_new_session), so one
    killpg reaches the supervisor, `ip netns exec`/unshare and the node's PID 1;
    killing PID 1 of a PID namespace ends every process in it.  A node whose supervisor was
    killed from outside (a CI job stopped with SIGKILL) has no such tree any more: what is
    still in its cgroups is killed too.  Waiting matters: a namespace (and its veth) lives
    on while any process still holds it.  Every node is killed before waiting for any, so
    the kernel tears them down together.
    """
    killed = []
    for name, node in nodes.items():
        # 0: none known (a node `down` found orphaned), or the recorded one is gone and its
        # number may be another process's now.
        supervisor = node["supervisor_pid"] if is_supervisor_of(node["supervisor_pid"], node) else 0
        init_pid = node_init_pid(node) if supervisor else None
        if supervisor:  # killpg(0) would be this process's own group
            kill_quietly(supervisor, group=True)
        if init_pid:
            kill_quietly(init_pid)
        for pid in node_cgroup_pids(name):  # read after PID 1 is gone: what outlived it
            kill_quietly(pid)
        killed.append((name, supervisor, init_pid))
    deadline = time.monotonic() + 10
    while killed and time.monotonic() < deadline:
        killed = [(name, supervisor, init_pid) for name, supervisor, init_pid in killed
                  if (supervisor and process_group_alive(supervisor)) or (init_pid and pid_alive(init_pid))
                  or any(pid_alive(pid) for pid in node_cgroup_pids(name))]
        if killed:
            time.sleep(0.05)
    if killed:
        raise FleetError(f"{', '.join(nodes[entry[0]]['netns'] for entry in killed)}: "
                         "processes still alive 10s after SIGKILL")


def forget_node(name: str) -> None:
    """What nspawn leaves on the host after its container is gone: its cgroups, and the
    mount-propagation directory it cannot remove itself because this host's /run is no tmpfs."""
    remove_node_cgroups(name)
    shutil.rmtree(f"/run/systemd/nspawn/propagate/{name}", ignore_errors=True)


def teardown(state: dict, keep_hub: bool) -> None:
    stop_repo_server(state.get("package_repo"))
    stop_node_processes(state["nodes"])
    for name, node in state["nodes"].items():
        forget_node(name)
        run("ip", "netns", "delete", node["netns"], check=False, capture=True)
        # Normally gone with the node's namespace; make sure, so the name is free.
        run("ip", "-n", HUB_NS, "link", "delete", f"veth-{name}", check=False, capture=True)
    if not keep_hub:
        run("ip", "netns", "delete", HUB_NS, check=False, capture=True)
    shutil.rmtree(STATE_DIR, ignore_errors=True)


def down(keep_hub: bool = False) -> None:
    with FleetLock():
        state = read_state()
        if state is None:
            # No record, but a hub left by a crashed run must still go, and so must nodes
            # whose processes outlived it (what is still in the fleet's cgroups).
            see_host_cgroups()
            orphans = sorted({entry.name for hierarchy in CGROUP_HIERARCHIES
                              for entry in (Path(hierarchy) / CGROUP_PARENT).glob("*") if entry.is_dir()})
            if orphans:
                stop_node_processes({name: {"supervisor_pid": 0, "netns": f"{NODE_NS_PREFIX}{name}"}
                                     for name in orphans})
                for name in orphans:
                    forget_node(name)
                    run("ip", "-n", HUB_NS, "link", "delete", f"veth-{name}", check=False, capture=True)
            for line in run("ip", "netns", "list", capture=True).stdout.splitlines():
                netns = line.split()[0] if line.split() else ""
                if netns.startswith(NODE_NS_PREFIX) and netns != HUB_NS:  # a node's, its processes gone
                    run("ip", "netns", "delete", netns, check=False, capture=True)
            if not keep_hub:
                # The repository server a crashed run left in the hub (its record went with it).
                for pid in run("ip", "netns", "pids", HUB_NS, check=False, capture=True).stdout.split():
                    kill_quietly(int(pid))
                run("ip", "netns", "delete", HUB_NS, check=False, capture=True)
            print(f"no fleet running{f' (removed what was left of {len(orphans)} nodes)' if orphans else ''}")
            return
        teardown(state, keep_hub)
        leftovers = [line for line in run("ip", "netns", "list", capture=True).stdout.splitlines()
                     if line.startswith(NODE_NS_PREFIX) and not line.startswith(HUB_NS)]
        if leftovers:
            raise FleetError(f"namespaces left behind: {leftovers}")
        print(f"fleet down: {len(state['nodes'])} nodes stopped")


# --------------------------------------------------------------------------- operations on a running fleet

def require_state() -> dict:
    state = read_state()
    if not state:
        raise FleetError("no fleet is running; run `make fleet-up` first")
    return state


def require_node(state: dict, name: str) -> dict:
    if name not in state["nodes"]:
        raise FleetError(f"unknown node {name!r}; the fleet has {', '.join(state['nodes'])}")
    return state["nodes"][name]


def node_exec(node: dict, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
    pid = node_init_pid(node)
    if not pid:
        raise FleetError(f"node {node['netns']} is not running")
    return run("nsenter", f"--target={pid}", "--mount", "--uts", "--ipc", "--pid", "--net", "--cgroup", "--root",
               "--wd=/", *command, check=check)


def sshd_control(name: str, action: str) -> None:
    state = require_state()
    node = require_node(state, name)
    # systemd keeps sshd running (ssh.service: Restart=on-failure) until it is stopped on
    # purpose; KillMode=process leaves open sessions alone, as on a server.
    node_exec(node, ["systemctl", action, "ssh.service"])
    if action == "start":
        wait_for_sshd(state, [name])


def node_power(name: str, action: str) -> None:
    with FleetLock():
        state = require_state()
        node = require_node(state, name)
        if action == "stop":
            stop_node_processes({name: node})
            forget_node(name)
        else:
            if pid_alive(node["supervisor_pid"]):
                raise FleetError(f"{name} is already running")
            node["supervisor_pid"] = start_node(name, node, IMAGE_DIR)
            write_state(state)
            wait_for_sshd(state, [name])


def set_gpu_lost(name: str, index: int, lost: bool) -> None:
    node = require_node(require_state(), name)
    marker = f"/var/lib/fake-nvml/lost-{index}"
    node_exec(node, ["sh", "-c", f"mkdir -p /var/lib/fake-nvml && touch {marker}" if lost else f"rm -f {marker}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("base").add_argument("--force", action="store_true")
    sub.add_parser("image").add_argument("--force", action="store_true")
    up_parser = sub.add_parser("up")
    up_parser.add_argument("count", type=int, nargs="?", default=5)
    up_parser.add_argument("--without-driver", action="append", default=[], metavar="NODE",
                           help="the node has its GPUs but no NVIDIA driver")
    down_parser = sub.add_parser("down")
    down_parser.add_argument("--keep-hub", action="store_true", help="leave the hub namespace for processes in it")
    sub.add_parser("hub", help="create the hub namespace (idempotent)")
    sub.add_parser("status")
    sub.add_parser("exec").add_argument("argv", nargs=argparse.REMAINDER)
    for verb in ("sshd", "node"):
        p = sub.add_parser(verb)
        p.add_argument("name")
        p.add_argument("action", choices=["stop", "start"])
    for verb in ("lose-gpu", "restore-gpu"):
        p = sub.add_parser(verb)
        p.add_argument("name")
        p.add_argument("index", type=int)
    p = sub.add_parser("node-exec")
    p.add_argument("name")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("fleet: must run as root (namespaces, mounts)", file=sys.stderr)
        return 2
    try:
        if args.command == "base":
            build_base_locked(force=args.force)
            print(f"fleet base system ready: {BASE_DIR}")
        elif args.command == "image":
            print(f"fleet package repository ready: {build_image_and_repo(force=args.force)}")
        elif args.command == "up":
            up(args.count, tuple(args.without_driver))
        elif args.command == "down":
            down(args.keep_hub)
        elif args.command == "hub":
            with FleetLock():
                ensure_hub()
        elif args.command == "status":
            print(json.dumps(require_state(), indent=2))
        elif args.command == "exec":
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if HUB_NS not in namespaces():
                raise FleetError("the hub namespace does not exist; run `fleet.py hub` or `make fleet-up`")
            os.execvp("ip", ["ip", "netns", "exec", HUB_NS, *command])
        elif args.command == "sshd":
            sshd_control(args.name, args.action)
        elif args.command == "node":
            node_power(args.name, args.action)
        elif args.command in ("lose-gpu", "restore-gpu"):
            set_gpu_lost(args.name, args.index, args.command == "lose-gpu")
        elif args.command == "node-exec":
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            return node_exec(require_node(require_state(), args.name), command, check=False).returncode
    except FleetError as error:
        print(f"fleet: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"fleet: command failed ({error.returncode}): {' '.join(error.cmd)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
