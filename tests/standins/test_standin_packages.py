"""The fleet repository's stand-in packages (tests/fleet/packages), without a running fleet.

The repository is built into a scratch directory (seeded with the Debian packages of
.build/fleet/repo when there is one, so nothing is downloaded twice); a copy of the node image
gets the packages through apt, from that repository under its own key, and the stand-ins run
in a chroot of it.  There is no systemd in a chroot: the tests start the daemons themselves,
with the arguments their units give them.  Needs root and the node image (make fleet-image).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(CHECKOUT / "tests/fleet"))
import package_repo  # noqa: E402
from waiting import wait_for  # noqa: E402

IMAGE = CHECKOUT / ".build/fleet/rootfs"
SEED_REPO = CHECKOUT / ".build/fleet/repo"
PACKAGES = CHECKOUT / "tests/fleet/packages"
STANDINS = ["kubeadm", "kubelet", "kubectl", "containerd", "cuda-drivers-580", "nvidia-fabricmanager-580",
            "cuda-drivers-fabricmanager-580", "nvidia-container-toolkit"]
KUBELET_UNIT_ARGS = ("--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
                     "--kubeconfig=/etc/kubernetes/kubelet.conf", "--config=/var/lib/kubelet/config.yaml")
API = "var/lib/fake-kube-apiserver"
ETCD = "var/lib/etcd"  # kubeadm's etcd.local.dataDir by default

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and apt in a copy of the node image need root"),
    pytest.mark.skipif(not (IMAGE / "usr/bin/python3").exists(),
                       reason=f"no node image at {IMAGE}: build it with `make fleet-image`"),
]


def seed(debs: Path) -> None:
    """Hard-link the checkout repository's debs and wheels into a scratch one: no download twice."""
    for kind, pattern in (("debs", "*.deb"), ("wheels", "*")):
        into = debs.parent / kind
        into.mkdir(parents=True, exist_ok=True)
        for source in (SEED_REPO / kind).glob(pattern):
            target = into / source.name
            if source.is_file() and not target.exists():
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)


