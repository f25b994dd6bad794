"""containerd_config edits containerd's configuration in place: an existing file keeps its root,
state, registry mirrors and comments, and only the kubelet's settings change.

The module runs as Ansible runs it, against a stand-in `containerd` that prints the real
`containerd config default` of Debian 12's containerd 1.6.20 (captured from the binary in
data/containerd/) and checks a file as `containerd --config FILE config dump` does.
"""
from __future__ import annotations

import copy
import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import tomlkit
from module_runner import COLLECTIONS, run_module

DATA = Path(__file__).resolve().parent / "data" / "containerd"
DEFAULT_V2 = DATA / "config-default-1.6.20.toml"
DEFAULT_V3 = DATA / "config-default-2.x-excerpt.toml"
PAUSE = "registry.k8s.io/pause:3.10.2"
V2_CRI = "io.containerd.grpc.v1.cri"

# containerd 1.6.20 with `version = 2` and a short plugin ID in disabled_plugins says (checked with
# the binary): "failed to load TOML from FILE: invalid disabled plugin URI "cri" expect io.containerd.x.vx".
FAKE_CONTAINERD = r'''#!/usr/bin/env python3
import os, sys, tomllib
with open(os.environ["FAKE_CONTAINERD_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\n")
args = sys.argv[1:]
if args == ["config", "default"]:
    sys.stdout.write(open(os.environ["FAKE_CONTAINERD_DEFAULT"]).read())
    sys.exit(0)
if len(args) == 4 and args[0] == "--config" and args[2:] == ["config", "dump"]:
    with open(args[1], "rb") as stream:
        config = tomllib.load(stream)
    if config.get("version", 1) >= 2:
        for name in config.get("disabled_plugins", []):
            if "." not in name:
                sys.exit('containerd: failed to load TOML from %s: invalid disabled plugin URI "%s" expect io.containerd.x.vx'
                         % (args[1], name))
    sys.exit(0)
sys.exit("unsupported: containerd " + " ".join(args))
'''

# Docker's containerd.io ships this /etc/containerd/config.toml (containerd-packaging,
# common/containerd.toml; its licence header left out).
CONTAINERD_IO_CONFIG = '''disabled_plugins = ["cri"]

#root = "/var/lib/containerd"
#state = "/run/containerd"
#subreaper = true
#oom_score = 0

#[grpc]
#  address = "/run/containerd/containerd.sock"
#  uid = 0
#  gid = 0
'''

# A host someone set up before: containerd on a data disk, a registry mirror (1.x's
# registry.mirrors table; containerd refuses it beside config_path, the hosts.toml directory that
# molecule's containerd_existing scenario uses), Debian's CNI directory, and a comment.
EXISTING_V2 = f'''version = 2
root = "/data/containerd"
state = "/run/containerd-data"

[plugins]
  [plugins."{V2_CRI}"]
    # our pause image comes from the mirror below
    sandbox_image = "registry.k8s.io/pause:3.6"
    [plugins."{V2_CRI}".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
    [plugins."{V2_CRI}".registry.mirrors."docker.io"]
      endpoint = ["https://mirror.gpuaas.invalid"]
    [plugins."{V2_CRI}".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."{V2_CRI}".containerd.runtimes.runc.options]
        SystemdCgroup = false
'''


@pytest.fixture
def host(tmp_path):
    """A host: its config path, a stand-in containerd and what it was asked."""

    class Host:
        config = tmp_path / "etc" / "containerd" / "config.toml"
        log = tmp_path / "containerd.log"
        default = DEFAULT_V2
        binary = tmp_path / "containerd"

        def run(self, check_mode=False, **args):
            env = {"FAKE_CONTAINERD_LOG": str(self.log), "FAKE_CONTAINERD_DEFAULT": str(self.default),
                   # tomlkit where this interpreter has it (the venv, or PYTHONPATH)
                   "PYTHONPATH": os.pathsep.join([str(COLLECTIONS), str(Path(tomlkit.__file__).parents[1])])}
            params = {"path": str(self.config), "sandbox_image": PAUSE, "containerd_path": str(self.binary),
                      "_ansible_check_mode": check_mode, "_ansible_diff": True, **args}
            return run_module("containerd_config", params, env=env)

        def calls(self):
            return self.log.read_text().splitlines() if self.log.exists() else []

        def written(self):
            return tomllib.loads(self.config.read_text())

    Host.binary.write_text(FAKE_CONTAINERD)
    Host.binary.chmod(0o755)
    return Host()


def with_kubelet_settings(config: dict, cri: str = V2_CRI) -> dict:
    """``config`` with the three settings the module owns, as it should leave them."""
    expected = copy.deepcopy(config)
    runc = expected.setdefault("plugins", {}).setdefault(cri, {}).setdefault("containerd", {}) \
        .setdefault("runtimes", {}).setdefault("runc", {})
    runc.setdefault("options", {})["SystemdCgroup"] = True
    expected["plugins"][cri]["sandbox_image"] = PAUSE
    if "disabled_plugins" in expected:
        expected["disabled_plugins"] = [p for p in expected["disabled_plugins"] if p != "cri"]
    return expected


