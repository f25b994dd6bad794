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
import sys
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
            # None leaves an option out, as a task that does not name it.
            return run_module("containerd_config", {k: v for k, v in params.items() if v is not None}, env=env)

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
    assert result["diff"][0]["before"] == EXISTING_V2
    assert result["diff"][0]["after"] == host.config.read_text()
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
    assert 'sandbox_image = "registry.k8s.io/pause:3.10.2"' in result["diff"][0]["after"]
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


# --------------------------------------------------------------------------- nvidia-ctk 1.18's drop-in

CTK_STANDIN = Path(__file__).resolve().parents[2] / "tests/fleet/packages/nvidia-container-toolkit-base/usr/bin/nvidia-ctk"
# The stand-in writes TOML with python3-tomli-w on the fleet's nodes; here tomlkit stands in for it.
TOMLI_W_SHIM = "import tomlkit\n\n\ndef dumps(value):\n    return tomlkit.dumps(value)\n"
NVIDIA_BINARY = "/usr/bin/nvidia-container-runtime"


@pytest.fixture
def ctk(tmp_path):
    """The fleet's nvidia-ctk stand-in at a given version: ctk("1.18.1") is its path."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "tomli_w.py").write_text(TOMLI_W_SHIM)
    python_path = os.pathsep.join([str(shim), str(Path(tomlkit.__file__).parents[1])])

    def at(version: str) -> Path:
        script = tmp_path / f"nvidia-ctk-{version}.py"
        script.write_text(CTK_STANDIN.read_text().replace("@CTK_VERSION@", version))
        wrapper = tmp_path / f"nvidia-ctk-{version}"
        wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={python_path} exec {sys.executable} {script} "$@"\n')
        wrapper.chmod(0o755)
        return wrapper
    return at


def leave_drop_in(host, ctk_binary: Path, directory: str) -> Path:
    """What an operator following NVIDIA's guide leaves: nvidia-ctk 1.18 run on the live file."""
    drop_in = host.config.parent / directory / "99-nvidia.toml"
    done = subprocess.run([str(ctk_binary), "runtime", "configure", "--runtime=containerd", f"--config={host.config}",
                           f"--drop-in-config={drop_in}"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return drop_in


def cri(config: dict) -> dict:
    return config["plugins"][V2_CRI]


@pytest.mark.parametrize("version", ["1.17.8", "1.18.0", "1.18.1"])
def test_each_nvidia_ctk_version_leaves_the_runtime_in_the_one_file(host, ctk, version):
    host.config.parent.mkdir(parents=True)
    host.config.write_text(EXISTING_V2)

    checked = host.run(check_mode=True, nvidia_runtime=True, nvidia_ctk_path=str(ctk(version)))
    assert checked["changed"] is True, checked
    assert os.listdir(host.config.parent) == ["config.toml"], "check mode writes nothing, no drop-in either"
    result = host.run(nvidia_runtime=True, nvidia_ctk_path=str(ctk(version)))

    assert result["changed"] is True, result
    written = host.written()
    assert cri(written)["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"] == NVIDIA_BINARY
    assert cri(written)["containerd"]["runtimes"]["nvidia"]["options"]["SystemdCgroup"] is True
    assert "imports" not in written
    assert os.listdir(host.config.parent) == ["config.toml"]
    assert host.run(nvidia_runtime=True, nvidia_ctk_path=str(ctk(version)))["changed"] is False


def test_nvidia_ctk_1_17_refuses_the_drop_in_flag_so_it_is_passed_only_from_1_18(ctk, tmp_path):
    """Positive control: the module passes --drop-in-config only where the help names it."""
    refused = subprocess.run([str(ctk("1.17.8")), "runtime", "configure", "--runtime=containerd",
                              f"--config={tmp_path / 'c.toml'}", "--drop-in-config="], capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert "flag provided but not defined: -drop-in-config" in refused.stderr
    helps = [subprocess.run([str(ctk(v)), "runtime", "configure", "--help"], capture_output=True, text=True,
                            check=False).stdout
             for v in ("1.17.8", "1.18.1")]
    assert "--drop-in-config" not in helps[0] and "--drop-in-config" in helps[1]


@pytest.mark.parametrize("version,directory", [("1.18.0", "config.d"), ("1.18.1", "conf.d")])
def test_a_drop_in_nvidia_ctk_left_is_removed_with_its_import(host, ctk, version, directory):
    host.config.parent.mkdir(parents=True)
    host.config.write_text(EXISTING_V2)
    host.run(nvidia_runtime=True, nvidia_ctk_path=str(ctk(version)))
    drop_in = leave_drop_in(host, ctk(version), directory)
    left = host.written()
    # Positive control: the drop-in holds a copy of the whole CRI table, and the file imports it, so
    # containerd before 2.1 would read the drop-in's sandbox_image, not the file's.
    assert left["imports"] == [f"{drop_in.parent}/*.toml"]
    assert cri(tomllib.loads(drop_in.read_text()))["sandbox_image"] == PAUSE

    checked = host.run(check_mode=True, nvidia_runtime=True, nvidia_ctk_path=str(ctk(version)),
                       sandbox_image="registry.k8s.io/pause:3.99")
    assert checked["changed"] is True and checked["removed_drop_ins"] == [str(drop_in)]
    assert drop_in.exists() and host.written() == left, "check mode removes and writes nothing"
    assert [d["before_header"] for d in checked["diff"]] == [str(host.config), str(drop_in)]
    result = host.run(nvidia_runtime=True, nvidia_ctk_path=str(ctk(version)), sandbox_image="registry.k8s.io/pause:3.99")

    assert result["changed"] is True and result["removed_drop_ins"] == [str(drop_in)]
    assert not drop_in.exists()
    written = host.written()
    assert "imports" not in written
    assert cri(written)["sandbox_image"] == "registry.k8s.io/pause:3.99"
    assert cri(written)["containerd"]["runtimes"]["nvidia"]["options"]["BinaryName"] == NVIDIA_BINARY


def test_other_files_imported_from_nvidia_ctk_s_directory_keep_the_import(host, ctk):
    host.config.parent.mkdir(parents=True)
    host.config.write_text(EXISTING_V2)
    drop_in = leave_drop_in(host, ctk("1.18.1"), "conf.d")
    other = drop_in.parent / "10-tracing.toml"
    other.write_text('version = 2\n[plugins."io.containerd.tracing.processor.v1.otlp"]\n  endpoint = "localhost:4317"\n')

    result = host.run(nvidia_runtime=True, nvidia_ctk_path=str(ctk("1.18.1")))

    assert result["removed_drop_ins"] == [str(drop_in)]
    assert host.written()["imports"] == [f"{drop_in.parent}/*.toml"]
    assert other.exists()


def test_another_imported_file_that_sets_the_cri_table_fails_and_nothing_changes(host, ctk):
    host.config.parent.mkdir(parents=True)
    operator = host.config.parent / "cri-override.toml"
    operator.write_text(f'version = 2\n[plugins."{V2_CRI}"]\n  sandbox_image = "registry.example/pause:1"\n')
    host.config.write_text('imports = ["cri-override.toml"]\n' + EXISTING_V2)
    drop_in = leave_drop_in(host, ctk("1.18.1"), "conf.d")
    before = host.config.read_text()

    result = host.run(nvidia_runtime=True, nvidia_ctk_path=str(ctk("1.18.1")))

    assert result["failed"] is True
    assert f"{operator}, imported by it, sets plugins.\"{V2_CRI}\"" in result["msg"]
    assert "containerd#5837" in result["msg"]
    assert host.config.read_text() == before and drop_in.exists()


def test_an_imported_file_that_is_not_toml_fails_and_nothing_changes(host, ctk):
    host.config.parent.mkdir(parents=True)
    host.config.write_text(EXISTING_V2)
    drop_in = leave_drop_in(host, ctk("1.18.1"), "conf.d")
    drop_in.write_text("version = = 2\n")
    before = host.config.read_text()

    result = host.run()

    assert result["failed"] is True
    assert f"{drop_in} (imported by {host.config}) is not valid TOML" in result["msg"]
    assert host.config.read_text() == before and drop_in.read_text() == "version = = 2\n"


def test_imports_that_are_not_a_list_of_paths_fail_in_one_sentence(host):
    host.config.parent.mkdir(parents=True)
    host.config.write_text('imports = "conf.d/*.toml"\n' + EXISTING_V2)

    result = host.run()

    assert result["failed"] is True
    assert result["msg"] == f"{host.config}: `imports` in {host.config} is not a list of paths"


def test_state_absent_removes_the_nvidia_runtime_and_the_drop_in_and_keeps_the_kubelet_s_settings(host, ctk):
    host.config.parent.mkdir(parents=True)
    host.config.write_text(EXISTING_V2)
    host.run(nvidia_runtime=True, nvidia_runtime_default=True, nvidia_ctk_path=str(ctk("1.18.1")))
    assert cri(host.written())["containerd"]["default_runtime_name"] == "nvidia"
    drop_in = leave_drop_in(host, ctk("1.18.1"), "conf.d")

    checked = host.run(check_mode=True, state="absent", sandbox_image=None)
    assert checked["changed"] is True and drop_in.exists()
    result = host.run(state="absent", sandbox_image=None)

    assert result["changed"] is True and result["removed_drop_ins"] == [str(drop_in)]
    written = host.written()
    assert "nvidia" not in cri(written)["containerd"]["runtimes"]
    assert "default_runtime_name" not in cri(written)["containerd"]
    assert "imports" not in written
    assert cri(written)["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
    assert cri(written)["sandbox_image"] == PAUSE
    assert not drop_in.exists()
    assert host.run(state="absent", sandbox_image=None)["changed"] is False


def test_state_absent_on_a_host_without_containerd_s_file_changes_nothing(host):
    result = host.run(state="absent", sandbox_image=None)

    assert result["changed"] is False and result["version"] is None
    assert not host.config.exists()


def test_state_present_needs_the_sandbox_image(host):
    result = host.run(sandbox_image=None)

    assert result["failed"] is True
    assert "sandbox_image" in result["msg"]
