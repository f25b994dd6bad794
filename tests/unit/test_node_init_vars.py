"""node_init's per-distribution package names and pins, checked without a node.

The test fleet is Debian 12 only; these checks keep the errors found by reading the role against
NVIDIA's driver role, NVIDIA's repositories and pkgs.k8s.io's guide from coming back (Ubuntu's
names are not installed by any test).
"""
from __future__ import annotations

from pathlib import Path

import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles/node_init"
REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements" / "runtime.in"


DISTRIBUTIONS = ("Debian", "Ubuntu")


def family_vars(family: str) -> dict:
    return yaml.safe_load((ROLE / "vars" / f"{family}.yml").read_text())


def nvidia_vars(distribution: str) -> dict:
    return yaml.safe_load((ROLE / "vars" / f"nvidia_{distribution}.yml").read_text())


def role_vars() -> dict:
    return yaml.safe_load((ROLE / "vars/main.yml").read_text())


def role_defaults() -> dict:
    return yaml.safe_load((ROLE / "defaults/main.yml").read_text())


def test_only_the_debian_family_is_listed_and_each_listed_distribution_has_its_names():
    listed = role_defaults()["node_init_supported_distributions"]
    assert listed == {"Debian": ["12"], "Ubuntu": ["22.04", "24.04"]}
    assert sorted(path.name for path in (ROLE / "vars").glob("nvidia_*.yml")) == [f"nvidia_{d}.yml" for d in listed]
    platforms = yaml.safe_load((ROLE / "meta/main.yml").read_text())["galaxy_info"]["platforms"]
    assert sorted(platform["name"] for platform in platforms) == sorted(listed)


def test_debian_installs_the_names_of_nvidias_debian12_repository_and_ubuntu_the_server_driver():
    # NVIDIA's debian12 repository has no -server package: cuda-drivers-<branch> (real-hosts.md).
    assert nvidia_vars("Debian")["node_init_packages_nvidia_driver"] == ["cuda-drivers-{{ node_init_nvidia_driver_branch }}"]
    assert nvidia_vars("Ubuntu")["node_init_packages_nvidia_driver"] == [
        "nvidia-driver-{{ node_init_nvidia_driver_branch }}-server"]
    assert role_vars()["node_init_packages_nvidia_fabricmanager_meta"] == (
        "cuda-drivers-fabricmanager-{{ node_init_nvidia_driver_branch }}")


def test_the_default_branch_is_a_supported_one_and_550_is_not():
    supported = role_vars()["node_init_nvidia_supported_driver_branches"]
    assert supported == ["535", "580", "595", "610", "620"]
    assert role_defaults()["node_init_nvidia_driver_branch"] == "580"
    assert "550" not in supported


def test_the_headers_follow_the_kernel_that_will_boot_and_the_running_one():
    assert nvidia_vars("Debian")["node_init_packages_nvidia_kernel_headers"][0].startswith("linux-headers-{{ 'arm64'")
    assert nvidia_vars("Ubuntu")["node_init_packages_nvidia_kernel_headers"][0] == "linux-headers-generic"
    for distribution in DISTRIBUTIONS:
        assert "linux-headers-{{ ansible_facts.get('kernel', '') }}" in nvidia_vars(distribution)[
            "node_init_packages_nvidia_kernel_headers"]


def test_every_distribution_gets_pip_for_nvidia_ml_py_and_the_container_toolkit():
    for distribution in DISTRIBUTIONS:
        assert nvidia_vars(distribution)["node_init_packages_nvidia_pip"] == ["python3-pip"], distribution
    # NVIDIA's install guide pins these four at one version: nvidia-container-toolkit needs -base at
    # exactly its version, but libnvidia-container-tools only at >= it (packaging/debian/control, v1.17.8).
    assert role_vars()["node_init_packages_nvidia_container_toolkit"] == [
        "nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1"]


def test_the_toolkit_is_pinned_to_the_version_the_fleet_s_stand_in_models():
    import sys
    sys.path.insert(0, str(ROLE.parents[1] / "tests" / "fleet"))
    import package_repo

    spec = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    pinned = role_defaults()["node_init_nvidia_container_toolkit_version"]
    assert pinned == spec["node_init_nvidia_container_toolkit_version"]["default"] == package_repo.NVIDIA_CTK_VERSION
    tasks = (ROLE / "tasks/nvidia_stack.yml").read_text()
    assert "'=' ~ node_init_nvidia_container_toolkit_version ~ '-*'" in tasks
    assert "node_init_packages_nvidia_container_toolkit | map('regex_escape')" in tasks, "held at that version"