def test_an_existing_config_keeps_its_root_mirrors_and_comments(host):
    host.config.parent.mkdir(parents=True)
    host.config.write_text(EXISTING_V2)
    before = tomllib.loads(EXISTING_V2)
    # Positive control: a rebuild from `containerd config default` would lose these.
    default = tomllib.loads(DEFAULT_V2.read_text())
    assert (default["root"], default["state"]) != (before["root"], before["state"])
    assert default["plugins"][V2_CRI]["registry"]["mirrors"] == {}

    result = host.run()

    assert result["changed"] is True, result
    assert result["started_from_default"] is False
    assert host.written() == with_kubelet_settings(before)
    assert "# our pause image comes from the mirror below" in host.config.read_text()
    assert result["diff"]["before"] == EXISTING_V2
    assert result["diff"]["after"] == host.config.read_text()
    # containerd read the new file before it replaced the old one.
    assert [c for c in host.calls() if c.startswith("--config ")][-1].endswith(" config dump")


def test_a_second_run_changes_nothing(host):
    host.config.parent.mkdir(parents=True)
    host.config.write_text(EXISTING_V2)
    assert host.run()["changed"] is True
    text = host.config.read_text()

    result = host.run()

    assert result["changed"] is False
    assert host.config.read_text() == text


def test_check_mode_reports_the_change_and_writes_nothing(host):
    host.config.parent.mkdir(parents=True)
    host.config.write_text(EXISTING_V2)

    result = host.run(check_mode=True)

    assert result["changed"] is True
    assert 'sandbox_image = "registry.k8s.io/pause:3.10.2"' in result["diff"]["after"]
    assert host.config.read_text() == EXISTING_V2
    assert os.listdir(host.config.parent) == ["config.toml"]


def test_a_missing_config_starts_from_containerd_config_default(host):
    result = host.run()

    assert result["changed"] is True
    assert result["started_from_default"] is True
    assert host.written() == with_kubelet_settings(tomllib.loads(DEFAULT_V2.read_text()))
    assert "config default" in host.calls()


def test_an_empty_config_starts_from_the_default_too(host):
    host.config.parent.mkdir(parents=True)
    host.config.write_text("# nothing here yet\n")

    result = host.run()

    assert result["started_from_default"] is True
    assert host.written() == with_kubelet_settings(tomllib.loads(DEFAULT_V2.read_text()))


def test_containerd_io_config_gets_cri_back_and_keeps_the_rest(host):
    host.config.parent.mkdir(parents=True)
    host.config.write_text(CONTAINERD_IO_CONFIG)

    result = host.run()

    written = host.written()
    assert result["version"] == 2
    assert written["disabled_plugins"] == []
    assert written["version"] == 2
    # runc's table comes from the default (the CRI plugin needs its runtime_type).
    runc = written["plugins"][V2_CRI]["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"]["SystemdCgroup"] is True
    assert written["plugins"][V2_CRI]["sandbox_image"] == PAUSE
    assert '#root = "/var/lib/containerd"' in host.config.read_text()


def test_the_check_before_writing_refuses_what_containerd_refuses(host):
    """Positive control for the check above: `version = 2` with containerd.io's short "cri" fails."""
    host.config.parent.mkdir(parents=True)
    host.config.write_text("version = 2\n" + CONTAINERD_IO_CONFIG)
    staged = host.config.parent / "staged.toml"
    staged.write_text(host.config.read_text())

    completed = subprocess.run([str(host.binary), "--config", str(staged), "config", "dump"],
                               env={**os.environ, "FAKE_CONTAINERD_LOG": str(host.log)}, capture_output=True, text=True,
                               check=False)
    assert completed.returncode != 0
    assert 'invalid disabled plugin URI "cri"' in completed.stderr

    result = host.run()

    assert result["changed"] is True
    assert host.written()["disabled_plugins"] == []