def kill_agent(home: Path) -> None:
    """gpg starts an agent for each key directory: end the scratch repositories' ones."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False)


@pytest.fixture(scope="session")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    seed(root / "debs")
    started = time.monotonic()
    public = package_repo.build_repo(root, IMAGE)
    print(f"build_repo took {time.monotonic() - started:.1f}s")
    yield public
    kill_agent(root / "gnupg")


def run(root: Path, *cmd: str, env: dict | None = None, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    """A command in the chroot, with a plain environment."""
    return subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, input=stdin,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **(env or {})},
                          timeout=timeout, check=False)


@pytest.fixture(scope="session")
def installed(repo, tmp_path_factory) -> Path:
    """A copy of the node image with every stand-in installed by apt from the signed repository."""
    root = tmp_path_factory.mktemp("node") / "root"
    subprocess.run(["cp", "-a", str(IMAGE), str(root)], check=True)
    # symlinks=True: the repository links itself under one path per vendor (package_repo.VENDOR_PATHS);
    # followed, those links copy it without end.
    shutil.copytree(repo, root / "srv/repo", symlinks=True)
    keyring = root / "usr/share/keyrings" / package_repo.KEYRING_NAME
    keyring.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / package_repo.KEYRING_NAME, keyring)
    (root / "etc/apt/sources.list.d/fleet.sources").write_text(
        "Types: deb\nURIs: file:/srv/repo\nSuites: fleet bookworm\nComponents: main\n"
        f"Signed-By: /usr/share/keyrings/{package_repo.KEYRING_NAME}\n")
    update = run(root, "apt-get", "update")
    assert update.returncode == 0 and "NO_PUBKEY" not in update.stderr, update.stderr
    install = run(root, "apt-get", "install", "-y", *STANDINS, env={"DEBIAN_FRONTEND": "noninteractive"},
                  timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    yield root
    shutil.rmtree(root, ignore_errors=True)


class Node:
    """The installed root, reset to a just-installed node's state for each test."""

    def __init__(self, root: Path):
        self.root = root
        self.processes: list[subprocess.Popen] = []
        self.cri: socket.socket | None = None

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def run(self, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        return run(self.root, *cmd, **kwargs)

    def stop_static_pods(self) -> None:
        """The static Pods a kubelet started without systemd (process groups of their own)."""
        for pid_file in self.path("var/lib/kubelet/fake-static-pods").glob("*.pid"):
            try:
                os.killpg(int(pid_file.read_text()), 9)
            except (OSError, ValueError):
                pass

    def reset(self) -> None:
        self.stop_static_pods()
        for inside in (API, ETCD, "var/lib/custom-etcd", "var/log/fake-k8s", "var/lib/kubelet", "run/fake-nvidia", "run/nvidia-persistenced",
                       "run/nvidia-fabricmanager", "etc/fake-nvml", "run/containerd", "etc/containerd", "sys/bus",
                       "etc/kubernetes/manifests", "etc/kubernetes/pki", "etc/cni", "root/cp-1", "var/log/kubernetes"):
            shutil.rmtree(self.path(inside), ignore_errors=True)
        for conf in self.path("etc/kubernetes").glob("*.conf"):
            conf.unlink()
        self.path(API).mkdir(parents=True)
        self.path("usr/lib/fake-nvidia/version").write_text("580.95.05\n")
        self.path("tmp/swaps").write_text("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")

    def start_cri(self) -> None:
        """A listening socket where containerd's is: the kubelet's CRI dial succeeds."""
        path = self.path("run/containerd/containerd.sock")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.cri = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.cri.bind(str(path))
        self.cri.listen(128)

    def kubelet_args(self) -> list[str]:
        """ExecStart of kubelet.service with kubeadm's drop-in: its variables expanded as
        systemd does ($VAR split on whitespace) from the drop-in and its EnvironmentFiles."""
        env: dict[str, str] = {}
        dropin = self.path("usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf").read_text()
        exec_start = ""
        for line in dropin.splitlines():
            if line.startswith("Environment="):
                key, value = shlex.split(line.split("=", 1)[1])[0].split("=", 1)
                env[key] = value
            elif line.startswith("EnvironmentFile=-"):
                source = self.path(line.split("-", 1)[1])
                if source.exists():
                    for entry in source.read_text().splitlines():
                        if "=" in entry:
                            key, value = entry.split("=", 1)
                            env[key] = shlex.split(value)[0] if value.strip() else ""
            elif line.startswith("ExecStart=/"):
                exec_start = line.split("=", 1)[1]
        words = exec_start.split()
        args = []
        for word in words[1:]:
            args += env.get(word[1:], "").split() if word.startswith("$") else [word]
        return args

    def start_kubelet(self, *args: str, heartbeat: str = "0.3") -> subprocess.Popen:
        process = subprocess.Popen(
            ["chroot", str(self.root), "/usr/bin/kubelet", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "FAKE_PROC_SWAPS": "/tmp/swaps",
                            "FAKE_KUBELET_HEARTBEAT_SECONDS": heartbeat})
        self.processes.append(process)
        return process

    def profile(self, model: str, count: int, driver: str = "580.95.05") -> None:
        lines = [f"driver_version={driver}", "cuda_version=13000"]
        lines += [f"gpu=GPU-{i:08x}-0000-0000-0000-000000000000|{model}|81559|00000000:{0x18 + 0x10 * i:02X}:00.0|0"
                  for i in range(count)]
        self.path("etc/fake-nvml").mkdir(parents=True, exist_ok=True)
        self.path("etc/fake-nvml/profile").write_text("\n".join(lines) + "\n")

    def pci(self, nvswitches: int) -> None:
        """The node's PCI view as the fleet binds it over /sys/bus/pci/devices (fleet.py)."""
        for i in range(nvswitches):
            device = self.path(f"sys/bus/pci/devices/0000:{0xc0 + i:02x}:00.0")
            device.mkdir(parents=True)
            (device / "vendor").write_text("0x10de\n")
            (device / "class").write_text("0x068000\n")

    def load_driver(self) -> None:
        """What the fleet's boot unit does at boot when the driver is installed."""
        self.path("run/fake-nvidia").mkdir(parents=True, exist_ok=True)
        self.path("run/fake-nvidia/loaded").touch()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
        for pid_file in ("run/nvidia-persistenced/nvidia-persistenced.pid",
                         "run/nvidia-fabricmanager/nv-fabricmanager.pid"):
            try:
                os.kill(int(self.path(pid_file).read_text()), 15)
            except (OSError, ValueError):
                pass
        self.stop_static_pods()
        if self.cri:
            self.cri.close()


@pytest.fixture
def node(installed):
    state = Node(installed)
    state.reset()
    yield state
    state.stop()


# --------------------------------------------------------------------------- the repository

def test_stand_in_shell_scripts_pass_shellcheck():
    # The Makefile installs shellcheck (DEBIAN_PACKAGES): missing, it is a broken setup, not a skip.
    assert shutil.which("shellcheck"), "shellcheck is not installed (Makefile DEBIAN_PACKAGES)"
    scripts = [p for p in PACKAGES.rglob("*") if p.is_file() and p.read_bytes()[:64].split(b"\n")[0]
               in (b"#!/usr/bin/env bash", b"#!/bin/sh")]
    assert len(scripts) >= 8
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def suite_versions(repo: Path, suite: str) -> dict:
    index = (repo / f"dists/{suite}/main/binary-amd64/Packages").read_text()
    versions = {}
    for stanza in index.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        if "Package" in fields:
            versions[fields["Package"]] = fields["Version"]
    return versions


def test_the_repository_has_each_stand_in_at_its_pinned_version(repo):
    versions = suite_versions(repo, package_repo.SUITE)
    debian = suite_versions(repo, package_repo.DISTRO_SUITE)
    kube = package_repo.kubectl_version(package_repo.kubectl_binary())
    assert versions["kubectl"] == versions["kubeadm"] == versions["kubelet"] == f"{kube}-1.1"
    # NVIDIA's debian12 repository's names and versions: driver and fabric manager at one version.
    assert versions["cuda-drivers-580"] == versions["nvidia-fabricmanager-580"] == "580.95.05-1"
    assert versions["cuda-drivers-fabricmanager-580"] == "580.95.05-1"
    assert versions["nvidia-container-toolkit"] == versions["nvidia-container-toolkit-base"] == "1.17.8-1"
    assert versions["libnvidia-container-tools"] == versions["libnvidia-container1"] == "1.17.8-1"
    in_image = package_repo.image_packages(IMAGE)
    for name in package_repo.DEBIAN_PACKAGES:  # in the nodes' Debian suite (or the image), not the roles' suite
        assert (name in debian or name in in_image) and name not in versions, f"{name} (DEBIAN_PACKAGES) is missing"
    assert package_repo.driver_package(repo.parent).name == "cuda-drivers-580_580.95.05-1_amd64.deb"


def test_a_changed_source_rebuilds_that_stand_in_and_downloads_nothing(repo, tmp_path, monkeypatch, request):
    sources = tmp_path / "packages"
    shutil.copytree(PACKAGES, sources, symlinks=True)
    monkeypatch.setattr(package_repo, "PACKAGES_DIR", sources)
    root = tmp_path / "repo"
    (root / "debs").mkdir(parents=True)
    for deb in (repo.parent / "debs").glob("*.deb"):
        os.link(deb, root / "debs" / deb.name)
    shutil.copytree(repo.parent / "gnupg", root / "gnupg", ignore=shutil.ignore_patterns("S.*"))
    request.addfinalizer(lambda: kill_agent(root / "gnupg"))

    def no_download(names, into):
        raise AssertionError(f"downloaded {names} again")
    monkeypatch.setattr(package_repo, "download_debian", no_download)
    package_repo.build_repo(root, IMAGE)
    debs = {deb.name: deb.stat().st_ino for deb in (root / "debs").glob("*.deb")}
    kubelet = next(name for name in debs if name.startswith("kubelet_"))

    started = time.monotonic()
    package_repo.build_repo(root, IMAGE)
    cached = time.monotonic() - started
    assert {deb.name: deb.stat().st_ino for deb in (root / "debs").glob("*.deb")} == debs, "nothing changed"

    script = sources / "kubelet/usr/bin/kubelet"
    script.write_text(script.read_text() + "# changed\n")
    package_repo.build_repo(root, IMAGE)
    after = {deb.name: deb.stat().st_ino for deb in (root / "debs").glob("*.deb")}
    assert after[kubelet] != debs[kubelet], "the changed stand-in was rebuilt"
    assert {k: v for k, v in after.items() if k != kubelet} == {k: v for k, v in debs.items() if k != kubelet}
    print(f"cached build_repo: {cached:.1f}s")


# --------------------------------------------------------------------------- kubeadm and kubelet

def test_kubeadm_version_prints_the_pinned_version_in_the_real_format(node):
    kube = package_repo.kubectl_info(package_repo.kubectl_binary())
    major, minor = kube["gitVersion"].lstrip("v").split(".")[:2]
    out = node.run("kubeadm", "version").stdout.strip()
    assert out == (f'kubeadm version: &version.Info{{Major:"{major}", Minor:"{minor}", EmulationMajor:"", '
                   'EmulationMinor:"", MinCompatibilityMajor:"", MinCompatibilityMinor:"", '
                   f'GitVersion:"{kube["gitVersion"]}", GitCommit:"{kube["gitCommit"]}", GitTreeState:"clean", '
                   f'BuildDate:"{kube["buildDate"]}", GoVersion:"{kube["goVersion"]}", Compiler:"gc", '
                   'Platform:"linux/amd64"}')
    assert node.run("kubeadm", "version", "-o", "short").stdout == f"{kube['gitVersion']}\n"
    assert node.run("kubelet", "--version").stdout == f"Kubernetes {kube['gitVersion']}\n"


def test_kubeadm_config_images_list_prints_the_release_s_images_with_its_pause(node):
    version = package_repo.kubectl_info(package_repo.kubectl_binary())["gitVersion"]
    minor = int(version.split(".")[1])
    listed = node.run("kubeadm", "config", "images", "list", "--kubernetes-version", version)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        f"registry.k8s.io/kube-apiserver:{version}", f"registry.k8s.io/kube-controller-manager:{version}",
        f"registry.k8s.io/kube-scheduler:{version}", f"registry.k8s.io/kube-proxy:{version}",
        "registry.k8s.io/coredns/coredns:v1.13.1", "registry.k8s.io/pause:3.10.2", "registry.k8s.io/etcd:3.6.6-0"]
    mirrored = node.run("kubeadm", "config", "images", "list", f"--kubernetes-version={version}",
                        "--image-repository", "mirror.gpuaas.invalid/k8s")
    assert "mirror.gpuaas.invalid/k8s/pause:3.10.2\n" in mirrored.stdout
    # Offline, without a version: the warning about stable-1, then its own version.
    offline = node.run("kubeadm", "config", "images", "list")
    assert offline.returncode == 0
    assert f"falling back to the local client version: {version}" in offline.stderr
    assert offline.stdout == listed.stdout
    too_old = node.run("kubeadm", "config", "images", "list", "--kubernetes-version", f"v1.{minor - 2}.0")
    assert too_old.returncode == 1
    assert f"control plane version >= 1.{minor - 1}.0" in too_old.stderr
    assert node.run("kubeadm", "config", "print", "init-defaults").returncode == 2, "not modelled: refused"


