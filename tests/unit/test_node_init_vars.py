"""node_init's per-OS-family package names and pins, checked without a node.

The RedHat family has no node in the test fleet; these checks keep the errors found by
reading the role against NVIDIA's driver role and pkgs.k8s.io's guide from coming back.
"""
from __future__ import annotations

from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles/node_init"
REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements" / "runtime.in"


def family_vars(family: str) -> dict:
    return yaml.safe_load((ROLE / "vars" / f"{family}.yml").read_text())


def test_redhat_installs_the_driver_module_stream_in_the_at_form_the_dnf_module_needs():
    drivers = family_vars("RedHat")["node_init_packages_nvidia_driver"]

    assert drivers == ["@nvidia-driver:{{ node_init_nvidia_driver_branch }}-dkms"]


def test_every_family_gets_pip_for_nvidia_ml_py_and_the_container_toolkit():
    for family in ("Debian", "RedHat", "default"):
        toolkit = family_vars(family)["node_init_packages_nvidia_toolkit"]
        assert "python3-pip" in toolkit and "nvidia-container-toolkit" in toolkit, family


def test_the_node_installs_the_nvidia_ml_py_the_controller_pins():
    pinned = next(line.split("==")[1].strip() for line in REQUIREMENTS.read_text().splitlines()
                  if line.startswith("nvidia-ml-py=="))
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())

    assert defaults["node_init_nvidia_ml_py_version"] == pinned


def test_the_kubernetes_pin_is_one_minor_version_and_its_repositories_follow_it():
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    minor = defaults["node_init_kubernetes_version"]

    assert minor == "1.37"
    assert f"'{minor}.1-1.1'" in defaults["node_init_kubernetes_package_version"]
    assert defaults["node_init_kubernetes_apt_repository"]["uri"].endswith(
        "/v{{ node_init_kubernetes_version }}/deb/")
    assert defaults["node_init_kubernetes_apt_repository"]["signed_by"].endswith("/deb/Release.key")
    assert defaults["node_init_kubernetes_rpm_repository"]["gpgkey"].endswith("/rpm/repodata/repomd.xml.key")


def test_the_toolkit_key_is_the_url_nvidia_publishes():
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())

    for repository in ("node_init_nvidia_container_toolkit_apt_repository",
                       "node_init_nvidia_container_toolkit_rpm_repository"):
        key = defaults[repository].get("signed_by") or defaults[repository]["gpgkey"]
        assert key == "https://nvidia.github.io/libnvidia-container/gpgkey"


def test_both_families_declare_the_same_package_variables():
    assert set(family_vars("Debian")) == set(family_vars("RedHat")) == set(family_vars("default"))


def test_the_fabric_manager_follows_the_running_driver_not_the_branch_to_install():
    # A machine that came with its driver may run another branch than
    # node_init_nvidia_driver_branch; the fabric manager must match the one that runs.
    for family in ("Debian", "default"):
        name = family_vars(family)["node_init_packages_nvidia_fabricmanager"]
        assert name == "nvidia-fabricmanager-{{ node_init_nvidia_running_driver_branch }}", family
    tasks = (ROLE / "tasks/nvidia.yml").read_text()
    assert "node_init_nvidia_running_driver_branch: \"{{ (node_init_nvidia_driver_version.stdout_lines" in tasks