def test_the_node_installs_the_nvidia_ml_py_the_controller_pins():
    pinned = next(line.split("==")[1].strip() for line in REQUIREMENTS.read_text().splitlines()
                  if line.startswith("nvidia-ml-py=="))
    assert role_defaults()["node_init_nvidia_ml_py_version"] == pinned


def test_the_kubernetes_pin_is_one_minor_version_and_its_repositories_follow_it():
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    minor = defaults["node_init_kubernetes_version"]

    assert minor == "1.37"
    assert defaults["node_init_kubernetes_package_version"].startswith(f"{minor}.")
    assert defaults["node_init_kubernetes_apt_repository"]["uri"].endswith(
        "/v{{ node_init_kubernetes_version }}/deb/")
    assert defaults["node_init_kubernetes_apt_repository"]["signed_by"].endswith("/deb/Release.key")


def test_the_toolkit_key_is_the_url_nvidia_publishes():
    repository = role_defaults()["node_init_nvidia_container_toolkit_apt_repository"]
    assert repository["signed_by"] == "https://nvidia.github.io/libnvidia-container/gpgkey"


def test_every_distribution_declares_the_same_nvidia_package_variables():
    assert set(nvidia_vars("Debian")) == set(nvidia_vars("Ubuntu"))


def test_the_fabric_manager_follows_the_running_driver_not_the_branch_to_install():
    # A machine that came with its driver may run another branch than
    # node_init_nvidia_driver_branch; the fabric manager must match the one that runs.
    for distribution in DISTRIBUTIONS:
        name = nvidia_vars(distribution)["node_init_packages_nvidia_fabricmanager"]
        assert name == "nvidia-fabricmanager-{{ node_init_nvidia_running_driver_branch }}", distribution
    tasks = (ROLE / "tasks/nvidia_stack.yml").read_text()
    assert "node_init_nvidia_running_driver_branch: \"{{ (node_init_nvidia_driver_version.stdout_lines" in tasks


def test_the_hold_holds_the_running_driver_s_packages_and_the_toolkit_s_at_their_versions(tmp_path):
    """The hold task's loop, templated by Ansible itself (which doubles a backslash in a Jinja string
    literal: a pattern written there matched nothing on the fleet)."""
    import json
    import sys
    sys.path.insert(0, str(ROLE.parents[1] / "tests" / "support"))
    from module_runner import run_local_play

    tasks = yaml.safe_load((ROLE / "tasks/nvidia_stack.yml").read_text())
    hold = next(task for task in tasks if task["name"].startswith("Hold the driver's"))
    dpkg = ("cuda-drivers-580 580.95.05-1 installed\nnvidia-fabricmanager-580 1:580.95.05-1 installed\n"
            "nvidia-kernel-dkms 580.82.07-1 installed\nnvidia-container-toolkit 1.17.8-1 installed\n"
            "nvidia-container-toolkit-base 1.17.8-1 installed\nlibnvidia-container1 1.17.8-1 installed\n"
            "libnvidia-container-tools 1.18.0-1 installed\nnvidia-container-toolkit-operator-extensions 1.17.8-1 installed\n"
            "cuda-drivers-fabricmanager-580 580.95.05-1 config-files\n")
    variables = {**hold["vars"], "node_init_nvidia_dpkg": {"stdout": dpkg}, "node_init_nvidia_running_driver_version": "580.95.05",
                 "node_init_nvidia_container_toolkit_version": role_defaults()["node_init_nvidia_container_toolkit_version"],
                 "node_init_packages_nvidia_container_toolkit": role_vars()["node_init_packages_nvidia_container_toolkit"]}
    playbook = ("- hosts: localhost\n  gather_facts: false\n  tasks:\n    - ansible.builtin.debug:\n"
                "        msg: " + json.dumps("HELD={{ (" + hold["loop"].strip()[2:-2].strip() + ") | to_json }}") + "\n")
    rc, output = run_local_play(tmp_path, playbook, variables)

    assert rc == 0, output
    held = json.loads(output.split("HELD=")[1].split("\n")[0].rstrip('"').replace('\\"', '"'))
    # Not the library at another version, nor a package of the toolkit's version that is not one of the four.
    assert held == ["cuda-drivers-580", "nvidia-fabricmanager-580", "nvidia-container-toolkit",
                    "nvidia-container-toolkit-base", "libnvidia-container1"]