def test_docker_s_packages_conflict_with_debian_s_containerd_as_the_real_ones_do(node):
    """containerd.io Provides, Conflicts with and Replaces containerd and runc; docker-ce needs it."""
    docker = node.run("apt-get", "install", "--simulate", "docker-ce")
    assert docker.returncode == 0, docker.stderr
    lines = docker.stdout.splitlines()
    assert any(line.startswith("Remv containerd ") for line in lines), docker.stdout
    assert any(line.startswith("Remv runc ") for line in lines), docker.stdout
    assert any(line.startswith("Inst containerd.io ") for line in lines), docker.stdout
    assert any(line.startswith("Inst docker-ce ") for line in lines), docker.stdout
    # Its config.toml (version 1: plugins named by ID) disables CRI, and containerd reads it so.
    shipped = PACKAGES / "containerd.io/etc/containerd/config.toml"
    node.path("tmp/containerd.io").mkdir(parents=True, exist_ok=True)
    shutil.copy2(shipped, node.path("tmp/containerd.io/config.toml"))
    dump = node.run("containerd", "--config", "/tmp/containerd.io/config.toml", "config", "dump")
    assert dump.returncode == 0, dump.stderr
    assert 'disabled_plugins = ["cri"]' in dump.stdout


def test_kubelet_before_kubeadm_exits_1_on_the_missing_config(node):
    node.start_cri()
    kubelet = node.start_kubelet(*node.kubelet_args())
    assert kubelet.wait(10) == 1
    err = kubelet.stderr.read()
    assert ('"command failed" err="failed to load kubelet config file, path: /var/lib/kubelet/config.yaml, '
            'error: failed to load Kubelet config file /var/lib/kubelet/config.yaml, error failed to read kubelet '
            'config file \\"/var/lib/kubelet/config.yaml\\", error: open /var/lib/kubelet/config.yaml: no such file '
            'or directory"') in err
    assert not node.path(ETCD).exists(), "no API server, nothing registered"


def write_kubelet_files(node: Node, config_extra: str = "") -> None:
    node.path("var/lib/kubelet").mkdir(parents=True, exist_ok=True)
    node.path("var/lib/kubelet/config.yaml").write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\n" + config_extra)
    node.path("etc/kubernetes").mkdir(parents=True, exist_ok=True)
    node.path("etc/kubernetes/kubelet.conf").write_text('clusters:\n- cluster: {server: "https://10.0.0.1:6443"}\n')


def test_kubelet_refuses_swap_unless_its_config_allows_it(node):
    write_kubelet_files(node)
    node.path("tmp/swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n/swap.img\tfile\t1048572\t0\t-2\n")
    kubelet = node.start_kubelet(*KUBELET_UNIT_ARGS)
    assert kubelet.wait(10) == 1
    assert ('err="failed to run Kubelet: running with swap on is not supported, please disable swap or set '
            '--fail-swap-on flag to false"') in kubelet.stderr.read()
    # failSwapOn: false lets it past the swap check (here it then stops at the missing CRI socket).
    write_kubelet_files(node, "failSwapOn: false\n")
    kubelet = node.start_kubelet(*KUBELET_UNIT_ARGS)
    assert kubelet.wait(10) == 1
    assert "swap" not in kubelet.stderr.read().split("command failed")[-1]


def test_kubelet_without_the_containerd_socket_exits_1(node):
    write_kubelet_files(node)
    kubelet = node.start_kubelet(*KUBELET_UNIT_ARGS)
    assert kubelet.wait(10) == 1
    assert ('validate CRI v1 runtime API for endpoint \\"unix:///run/containerd/containerd.sock\\": rpc error: '
            'code = Unavailable desc = connection error: desc = \\"transport: Error while dialing: dial unix '
            '/run/containerd/containerd.sock: connect: no such file or directory') in kubelet.stderr.read()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stored(node: Node, resource: str, name: str, namespace: str = "_cluster", group: str = "core") -> dict | None:
    """An object of the fake API server's store (etcd's data directory, kubeadm's default)."""
    path = node.path(f"{ETCD}/{group}/{resource}/{namespace}/{name}.json")
    return json.loads(path.read_text()) if path.exists() else None


def ready(node_object: dict | None) -> dict:
    conditions = (node_object or {}).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Ready"), {})


def kubectl(node: Node, *args: str) -> subprocess.CompletedProcess:
    """The real kubectl, on this host, with the node's admin kubeconfig (the server is on loopback)."""
    return subprocess.run([str(package_repo.kubectl_binary()), f"--kubeconfig={node.path('etc/kubernetes/admin.conf')}",
                           f"--cache-dir={node.path('tmp/kubectl-cache')}", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def admin_conf_with_certificate(node: Node, days: str) -> Path:
    """admin.conf with a new client certificate for kubernetes-admin, signed by the cluster CA and
    valid for DAYS (-1: it expired yesterday)."""
    pki, work = node.path("etc/kubernetes/pki"), node.path("tmp/admin-cert")
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(work / "a.key"), "-out",
                    str(work / "a.csr"), "-subj", "/O=kubeadm:cluster-admins/CN=kubernetes-admin"],
                   capture_output=True, check=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(work / "a.csr"), "-CA", str(pki / "ca.crt"), "-CAkey",
                    str(pki / "ca.key"), "-CAcreateserial", "-days", days, "-out", str(work / "a.crt")],
                   capture_output=True, check=True)
    conf = node.path("etc/kubernetes/admin.conf").read_text()
    for key, name in (("client-certificate-data", "a.crt"), ("client-key-data", "a.key")):
        encoded = base64.b64encode((work / name).read_bytes()).decode()
        conf = re.sub(rf"{key}: \S+", f"{key}: {encoded}", conf)
    (work / f"admin-{days}.conf").write_text(conf)
    return work / f"admin-{days}.conf"