def test_version_3_sets_the_split_cri_plugins(host):
    host.default = DEFAULT_V3
    host.config.parent.mkdir(parents=True)
    host.config.write_text(DEFAULT_V3.read_text())

    result = host.run()

    written = host.written()
    assert result["version"] == 3
    assert written["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == PAUSE
    assert written["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]["options"] == {
        "SystemdCgroup": True}
    assert V2_CRI not in written["plugins"]


def test_a_version_1_config_with_plugin_tables_is_refused(host):
    host.config.parent.mkdir(parents=True)
    host.config.write_text('[plugins.cri]\n  sandbox_image = "registry.k8s.io/pause:3.6"\n')

    result = host.run()

    assert result["failed"] is True
    assert "config version 1" in result["msg"]
    assert host.config.read_text().startswith("[plugins.cri]")


def test_invalid_toml_fails_in_one_sentence(host):
    host.config.parent.mkdir(parents=True)
    host.config.write_text("version = = 2\n")

    result = host.run()

    assert result["failed"] is True
    assert result["msg"].startswith(f"{host.config}: the existing file is not valid TOML")


def test_the_nvidia_runtime_is_added_on_a_draft_by_nvidia_ctk(host, tmp_path):
    ctk_log = tmp_path / "nvidia-ctk.log"
    ctk = tmp_path / "nvidia-ctk"
    # Records its arguments, drops the file's comments (the real one writes the whole file back from
    # its parsed tree, pkg/config/engine/containerd) and appends a runtime table to the file it is
    # given, as the real one adds plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nvidia.
    ctk.write_text(f'''#!/bin/sh
echo "$*" >> {ctk_log}
[ "$2" = --help ] && exit 0
for a; do case $a in --config=*) f=${{a#--config=}};; esac; done
sed -i '/^ *#/d' "$f"
grep -q runtimes.nvidia "$f" || printf '\\n[plugins."{V2_CRI}".containerd.runtimes.nvidia.options]\\n%s\\n' \\
  '  BinaryName = "/usr/bin/nvidia-container-runtime"' >> "$f"
''')
    ctk.chmod(0o755)
    host.config.parent.mkdir(parents=True)
    host.config.write_text(EXISTING_V2)

    checked = host.run(check_mode=True, nvidia_runtime=True, nvidia_ctk_path=str(ctk))
    assert host.config.read_text() == EXISTING_V2  # check mode: nvidia-ctk edited a draft only
    result = host.run(nvidia_runtime=True, nvidia_runtime_default=True, nvidia_ctk_path=str(ctk))

    assert checked["changed"] is True and result["changed"] is True
    written = host.written()
    runtimes = written["plugins"][V2_CRI]["containerd"]["runtimes"]
    assert runtimes["nvidia"]["options"]["BinaryName"] == "/usr/bin/nvidia-container-runtime"
    assert written["root"] == "/data/containerd"
    assert "# our pause image comes from the mirror below" in host.config.read_text(), "nvidia-ctk's rewrite kept out"
    configure = [line for line in ctk_log.read_text().splitlines() if "--help" not in line]
    assert str(host.config) not in " ".join(configure)
    assert configure[-1].endswith("--set-as-default")
    assert host.run(nvidia_runtime=True, nvidia_runtime_default=True, nvidia_ctk_path=str(ctk))["changed"] is False


def test_the_cni_directory_is_set_only_when_asked(host):
    debian = (DATA / "debian-1.6.20-config.toml").read_text()
    host.config.parent.mkdir(parents=True)
    host.config.write_text(debian)

    host.run(check_mode=False)
    kept = host.written()["plugins"][V2_CRI]["cni"]["bin_dir"]
    host.run(cni_bin_dir="/opt/cni/bin")
    written = host.written()

    assert kept == "/usr/lib/cni"  # Debian's own setting, left alone by default
    assert written["plugins"][V2_CRI]["cni"] == {"bin_dir": "/opt/cni/bin", "conf_dir": "/etc/cni/net.d"}
    assert written["plugins"]["io.containerd.internal.v1.opt"] == {"path": "/var/lib/containerd/opt"}


def test_version_3_adds_the_cni_directory_to_bin_dirs(host):
    host.default = DEFAULT_V3
    host.config.parent.mkdir(parents=True)
    host.config.write_text(DEFAULT_V3.read_text() + "\n  [plugins.'io.containerd.cri.v1.runtime'.cni]\n"
                           "    bin_dirs = ['/usr/libexec/cni']\n")

    host.run(cni_bin_dir="/opt/cni/bin")

    cni = host.written()["plugins"]["io.containerd.cri.v1.runtime"]["cni"]
    assert cni == {"bin_dirs": ["/usr/libexec/cni", "/opt/cni/bin"]}


def test_node_init_s_fallback_pause_image_is_the_one_the_pinned_kubeadm_prints():
    """Where kubeadm is installed node_init asks it (kubeadm config images list); elsewhere it uses
    node_init_kubernetes_pause_image.  The two agree for the pinned version: the fleet's kubeadm
    prints that release's pause image."""
    import yaml

    repo = Path(__file__).resolve().parents[2]
    defaults = yaml.safe_load((repo / "roles/node_init/defaults/main.yml").read_text())
    standin = (repo / "tests/fleet/packages/kubeadm/usr/bin/kubeadm").read_text()
    printed = [line.split('"')[1].replace("$repository", "registry.k8s.io")
               for line in standin.splitlines() if line.strip().startswith('echo "$repository/pause:')]

    assert printed == [defaults["node_init_kubernetes_pause_image"]]
    assert defaults["node_init_kubernetes_version"] == "1.37"