def init_control_plane(node: Node, port: int, *extra: str,
                       heartbeat: str = "0.3") -> tuple[subprocess.CompletedProcess, subprocess.Popen]:
    """kubeadm init in the chroot, with the kubelet that systemd would start (kubelet-start phase)
    started by the test: the kubelet runs the API server's static Pod, init waits for it."""
    node.start_cri()
    init = subprocess.Popen(["chroot", str(node.root), "kubeadm", "init", "--apiserver-advertise-address=127.0.0.1",
                             f"--apiserver-bind-port={port}", "--node-name=cp-1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "FAKE_KUBEADM_CONTROL_PLANE_TIMEOUT": "30"})
    node.processes.append(init)
    assert wait_for(lambda: node.path("var/lib/kubelet/kubeadm-flags.env").exists(), timeout=30, what="kubelet-start")
    kubelet = node.start_kubelet(*node.kubelet_args(), heartbeat=heartbeat)
    out, err = init.communicate(timeout=60)
    return subprocess.CompletedProcess(init.args, init.returncode, out, err), kubelet


def test_init_runs_the_api_server_as_a_static_pod_the_kubelet_registers_and_reset_undoes_it(node):
    port = free_port()
    init, kubelet = init_control_plane(node, port)
    assert init.returncode == 0, init.stdout + init.stderr
    assert "[kubelet-start] Writing kubelet configuration to file \"/var/lib/kubelet/config.yaml\"" in init.stdout
    # No systemd in a chroot: kubeadm warns and goes on, as the real one does.
    assert "[kubelet-start] WARNING: unable to start the kubelet service" in init.stdout
    assert "[control-plane-check] kube-apiserver is healthy" in init.stdout
    assert "cgroupDriver: systemd" in node.path("var/lib/kubelet/config.yaml").read_text()
    assert node.path("var/lib/kubelet/kubeadm-flags.env").read_text() == (
        'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock '
        '--hostname-override=cp-1"\n')

    # The kubelet registered the Node; kubeadm marked it; NotReady until a CNI config exists.
    cp = stored(node, "nodes", "cp-1")
    assert cp["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == ""
    assert cp["spec"]["taints"] == [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    assert wait_for(lambda: ready(stored(node, "nodes", "cp-1")).get("reason") == "KubeletNotReady")
    assert "cni plugin not initialized" in ready(stored(node, "nodes", "cp-1"))["message"]

    def lease() -> dict:
        return (stored(node, "leases", "cp-1", "kube-node-lease", "coordination.k8s.io") or {}).get("spec", {})
    first = wait_for(lambda: lease().get("renewTime"))
    assert wait_for(lambda: lease().get("renewTime") != first, timeout=3, what="the lease to be renewed")
    node.path("etc/cni/net.d").mkdir(parents=True, exist_ok=True)
    node.path("etc/cni/net.d/10-flannel.conflist").write_text("{}\n")
    assert wait_for(lambda: ready(stored(node, "nodes", "cp-1")).get("status") == "True", timeout=5)

    # The real kubectl gets in with admin.conf's client certificate.
    looked_up = kubectl(node, "get", "node", "cp-1", "-o", "name")
    assert looked_up.stdout == "node/cp-1\n", looked_up.stderr
    # An expired client certificate from the cluster's own CA gets 401, as kube-apiserver's x509
    # authenticator answers (not a failed handshake); one from the same CA that is valid gets in.
    # kubectl's last line is its verdict; the lines before are its discovery client's retries.
    unauthorized = "error: You must be logged in to the server (the server has asked for the client to provide credentials)"
    for days, answer in (("-1", unauthorized), ("1", "node/cp-1")):
        conf = admin_conf_with_certificate(node, days)
        looked_up = subprocess.run([str(package_repo.kubectl_binary()), f"--kubeconfig={conf}", "get", "node", "cp-1",
                                    "-o", "name"], capture_output=True, text=True, timeout=60, check=False)
        assert (looked_up.stdout + looked_up.stderr).splitlines()[-1] == answer, days

    # The join line is the real one: single spaces, the CA's public-key pin, a space at the end;
    # its token is a bootstrap-token Secret the server accepts.
    line = node.run("kubeadm", "token", "create", "--print-join-command").stdout
    ca = node.path("etc/kubernetes/pki/ca.crt")
    spki = subprocess.run(["openssl", "x509", "-pubkey", "-noout", "-in", str(ca)], capture_output=True, check=True)
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=spki.stdout, capture_output=True,
                         check=True)
    pin = f"sha256:{hashlib.sha256(der.stdout).hexdigest()}"
    token = line.split("--token ")[1].split()[0]
    assert line == f"kubeadm join 127.0.0.1:{port} --token {token} --discovery-token-ca-cert-hash {pin} \n"
    assert stored(node, "secrets", f"bootstrap-token-{token.split('.')[0]}", "kube-system")["type"] == (
        "bootstrap.kubernetes.io/token")

    # A second init finds the static Pod manifests the first one wrote, as after a failed init.
    again = node.run("kubeadm", "init", "--apiserver-advertise-address=127.0.0.1", f"--apiserver-bind-port={port}",
                     "--node-name=cp-1")
    assert again.returncode == 1
    assert ("[preflight] Some fatal errors occurred:\n\t[ERROR FileAvailable--etc-kubernetes-manifests-kube-apiserver.yaml]: "
            "/etc/kubernetes/manifests/kube-apiserver.yaml already exists\n") in again.stderr, again.stderr
    assert f"\t[ERROR Port-{port}]: Port {port} is in use\n" in again.stderr
    assert again.stderr.endswith("error: error execution phase preflight: preflight checks failed\n"
                                 "To see the stack trace of this error execute with --v=5 or higher\n")
    mixed = node.run("kubeadm", "init", "--config=/etc/kubernetes/x.yaml", "--pod-network-cidr=10.244.0.0/16")
    assert mixed.returncode == 1 and "can not mix '--config' with arguments [pod-network-cidr]" in mixed.stderr

    kubelet.terminate()
    kubelet.wait(5)
    reset = node.run("kubeadm", "reset", "--force")
    assert reset.returncode == 0, reset.stderr
    assert "[reset] Stopping the kubelet service" in reset.stdout
    assert ("The reset process does not perform cleanup of CNI plugin configuration,\n"
            "network filtering rules and kubeconfig files.\n") in reset.stdout
    for gone in ("var/lib/kubelet/config.yaml", "var/lib/kubelet/kubeadm-flags.env", "etc/kubernetes/kubelet.conf",
                 "etc/kubernetes/admin.conf", "etc/kubernetes/pki/ca.crt", "etc/kubernetes/manifests/etcd.yaml",
                 f"{API}/pki"):
        assert not node.path(gone).exists(), gone
    assert list(node.path(ETCD).iterdir()) == [], "reset empties etcd's data directory"
    assert node.path("etc/cni/net.d/10-flannel.conflist").exists(), "reset leaves the CNI configuration"
    assert wait_for(lambda: subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True,
                                           check=False).returncode != 0, what="the API server's Pod to be removed")
    # Without --force it asks, and an answer other than y stops it.
    asked = node.run("kubeadm", "reset", stdin="n\n")
    assert asked.returncode == 1 and "won't proceed" in asked.stderr


def test_join_checks_the_pin_and_the_token_and_its_kubelet_registers_the_worker(node):
    port = free_port()
    init, _kubelet = init_control_plane(node, port)
    assert init.returncode == 0, init.stdout + init.stderr
    line = node.run("kubeadm", "token", "create", "--print-join-command").stdout.split()
    # The chroot is one node: take the control plane's kubelet files aside, as on another host.
    aside = node.path("root/cp-1")
    aside.mkdir(exist_ok=True)
    for name in ("etc/kubernetes/kubelet.conf", "etc/kubernetes/pki/ca.crt"):
        node.path(name).rename(aside / Path(name).name)
    endpoint, token, pin = line[2], line[4], line[6]

    unpinned = node.run("kubeadm", "join", endpoint, "--token", token)
    assert unpinned.returncode == 1 and "using token-based discovery without caCertHashes can be unsafe" in unpinned.stderr
    wrong_pin = node.run("kubeadm", "join", endpoint, "--token", token, "--discovery-token-ca-cert-hash",
                         "sha256:" + "0" * 64)
    assert wrong_pin.returncode == 1 and "cluster CA found in cluster-info ConfigMap is invalid" in wrong_pin.stderr
    bad = node.run("kubeadm", "join", endpoint, "--token", token.split(".")[0] + ".ffffffffffffffff",
                   "--discovery-token-ca-cert-hash", pin)
    assert bad.returncode == 1 and "cannot get the kubelet configuration: Unauthorized" in bad.stderr, bad.stderr
    upper = node.run("kubeadm", "join", endpoint, "--token", token, "--discovery-token-ca-cert-hash", pin,
                     "--node-name", "W1")
    assert upper.returncode == 1 and "a lowercase RFC 1123 subdomain" in upper.stderr
    join = node.run("kubeadm", "join", endpoint, "--token", token, "--discovery-token-ca-cert-hash", pin,
                    "--node-name", "w1")
    assert join.returncode == 0, join.stderr
    assert "This node has joined the cluster" in join.stdout
    assert node.path("etc/kubernetes/pki/ca.crt").read_bytes() == (aside / "ca.crt").read_bytes()
    kubelet = node.start_kubelet(*node.kubelet_args())
    assert wait_for(lambda: stored(node, "nodes", "w1"), what=lambda: f"the Node w1; the kubelet's stderr: {kubelet.stderr}")
    assert "node-role.kubernetes.io/control-plane" not in stored(node, "nodes", "w1")["metadata"]["labels"]

    again = node.run("kubeadm", "join", endpoint, "--token", token, "--discovery-token-ca-cert-hash", pin)
    assert again.returncode == 1
    assert ("\t[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: /etc/kubernetes/kubelet.conf already exists\n"
            "\t[ERROR FileAvailable--etc-kubernetes-pki-ca.crt]: /etc/kubernetes/pki/ca.crt already exists\n") in again.stderr
    # A join that stopped half-way leaves the CA: refused until a reset.
    node.path("etc/kubernetes/kubelet.conf").unlink()
    half = node.run("kubeadm", "join", endpoint, "--token", token, "--discovery-token-ca-cert-hash", pin)
    assert half.returncode == 1 and "[ERROR FileAvailable--etc-kubernetes-pki-ca.crt]" in half.stderr
    assert "kubelet.conf" not in half.stderr


def test_init_from_a_config_file_takes_its_node_name_and_kubelet_configuration(node):
    # The shape cluster_controller's kubeadm-config.yaml.j2 writes: three documents.
    node.start_cri()
    port = free_port()
    node.path("etc/gpuaas").mkdir(parents=True, exist_ok=True)
    node.path("etc/gpuaas/kubeadm-config.yaml").write_text(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n"
        f"  advertiseAddress: 127.0.0.1\n  bindPort: {port}\nnodeRegistration:\n  name: acc-cp\n---\n"
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n  podSubnet: 10.244.0.0/16\n"
        "---\napiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: cgroupfs\n"
        "failSwapOn: false\n")
    # No kubelet runs here, so init stops at wait-control-plane, after kubelet-start.
    init = node.run("kubeadm", "init", "--config=/etc/gpuaas/kubeadm-config.yaml",
                    env={"FAKE_KUBEADM_CONTROL_PLANE_TIMEOUT": "1"})
    assert init.returncode == 1
    assert "error execution phase wait-control-plane" in init.stderr
    config = node.path("var/lib/kubelet/config.yaml").read_text()
    assert "\ncgroupDriver: cgroupfs\n" in config and "\nfailSwapOn: false\n" in config
    assert "--hostname-override=acc-cp" in node.path("var/lib/kubelet/kubeadm-flags.env").read_text()
    assert f"server: https://127.0.0.1:{port}" in node.path("etc/kubernetes/admin.conf").read_text()
    # What a failed init leaves of etcd: the data directory the etcd phase made, 0700, and empty,
    # since no etcd (here: no API server) ever ran to fill it.
    assert oct(node.path(ETCD).stat().st_mode & 0o777) == "0o700" and list(node.path(ETCD).iterdir()) == []
    # No kubernetesVersion: kubeadm looks the default label up online, which fails offline, and
    # falls back to its own version.
    assert fetches(node) == ["https://dl.k8s.io/release/stable-1.txt"]
    assert "falling back to the local client version: v" in init.stderr


def fetches(node: Node) -> list[str]:
    """The URLs kubeadm tried to fetch (calls.log)."""
    log = node.path("var/log/fake-k8s/calls.log")
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[-1] for line in lines if line.split()[1:2] == ["kubeadm-fetch"]]


def write_init_config(node: Node, cluster: str) -> None:
    node.path("etc/gpuaas").mkdir(parents=True, exist_ok=True)
    node.path("etc/gpuaas/kubeadm-config.yaml").write_text(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n"
        f"  advertiseAddress: 127.0.0.1\n  bindPort: {free_port()}\nnodeRegistration:\n  name: acc-cp\n---\n"
        f"apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n{cluster}")


def test_init_deploys_the_pinned_version_only_within_kubeadm_s_range(node):
    own = node.run("kubeadm", "version", "-o", "short").stdout.strip()
    major, minor, patch = (int(part) for part in own.lstrip("v").split("."))
    too_new = (f"the specified version to deploy (v{major}.{minor + 1}.0) is at least one minor release higher "
               f"than the kubeadm minor release ({minor + 1} > {minor})")
    too_old = (f"this version of kubeadm only supports deploying clusters with the control plane version >= "
               f"{major}.{minor - 1}.0. Current version: v{major}.{minor - 2}.9")
    refusals = {
        f"v{major}.{minor + 1}.0": too_new,
        f"v{major}.{minor - 2}.9": too_old,
        f"{major}.{minor}": f"couldn't parse kubernetes version \"{major}.{minor}\"",
    }
    for version, refusal in refusals.items():
        write_init_config(node, f"kubernetesVersion: {version}\n")
        init = node.run("kubeadm", "init", "--config=/etc/gpuaas/kubeadm-config.yaml")
        assert init.returncode == 1 and refusal in init.stderr, (version, init.stderr)
        assert not node.path("etc/kubernetes/admin.conf").exists(), "refused before every phase"
    node.start_cri()
    for version in (own, f"{major}.{minor - 1}.{patch}"):
        write_init_config(node, f"kubernetesVersion: {version}\n")
        init = node.run("kubeadm", "init", "--config=/etc/gpuaas/kubeadm-config.yaml",
                        env={"FAKE_KUBEADM_CONTROL_PLANE_TIMEOUT": "1"})
        assert f"[init] Using Kubernetes version: v{version.lstrip('v')}\n" in init.stdout, init.stderr
        assert "kube-apiserver:v" + version.lstrip("v") in node.path("etc/kubernetes/manifests/kube-apiserver.yaml").read_text()
        node.run("kubeadm", "reset", "--force")
    assert fetches(node) == [], "a pinned version is looked up nowhere"


def test_reset_empties_the_data_directory_the_etcd_manifest_names_and_no_other(node):
    node.start_cri()
    write_init_config(node, "etcd:\n  local:\n    dataDir: /var/lib/custom-etcd\n")
    init = node.run("kubeadm", "init", "--config=/etc/gpuaas/kubeadm-config.yaml",
                    env={"FAKE_KUBEADM_CONTROL_PLANE_TIMEOUT": "1"})
    assert init.returncode == 1 and "wait-control-plane" in init.stderr
    assert "      path: /var/lib/custom-etcd\n" in node.path("etc/kubernetes/manifests/etcd.yaml").read_text()
    node.path("var/lib/custom-etcd/member").mkdir()
    node.path(ETCD).mkdir(parents=True, exist_ok=True)
    node.path(f"{ETCD}/other").write_text("not this cluster's\n")
    reset = node.run("kubeadm", "reset", "--force")
    assert "[reset] Deleting contents of the etcd data directory: [/var/lib/custom-etcd]" in reset.stdout
    assert list(node.path("var/lib/custom-etcd").iterdir()) == []
    assert node.path(f"{ETCD}/other").exists()


def test_the_kubelet_runs_a_daemonset_s_cni_copy_and_turns_ready(node):
    port = free_port()
    # A heartbeat (nodeStatusUpdateFrequency) far longer than the test: the DaemonSet's Pod
    # starts within seconds all the same, and a kubelet in its first 120 s reports Ready the
    # moment it is (the real one's fast status update), not at its next heartbeat.
    init, kubelet = init_control_plane(node, port, heartbeat="600")
    assert init.returncode == 0, init.stdout + init.stderr
    assert wait_for(lambda: ready(stored(node, "nodes", "cp-1")).get("reason") == "KubeletNotReady")
    applied = kubectl(node, "apply", "--server-side", "-f", str(CHECKOUT / "tests/fleet/cni/kube-flannel.yml"))
    assert applied.returncode == 0, applied.stderr
    assert "daemonset.apps/kube-flannel-ds serverside-applied" in applied.stdout
    conflist = node.path("etc/cni/net.d/10-flannel.conflist")
    # The taint is tolerated (operator Exists, NoSchedule): its Pod comes to cp-1 as well.
    assert wait_for(conflist.exists, timeout=5, what="the install-cni init container's copy")
    assert json.loads(conflist.read_text())["plugins"][0]["type"] == "flannel"
    assert not node.path("opt/cni/bin/flannel").exists(), "a copy out of the image is not modelled"
    assert wait_for(lambda: ready(stored(node, "nodes", "cp-1")).get("status") == "True", timeout=5)
    pods = kubectl(node, "get", "pods", "-n", "kube-flannel", "-o", "jsonpath={.items[*].spec.nodeName}")
    assert pods.stdout == "cp-1", pods.stderr
    # Deleting the Node takes its Pods (the pod GC controller's part).
    assert kubectl(node, "delete", "node", "cp-1").returncode == 0
    assert kubectl(node, "get", "pods", "-n", "kube-flannel", "-o", "name").stdout == ""
    kubelet.terminate()
    assert "Fast updating node status as it just became ready" in kubelet.communicate(timeout=10)[1]


def test_init_and_join_refuse_a_node_whose_container_runtime_does_not_answer(node):
    init = node.run("kubeadm", "init", "--node-name=cp-1")
    assert init.returncode == 1
    assert ("\t[ERROR CRI]: could not connect to the container runtime: rpc error: code = Unavailable desc = "
            "connection error: desc = \"transport: Error while dialing: dial unix /var/run/containerd/containerd.sock: "
            "connect: no such file or directory\"\n") in init.stderr
    assert not node.path("etc/kubernetes/admin.conf").exists(), "preflight comes before every phase"


# --------------------------------------------------------------------------- NVIDIA

def test_nvidia_smi_answers_9_until_the_driver_is_loaded(node):
    node.profile("NVIDIA H100 80GB HBM3", 8)
    smi = node.run("nvidia-smi")
    assert smi.returncode == 9
    assert smi.stdout.startswith("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                                 "Make sure that the latest NVIDIA driver is installed and running.")
    nvml = node.run("python3", "-c", "import pynvml\ntry:\n pynvml.nvmlInit()\nexcept pynvml.NVMLError as e:\n"
                    " print(e.value)")
    assert nvml.stdout.strip() == "9", nvml.stderr  # NVML_ERROR_DRIVER_NOT_LOADED
    node.load_driver()
    smi = node.run("nvidia-smi")
    assert smi.returncode == 0 and "Driver Version: 580.95.05" in smi.stdout and "CUDA Version: 13.0" in smi.stdout


def test_the_driver_ships_libcuda_and_the_test_workload_linked_against_it(node):
    """tests/fleet/fake_cuda: libcuda.so.1 where the real driver puts it, found through ldconfig's
    cache as a real CUDA program finds it; its GPUs' state under /run/fake-nvidia/gpus."""
    node.profile("NVIDIA H100 80GB HBM3", 2)
    before = node.run("fake-gpu-workload", "--seconds", "0.1")
    assert (before.returncode, before.stderr) == (1, "CUDA_ERROR_NO_DEVICE\n")  # the driver is not loaded yet
    node.load_driver()
    assert node.run("ldconfig").returncode == 0
    done = node.run("fake-gpu-workload", "--memory-mib", "100", "--kernel-ms", "10", "--seconds", "0.5", "--device", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["device"] == "GPU-00000001-0000-0000-0000-000000000000" and report["memory_mib"] == 100
    assert node.path("run/fake-nvidia/gpus/GPU-00000001-0000-0000-0000-000000000000/state").exists()
    assert node.path("usr/bin/nvidia-cuda-mps-server").exists()


def test_the_driver_version_is_the_installed_package_s(node):
    node.profile("NVIDIA A100-SXM4-40GB", 4, driver="535.161.08")
    node.load_driver()
    query = node.run("nvidia-smi", "--query-gpu=index,driver_version,persistence_mode", "--format=csv,noheader")
    assert query.stdout.splitlines() == [f"{i}, 580.95.05, Disabled" for i in range(4)]
    node.path("usr/lib/fake-nvidia/version").unlink()
    query = node.run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0")
    assert query.stdout == "535.161.08\n", "without the package's version file, the profile's"
    bad = node.run("nvidia-smi", "--query-gpu=index,nonsense", "--format=csv")
    assert bad.returncode == 2 and 'Field "nonsense" is not a valid field to query.' in bad.stdout


def test_a_driver_installed_over_the_loaded_one_answers_only_after_a_reboot(node):
    """The boot unit may write the version it loaded into the marker; until the next boot an
    install of another version gives "Driver/library version mismatch"."""
    node.profile("NVIDIA H100 80GB HBM3", 8)
    node.pci(nvswitches=4)
    node.load_driver()
    node.path("run/fake-nvidia/loaded").write_text("535.161.08\n")  # loaded at boot
    smi = node.run("nvidia-smi")
    assert smi.returncode == 18 and smi.stdout.strip() == "Failed to initialize NVML: Driver/library version mismatch"
    fm = node.run("nv-fabricmanager")
    assert fm.returncode == 1 and "don't match with driver version 535.161.08" in fm.stderr
    node.path("run/fake-nvidia/loaded").write_text("580.95.05\n")  # after the reboot
    assert node.run("nvidia-smi", "-L").returncode == 0


def test_nvidia_smi_pm_sets_legacy_persistence_without_the_daemon(node):
    node.profile("NVIDIA L40S", 2)
    node.load_driver()
    on = node.run("nvidia-smi", "-pm", "1")
    assert on.returncode == 0
    assert on.stdout.splitlines() == ["Enabled Legacy persistence mode for GPU 00000000:18:00.0.",
                                      "Enabled Legacy persistence mode for GPU 00000000:28:00.0.", "All done."]
    assert node.run("nvidia-smi", "-pm", "1", "-i", "1").stdout.splitlines() == [
        "Persistence mode is already Enabled for GPU 00000000:28:00.0.", "All done."]
    query = node.run("nvidia-smi", "--query-gpu=index,persistence_mode", "--format=csv,noheader")
    assert query.stdout.splitlines() == ["0, Enabled", "1, Enabled"]
    nvml = node.run("python3", "-c", "import pynvml; pynvml.nvmlInit(); "
                    "print(pynvml.nvmlDeviceGetPersistenceMode(pynvml.nvmlDeviceGetHandleByIndex(1)))")
    assert nvml.stdout == "1\n", nvml.stderr
    # The state lives under /run/fake-nvidia: a reboot (a fresh /run) forgets it.
    assert node.path("run/fake-nvidia/persistence-1").exists()


def test_persistenced_keeps_persistence_on_while_it_runs_and_off_when_it_stops(node):
    node.profile("NVIDIA H100 80GB HBM3", 8)
    assert node.run("nvidia-persistenced", "--user", "root").returncode == 1, "no driver loaded"
    node.load_driver()
    # An unknown user ends it while it reads its options (options.c), as Ubuntu's user does on Debian.
    for user in ("no-such-user", "nvidia-persistenced"):
        unknown = node.run("nvidia-persistenced", "--user", user, "--persistence-mode")
        assert unknown.returncode == 1
        assert unknown.stderr == f"\nERROR: Failed to find user ID of user '{user}': Success\n\n"
    start = node.run("nvidia-persistenced", "--user", "root", "--persistence-mode", "--verbose")
    assert start.returncode == 0, start.stderr  # it forked: Type=forking
    pid = int(node.path("run/nvidia-persistenced/nvidia-persistenced.pid").read_text())
    query = node.run("nvidia-smi", "--query-gpu=persistence_mode", "--format=csv,noheader")
    assert query.stdout.splitlines() == ["Enabled"] * 8
    assert node.run("nvidia-smi", "-pm", "0", "-i", "3").stdout.startswith(
        "Disabled persistence mode for GPU 00000000:48:00.0."), "through the daemon: no 'Legacy'"
    os.kill(pid, 15)
    assert wait_for(lambda: not node.path("run/nvidia-persistenced/nvidia-persistenced.pid").exists())
    query = node.run("nvidia-smi", "--query-gpu=persistence_mode", "--format=csv,noheader")
    assert query.stdout.splitlines() == ["Disabled"] * 8
    # The packaged unit runs it as Debian's nvpd with --no-persistence-mode: running, but persistence off.
    unit = node.path("lib/systemd/system/nvidia-persistenced.service").read_text()
    assert "ExecStart=/usr/bin/nvidia-persistenced --user nvpd --no-persistence-mode --verbose" in unit
    assert node.run("nvidia-persistenced", "--user", "root", "--no-persistence-mode").returncode == 0
    query = node.run("nvidia-smi", "--query-gpu=persistence_mode", "--format=csv,noheader")
    assert query.stdout.splitlines() == ["Disabled"] * 8


def test_fabric_manager_starts_only_with_its_own_driver_version_loaded_on_an_nvswitch_board(node):
    fm = ("nv-fabricmanager", "-c", "/usr/share/nvidia/nvswitch/fabricmanager.cfg")
    node.profile("NVIDIA H100 80GB HBM3", 8)
    node.pci(nvswitches=4)
    unloaded = node.run(*fm)
    assert unloaded.returncode == 1 and "NVIDIA driver is not loaded" in unloaded.stderr
    node.load_driver()
    node.path("usr/lib/fake-nvidia/version").write_text("580.82.07\n")
    mismatch = node.run(*fm)
    assert mismatch.returncode == 1
    assert mismatch.stderr.strip() == ("fabric manager NVIDIA GPU driver interface version 580.95.05 don't match with "
                                       "driver version 580.82.07. Please update with matching NVIDIA driver package.")
    node.path("usr/lib/fake-nvidia/version").write_text("580.95.05\n")
    started = node.run(*fm)
    assert started.returncode == 0, started.stderr
    assert node.path("run/nvidia-fabricmanager/nv-fabricmanager.pid").exists()
    node.stop()
    shutil.rmtree(node.path("sys/bus"))  # PCIe cards: no NVSwitch
    node.profile("NVIDIA L40S", 2)
    pcie = node.run(*fm)
    assert pcie.returncode == 1 and "[NV_WARN_NOTHING_TO_DO]" in pcie.stderr


def dump(node: Node, config: str) -> str:
    result = node.run("containerd", "--config", config, "config", "dump")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_nvidia_ctk_adds_the_nvidia_runtime_idempotently_and_containerd_accepts_it(node):
    node.path("etc/containerd").mkdir(parents=True)
    default = node.run("containerd", "config", "default").stdout
    node.path("etc/containerd/config.toml").write_text(default.replace("SystemdCgroup = false", "SystemdCgroup = true"))
    configure = ("nvidia-ctk", "runtime", "configure", "--runtime=containerd", "--set-as-default")
    first = node.run(*configure)
    assert first.returncode == 0, first.stderr
    assert 'msg="Wrote updated config to /etc/containerd/config.toml"' in first.stderr
    written = node.path("etc/containerd/config.toml").read_text()
    assert node.run(*configure).returncode == 0
    assert node.path("etc/containerd/config.toml").read_text() == written, "a second run changes nothing"

    effective = dump(node, "/etc/containerd/config.toml")
    section = effective.split('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia]')[1].split(
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]')[0]
    assert 'runtime_type = "io.containerd.runc.v2"' in section
    assert 'BinaryName = "/usr/bin/nvidia-container-runtime"' in section
    assert "SystemdCgroup = true" in section, "runc's options are copied"
    assert 'default_runtime_name = "nvidia"' in effective


def test_nvidia_ctk_on_a_missing_config_writes_a_version_2_one_containerd_loads(node):
    result = node.run("nvidia-ctk", "runtime", "configure", "--runtime=containerd", "--config=/tmp/ctk/config.toml")
    assert result.returncode == 0, result.stderr
    assert "could not infer options from runtimes [runc crun]; using defaults" in result.stderr
    text = node.path("tmp/ctk/config.toml").read_text()
    assert text.startswith("version = 2\n")
    effective = dump(node, "/tmp/ctk/config.toml")
    assert 'BinaryName = "/usr/bin/nvidia-container-runtime"' in effective
    assert 'default_runtime_name = "runc"' in effective, "not the default without --set-as-default"
    docker = node.run("nvidia-ctk", "runtime", "configure")
    assert docker.returncode == 1, "the real default runtime is docker, which the stand-in does not model"


def nvidia_ctk_at(node: Node, version: str) -> str:
    """The installed nvidia-ctk stand-in as it is built at another version (its @CTK_VERSION@)."""
    script = f"/tmp/nvidia-ctk-{version}"
    installed = node.path("usr/bin/nvidia-ctk").read_text()
    assert 'VERSION = "1.17.8"\n' in installed
    node.path(script).write_text(installed.replace('VERSION = "1.17.8"\n', f'VERSION = "{version}"\n'))
    node.path(script).chmod(0o755)
    return script


def write_default_config(node: Node) -> str:
    node.path("etc/containerd").mkdir(parents=True, exist_ok=True)
    default = node.run("containerd", "config", "default").stdout.replace("SystemdCgroup = false", "SystemdCgroup = true")
    node.path("etc/containerd/config.toml").write_text(default)
    return default


@pytest.mark.parametrize("version,directory", [("1.18.0", "config.d"), ("1.18.1", "conf.d")])
def test_nvidia_ctk_1_18_writes_a_drop_in_whose_cri_table_shadows_the_main_file_s_in_containerd_1_6(node, version,
                                                                                                    directory):
    write_default_config(node)
    configure = node.run(nvidia_ctk_at(node, version), "runtime", "configure", "--runtime=containerd")
    assert configure.returncode == 0, configure.stderr
    drop_in = f"/etc/containerd/{directory}/99-nvidia.toml"
    assert f'msg="Wrote updated config to {drop_in}"' in configure.stderr
    main = tomllib.loads(node.path("etc/containerd/config.toml").read_text())
    assert main["imports"] == [f"/etc/containerd/{directory}/*.toml"]
    assert "nvidia" not in main["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    written = tomllib.loads(node.path(drop_in).read_text())
    assert written["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"] == "registry.k8s.io/pause:3.6", \
        "the drop-in starts as a copy of the whole CRI table"
    assert 'BinaryName = "/usr/bin/nvidia-container-runtime"' in dump(node, "/etc/containerd/config.toml")

    # The main file's sandbox_image changes; Debian's containerd 1.6.20 still reads the drop-in's.
    config = node.path("etc/containerd/config.toml")
    config.write_text(config.read_text().replace('sandbox_image = "registry.k8s.io/pause:3.6"',
                                                 'sandbox_image = "registry.k8s.io/pause:3.10.2"'))
    assert 'sandbox_image = "registry.k8s.io/pause:3.10.2"' in config.read_text()
    effective = dump(node, "/etc/containerd/config.toml")
    assert 'sandbox_image = "registry.k8s.io/pause:3.6"' in effective
    assert "pause:3.10.2" not in effective
    # Positive control: without the drop-in the main file's setting is the one containerd runs with.
    node.path(drop_in).unlink()
    assert 'sandbox_image = "registry.k8s.io/pause:3.10.2"' in dump(node, "/etc/containerd/config.toml")


def test_nvidia_ctk_1_18_with_an_empty_drop_in_path_writes_the_main_file_over_its_runtime(node):
    write_default_config(node)
    configure = node.run(nvidia_ctk_at(node, "1.18.1"), "runtime", "configure", "--runtime=containerd",
                         "--drop-in-config=")
    assert configure.returncode == 0, configure.stderr
    main = tomllib.loads(node.path("etc/containerd/config.toml").read_text())
    assert main["imports"] == ["/etc/containerd/*.toml"]
    assert "nvidia" not in main["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert "nvidia-container-runtime" not in dump(node, "/etc/containerd/config.toml")


def test_only_nvidia_ctk_1_18_knows_the_drop_in_flag(node):
    old = node.run("nvidia-ctk", "runtime", "configure", "--runtime=containerd", "--config=/tmp/c.toml",
                   "--drop-in-config=/tmp/d/99-nvidia.toml")
    assert old.returncode == 1 and 'msg="flag provided but not defined: -drop-in-config"' in old.stderr
    assert not node.path("tmp/c.toml").exists()
    assert "--drop-in-config" not in node.run("nvidia-ctk", "runtime", "configure", "--help").stdout
    assert "--drop-in-config" in node.run(nvidia_ctk_at(node, "1.18.1"), "runtime", "configure", "--help").stdout
    relative = node.run(nvidia_ctk_at(node, "1.18.1"), "runtime", "configure", "--runtime=containerd",
                        "--drop-in-config=d/99-nvidia.toml")
    assert relative.returncode == 1 and "is not an absolute path" in relative.stderr


# --------------------------------------------------------------------------- the kubelet's device manager

DEVICE_MANAGER_RUN = r"""
import importlib.machinery, importlib.util, json, os, sys, time
import grpc, google.protobuf
loader = importlib.machinery.SourceFileLoader("kubelet", "/usr/bin/kubelet")
kubelet = importlib.util.module_from_spec(importlib.util.spec_from_loader("kubelet", loader))
loader.exec_module(kubelet)
manager = kubelet.DeviceManager("/tmp/dm")
manager.start()
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not manager.healthy.get(sys.argv[1]):
    time.sleep(0.1)
pod = {"metadata": {"uid": "u-1", "namespace": "default", "name": "p"},
       "spec": {"containers": [{"name": "c", "resources": {"limits": {sys.argv[1]: "1"}}}]}}
manager.admit(pod, {"u-1"})
try:
    manager.admit(dict(pod, metadata={"uid": "u-2", "namespace": "default", "name": "q"}), {"u-1", "u-2"})
except kubelet.AdmissionError as error:
    refused = str(error)
print(json.dumps({"versions": [grpc.__version__, google.protobuf.__version__], "refused": refused,
                  "capacity": manager.capacity(collect=False)[:2]}))
manager.stop()
"""


def test_the_kubelet_s_device_manager_runs_on_debian_s_grpc_and_protobuf(node):
    """The installed kubelet's device manager, on the node's python3-grpcio and python3-protobuf,
    against a plugin served on this host with the agent's stubs (the socket is in the chroot)."""
    from device_plugin_double import RESOURCE, Plugin  # pylint: disable=import-outside-toplevel

    plugins = node.path("tmp/dm/device-plugins")
    shutil.rmtree(node.path("tmp/dm"), ignore_errors=True)
    manager = subprocess.Popen(["chroot", str(node.root), "python3", "-c", DEVICE_MANAGER_RUN, RESOURCE],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    node.processes.append(manager)
    assert wait_for(lambda: (plugins / "kubelet.sock").exists() or manager.poll() is not None, timeout=20)
    assert manager.poll() is None, manager.stderr.read()
    plugin = Plugin(plugins, "pool.sock", [("slot-0", "Healthy"), ("slot-1", "Unhealthy")]).start()
    try:
        import grpc  # pylint: disable=import-outside-toplevel
        with pytest.raises(grpc.RpcError) as refused:
            plugin.register(resource="pool")
        assert refused.value.details() == 'the ResourceName "pool" is invalid'
        plugin.register()
        out, err = manager.communicate(timeout=60)
    finally:
        plugin.stop()
    assert manager.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["versions"][0].startswith("1.51.") and result["versions"][1].startswith("4.21."), result
    assert result["capacity"] == [{RESOURCE: 2}, {RESOURCE: 1}]
    assert plugin.preferred_requests == [(["slot-0"], [], 1)] and plugin.allocate_requests == [["slot-0"]]
    assert result["refused"] == f"requested number of devices unavailable for {RESOURCE}. Requested: 1, Available: 0"
    record = json.loads(node.path("tmp/dm/fake-device-manager/allocations/default_p_c.json").read_text())
    assert record["device_ids"] == ["slot-0"] and record["response"]["cdi_devices"] == ["nvidia.com/gpu=0"]
    checkpoint = json.loads((plugins / "kubelet_internal_checkpoint").read_text())
    assert checkpoint["Data"]["PodDeviceEntries"][0]["DeviceIDs"] == {"-1": ["slot-0"]}
