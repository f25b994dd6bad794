#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: containerd_config
short_description: Set what the kubelet needs in containerd's configuration, keeping everything else
version_added: "0.1.0"
description:
  - Edits an existing C(/etc/containerd/config.toml) in place, with a TOML parser that keeps its comments,
    order and every setting it does not own (C(root), C(state), registry mirrors, CNI directories, other runtimes).
  - It owns these things only, per containerd's CRI config guide (docs/cri/config.md);
    C(SystemdCgroup = true) in the runc runtime's options, the CRI plugin not in C(disabled_plugins),
    the sandbox (pause) image, with O(cni_bin_dir) the directory CRI finds CNI plugins in, and, with
    O(nvidia_runtime), the NVIDIA runtime that C(nvidia-ctk runtime configure) adds.
  - A missing or empty file (comments only) starts from C(containerd config default).
  - Config version 2 (containerd 1.x) keeps the CRI plugin under C(plugins."io.containerd.grpc.v1.cri")
    (C(containerd.runtimes.runc.options), C(sandbox_image)); version 3 (containerd 2.x) splits it into
    C(plugins."io.containerd.cri.v1.runtime") (C(containerd.runtimes.runc.options)) and
    C(plugins."io.containerd.cri.v1.images") (C(pinned_images.sandbox)).
  - A file without C(version) is version 1. Docker's C(containerd.io) ships one (only C(disabled_plugins = ["cri"])
    and comments); such a file, with no C(plugins) table, is raised to the version C(containerd config default)
    prints, keeping its other top-level settings. A version 1 file with plugin tables is refused (its plugins are
    keyed by short ID, and moving them is the operator's call).
  - The result is checked with C(containerd --config FILE config dump) before it replaces the file.
  - One file holds the NVIDIA runtime. From 1.18, C(nvidia-ctk runtime configure) writes it to a drop-in
    (1.18.0 C(config.d/99-nvidia.toml), 1.18.1 and later C(conf.d/99-nvidia.toml), beside the file) that copies
    the file's whole CRI plugin table, and adds an C(imports) line for the drop-in's directory. containerd before
    2.1 replaces a plugin's table with each imported file's (containerd#5837), so the settings this module sets
    in the file would be shadowed. nvidia-ctk is therefore given a draft of the drop-in too, and only its
    runtime is taken into the file.
  - A drop-in at nvidia-ctk's paths (left by an earlier nvidia-ctk 1.18 run, or by an operator following NVIDIA's
    install guide) is removed, with the C(imports) entry for its directory once nothing else is imported from
    there. Any other imported file that sets a CRI plugin table fails the module, naming the file, and nothing is
    written.
  - Needs the C(tomlkit) Python library on the node (Debian and Ubuntu C(python3-tomlkit)).
author:
  - hosted·ai GPUaaS developers (@hostedai)
options:
  path:
    description: containerd's configuration file.
    type: path
    default: /etc/containerd/config.toml
  sandbox_image:
    description:
      - The sandbox (pause) image, which should be the one kubeadm uses (C(kubeadm config images list)).
      - kubeadm's preflight warns when the runtime's sandbox image differs from its own.
      - Required with O(state=present).
    type: str
  cni_bin_dir:
    description:
      - The directory the CRI plugin looks for CNI plugins in (C(cni.bin_dir); in version 3, added to
        C(cni.bin_dirs) where the file has that list).
      - Debian's containerd package ships a config with C(/usr/lib/cni), while CNIs such as flannel install their
        plugin in C(/opt/cni/bin).
      - Empty leaves the file's own setting (or containerd's default, C(/opt/cni/bin)) alone.
    type: str
    default: ""
  nvidia_runtime:
    description:
      - Add the NVIDIA runtime with C(nvidia-ctk runtime configure --runtime=containerd), run on a draft of the file.
    type: bool
    default: false
  nvidia_runtime_default:
    description: Make the NVIDIA runtime containerd's default (C(nvidia-ctk --set-as-default)).
    type: bool
    default: false
  containerd_path:
    description: The containerd binary (for C(config default) and the check of the result).
    type: path
    default: containerd
  nvidia_ctk_path:
    description: The C(nvidia-ctk) binary.
    type: path
    default: nvidia-ctk
  state:
    description:
      - V(present) sets the settings above.
      - V(absent) removes what the module added for the NVIDIA container toolkit, as node_deinit does, that is the
        C(nvidia) runtime, C(default_runtime_name) where it names it, and nvidia-ctk's drop-in with its
        C(imports) entry. The kubelet's settings stay (their earlier values are not known).
        C(nvidia-ctk) is not run.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
    description: Reports whether the file would change and shows how, and writes nothing.
  diff_mode:
    support: full
    description: Shows the file before and after, and each drop-in removed.
  idempotent:
    support: full
    description: A second run with the same options changes nothing.
notes:
  - C(nvidia-ctk) rewrites the whole file it is given, so it is given a draft, and only the runtime it adds (and, as the
    default, C(default_runtime_name)) is taken into the file, whose comments and other settings stay.
  - C(--drop-in-config="") does not keep nvidia-ctk 1.18 to one file. It still builds the drop-in, writes it to the
    main file, then writes the main file's own tree over it with C(imports) naming the main file's directory; the
    runtime is lost (nvidia-container-toolkit v1.18.0 to v1.20.0, cmd/nvidia-ctk/runtime/configure/configure.go
    getOutputConfigPath, pkg/config/engine/containerd/config_drop_in.go Save). nvidia-ctk 1.17 refuses the flag.
requirements:
  - tomlkit (Debian 12 C(python3-tomlkit) 0.11.7 or newer)
"""

EXAMPLES = r"""
- name: Configure containerd for the kubelet, with kubeadm's pause image
  hostedai.gpuaas.containerd_config:
    sandbox_image: registry.k8s.io/pause:3.10.2
    cni_bin_dir: /opt/cni/bin
  notify: Restart containerd

- name: The same, with the NVIDIA runtime as the default runtime
  hostedai.gpuaas.containerd_config:
    sandbox_image: registry.k8s.io/pause:3.10.2
    nvidia_runtime: true
    nvidia_runtime_default: true

- name: Take the NVIDIA runtime and nvidia-ctk's drop-in out again
  hostedai.gpuaas.containerd_config:
    state: absent
"""

RETURN = r"""
path:
  description: The configuration file.
  returned: always
  type: str
  sample: /etc/containerd/config.toml
version:
  description: The file's config version after the edit (null where O(state=absent) finds no file).
  returned: always
  type: int
  sample: 2
started_from_default:
  description: Whether the file was missing or empty, so the edit started from C(containerd config default).
  returned: always
  type: bool
  sample: false
sandbox_image:
  description: The sandbox image now configured.
  returned: when O(state=present)
  type: str
  sample: registry.k8s.io/pause:3.10.2
removed_drop_ins:
  description: The nvidia-ctk drop-ins removed (or, in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [/etc/containerd/conf.d/99-nvidia.toml]
"""

import copy
import glob
import os
import shutil
import tempfile
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError
except ImportError:
    tomlkit = None
    TOMLKIT_IMPORT_ERROR = traceback.format_exc()
else:
    TOMLKIT_IMPORT_ERROR = None

# The CRI plugin's tables by config version (containerd docs/cri/config.md: version 2 for 1.x,
# version 3 for 2.x).
CRI_LAYOUT = {
    2: {"runtimes": ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"),
        "sandbox": ("plugins", "io.containerd.grpc.v1.cri", "sandbox_image"),
        "cni": ("plugins", "io.containerd.grpc.v1.cri", "cni")},
    3: {"runtimes": ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"),
        "sandbox": ("plugins", "io.containerd.cri.v1.images", "pinned_images", "sandbox"),
        "cni": ("plugins", "io.containerd.cri.v1.runtime", "cni")},
}
# The names disabled_plugins may give the CRI plugin: its short ID (version 1 matches plugins by ID)
# and its full IDs (version 2 and 3 match type.id, and refuse a short ID: "invalid disabled plugin
# URI").  containerd.io's own file disables "cri".
CRI_PLUGIN_NAMES = frozenset(("cri", "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime",
                              "io.containerd.cri.v1.images"))
RUNC_RUNTIME_TYPE = "io.containerd.runc.v2"


class ConfigError(Exception):
    """A configuration the module will not edit; its message is the module's failure."""


def get_path(tree, keys):
    for key in keys:
        if not hasattr(tree, "get") or key not in tree:
            return None
        tree = tree[key]
    return tree


def table_at(doc, keys):
    """The table at ``keys``, made (with any missing parents) where absent."""
    node = doc
    for key in keys:
        if key not in node:
            node[key] = tomlkit.table()
        node = node[key]
        if not hasattr(node, "get"):
            raise ConfigError("%s is not a table" % ".".join(keys))
    return node


def parse(text, source):
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError("%s is not valid TOML: %s" % (source, exc))


class Containerd:
    """The installed containerd: its default configuration (read once) and its check of a file."""

    def __init__(self, module, binary):
        self.module = module
        self.binary = binary
        self._default = None

    def run(self, *args):
        rc, out, err = self.module.run_command([self.binary] + list(args), environ_update={"LC_ALL": "C"})
        if rc != 0:
            raise ConfigError("%s %s failed (rc %d): %s" % (self.binary, " ".join(args), rc, (err or out).strip()))
        return out

    def default(self):
        if self._default is None:
            self._default = parse(self.run("config", "default"), "containerd config default")
        return self._default

    def check(self, path):
        self.run("--config", path, "config", "dump")


def raise_version_1(doc, containerd):
    """A version 1 file with top-level settings only (containerd.io's), at the default's version.

    The top-level keys (root, state, grpc, disabled_plugins ...) mean the same in every version."""
    if "plugins" in doc:
        raise ConfigError("the file is config version 1 (no `version`) and has plugin tables, keyed by short plugin ID; "
                          "move them to version 2 (containerd docs/PLUGINS.md, version header) and run again")
    short = [name for name in doc.get("disabled_plugins", []) if name not in CRI_PLUGIN_NAMES and "." not in name]
    if short:
        raise ConfigError("disabled_plugins names %s by short ID, which version 2 refuses; give the full ID "
                          "(io.containerd.TYPE.ID)" % ", ".join(short))
    version = containerd.default().get("version", 2)
    doc.add("version", version)
    return version


def enable_cri(doc):
    disabled = doc.get("disabled_plugins")
    if disabled is None:
        return
    for index in reversed(range(len(disabled))):
        if disabled[index] in CRI_PLUGIN_NAMES:
            del disabled[index]


def set_systemd_cgroup(doc, layout, containerd):
    """SystemdCgroup = true on runc; a file with no runc table gets containerd's default one, whose
    runtime_type the CRI plugin needs."""
    runtimes = table_at(doc, layout["runtimes"])
    if "runc" not in runtimes:
        default_runc = get_path(containerd.default(), layout["runtimes"] + ("runc",))
        runtimes["runc"] = copy.deepcopy(default_runc) if default_runc is not None else {"runtime_type": RUNC_RUNTIME_TYPE}
    options = table_at(doc, layout["runtimes"] + ("runc", "options"))
    if options.get("SystemdCgroup") is not True:
        options["SystemdCgroup"] = True


def set_value(doc, keys, value):
    parent = table_at(doc, keys[:-1])
    if parent.get(keys[-1]) != value:
        parent[keys[-1]] = value


def set_cni_bin_dir(doc, layout, directory):
    """containerd 2.1 reads a list, bin_dirs, beside 2.0's bin_dir: where the file has the list, the
    directory joins it."""
    cni = table_at(doc, layout["cni"])
    dirs = cni.get("bin_dirs")
    if dirs is not None:
        if directory not in dirs:
            dirs.append(directory)
    elif cni.get("bin_dir") != directory:
        cni["bin_dir"] = directory


def merge(text, sandbox_image, containerd, cni_bin_dir=""):
    """The file's text with the module's settings in; returns (text, version, started_from_default)."""
    doc = parse(text, "the existing file")
    started_from_default = not doc
    if started_from_default:
        doc = copy.deepcopy(containerd.default())
    version = doc.get("version", 1)
    if version == 1:
        version = raise_version_1(doc, containerd)
    if version not in CRI_LAYOUT:
        raise ConfigError("config version %r is not one this module knows (2: containerd 1.x, 3: containerd 2.x)" % version)
    layout = CRI_LAYOUT[version]
    enable_cri(doc)
    set_systemd_cgroup(doc, layout, containerd)
    set_value(doc, layout["sandbox"], sandbox_image)
    if cni_bin_dir:
        set_cni_bin_dir(doc, layout, cni_bin_dir)
    return tomlkit.dumps(doc), version, started_from_default


# Where nvidia-ctk 1.18 puts its drop-in, beside the main file (/etc/containerd): 1.18.0 in config.d,
# 1.18.1 and later in conf.d (cmd/nvidia-ctk/runtime/configure/configure.go,
# defaultContainerdDropInConfigFilePath; changed by "Fix containerd drop-in config path", 02fe98ad).
NVIDIA_CTK_DROP_IN_DIRS = ("config.d", "conf.d")
NVIDIA_CTK_DROP_IN_NAME = "99-nvidia.toml"
NVIDIA_RUNTIME = "nvidia"  # nvidia-ctk's --nvidia-runtime-name default


def nvidia_ctk_drop_ins(path):
    """The drop-ins nvidia-ctk 1.18 writes for the main file at ``path``."""
    directory = os.path.dirname(path)
    return [os.path.join(directory, sub, NVIDIA_CTK_DROP_IN_NAME) for sub in NVIDIA_CTK_DROP_IN_DIRS]


def import_patterns(path):
    """The `imports` entries nvidia-ctk 1.18 adds for its drop-ins: their directory + /*.toml
    (config_drop_in.go, importPattern)."""
    return [os.path.join(os.path.dirname(drop_in), "*.toml") for drop_in in nvidia_ctk_drop_ins(path)]


def resolve_imports(parent, imports):
    """The files an `imports` list names, as containerd 1.6 resolves them (services/server/config/
    config.go, resolveImports): a pattern with * is globbed, any other path is taken relative to the
    importing file's directory."""
    if not isinstance(imports, list) or not all(isinstance(entry, str) for entry in imports):
        raise ConfigError("`imports` in %s is not a list of paths" % parent)
    found = []
    for entry in imports:
        if "*" in entry:
            found.extend(sorted(glob.glob(entry)))
        else:
            entry = os.path.normpath(entry)
            found.append(entry if os.path.isabs(entry) else os.path.join(os.path.dirname(parent), entry))
    return found


def read_text(path):
    try:
        with open(path) as stream:
            return stream.read()
    except (IOError, OSError) as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc))


def imported_files(path, doc):
    """Every file containerd would read after ``path``: its imports, theirs in turn, each once
    (containerd's LoadConfig follows imports of imported files, skipping one already loaded).
    Returns [(file, parsed)]."""
    seen = {path}
    pending = resolve_imports(path, doc.get("imports", []))
    files = []
    while pending:
        current = pending.pop(0)
        if current in seen or not os.path.exists(current):
            seen.add(current)
            continue
        seen.add(current)
        parsed = parse(read_text(current), "%s (imported by %s)" % (current, path))
        files.append((current, parsed))
        pending.extend(resolve_imports(current, parsed.get("imports", [])))
    return files


def cri_plugins(layout):
    """The plugin tables whose settings the module owns under ``layout``."""
    return sorted({keys[1] for keys in layout.values()})


def shadowing_drop_ins(path, doc, layout):
    """nvidia-ctk's drop-ins to remove, after refusing (with a ``layout``) any other imported file that
    sets a CRI plugin table: containerd before 2.1 replaces a plugin's whole table with each later file's
    (services/server/config/config.go, mergeConfig: "Replace entire sections"; containerd#5837)."""
    own = set(nvidia_ctk_drop_ins(path))
    for current, parsed in imported_files(path, doc) if layout is not None else []:
        if current in own:
            continue
        plugins = parsed.get("plugins", {})
        shadowing = [name for name in cri_plugins(layout) if hasattr(plugins, "get") and name in plugins]
        if shadowing:
            raise ConfigError("%s, imported by it, sets plugins.\"%s\", whose table replaces this file's own in containerd "
                              "before 2.1 (containerd#5837), so the settings this module sets would be shadowed; move its "
                              "settings into %s or remove it, then run again" % (current, shadowing[0], path))
    return [drop_in for drop_in in sorted(own) if os.path.exists(drop_in)]


def drop_nvidia_ctk_imports(doc, path, removed):
    """The `imports` entries nvidia-ctk added, taken out once nothing but its removed drop-ins
    matches them; an `imports` that this leaves empty goes too (nvidia-ctk added the key)."""
    imports = doc.get("imports")
    if not imports:
        return
    for index in reversed(range(len(imports))):
        entry = imports[index]
        if entry in import_patterns(path) and not [f for f in glob.glob(entry) if f not in removed]:
            del imports[index]
    if not imports:
        del doc["imports"]


def run_nvidia_ctk(module, text, set_as_default):
    """The runtime table tree nvidia-ctk configures for ``text``, run on drafts (the real files stay as
    they are): a document holding its runtime.

    From 1.18 nvidia-ctk writes the runtime to a drop-in (--drop-in-config, default conf.d/99-nvidia.toml)
    and only an `imports` line to the main file; `--drop-in-config=""` does not turn that off (it
    loses the runtime: see the notes). So a 1.18 nvidia-ctk is given a draft drop-in path as well,
    and the runtime is read from there. 1.17 knows no such flag ("flag provided but not defined")."""
    ctk = module.get_bin_path(module.params["nvidia_ctk_path"], required=True)
    rc, out, err = module.run_command([ctk, "runtime", "configure", "--help"], environ_update={"LC_ALL": "C"})
    drafts = tempfile.mkdtemp(prefix="containerd-config-")
    try:
        draft = os.path.join(drafts, "config.toml")
        drop_in = os.path.join(drafts, "conf.d", NVIDIA_CTK_DROP_IN_NAME)
        with open(draft, "w") as stream:
            stream.write(text)
        argv = [ctk, "runtime", "configure", "--runtime=containerd", "--config=" + draft]
        if "--drop-in-config" in (out + err):
            argv.append("--drop-in-config=" + drop_in)
        if set_as_default:
            argv.append("--set-as-default")
        rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C"})
        if rc != 0:
            raise ConfigError("nvidia-ctk runtime configure failed (rc %d): %s" % (rc, (err or out).strip()))
        written = drop_in if os.path.exists(drop_in) else draft
        return parse(read_text(written), "nvidia-ctk's output")
    finally:
        shutil.rmtree(drafts, ignore_errors=True)


def add_nvidia_runtime(module, text, layout, set_as_default):
    """The text with the runtime nvidia-ctk configures: its `nvidia` runtime table (and, as the
    default, default_runtime_name) taken from nvidia-ctk's draft into the file's own document.
    nvidia-ctk rewrites the whole file it is given, dropping its comments; the file keeps them."""
    configured = run_nvidia_ctk(module, text, set_as_default)
    doc = parse(text, "the merged file")
    runtime = get_path(configured, layout["runtimes"] + (NVIDIA_RUNTIME,))
    if runtime is None:
        raise ConfigError("nvidia-ctk runtime configure added no nvidia runtime under %s" % ".".join(layout["runtimes"]))
    runtimes = table_at(doc, layout["runtimes"])
    # Compared and copied as plain values: a table moved between documents keeps its indentation
    # trivia, which grows at each run, and tomlkit's own comparison sees that as a difference.
    wanted = runtime.unwrap()
    present = runtimes.get(NVIDIA_RUNTIME)
    if present is None or present.unwrap() != wanted:
        runtimes[NVIDIA_RUNTIME] = wanted
    default_keys = layout["runtimes"][:-1] + ("default_runtime_name",)
    default = get_path(configured, default_keys)
    if set_as_default and default is not None:
        set_value(doc, default_keys, default)
    return tomlkit.dumps(doc)


def remove_nvidia_runtime(doc, layout):
    """The `nvidia` runtime out of ``doc``, and default_runtime_name where it names it (containerd
    then falls back to its own default, runc)."""
    runtimes = get_path(doc, layout["runtimes"])
    if runtimes is not None and NVIDIA_RUNTIME in runtimes:
        del runtimes[NVIDIA_RUNTIME]
    containerd = get_path(doc, layout["runtimes"][:-1])
    if containerd is not None and containerd.get("default_runtime_name") == NVIDIA_RUNTIME:
        del containerd["default_runtime_name"]


def write(module, path, text, containerd):
    """Replace the file atomically, once containerd has read the new text without error."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    handle, staged = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=directory)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.chmod(staged, 0o644)
        containerd.check(staged)
        module.atomic_move(staged, path)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)


def state_present(module, before, containerd):
    """(text after, version, started_from_default, layout) with the kubelet's settings and the NVIDIA runtime."""
    params = module.params
    after, version, started_from_default = merge(before, params["sandbox_image"], containerd, params["cni_bin_dir"])
    if params["nvidia_runtime"]:
        after = add_nvidia_runtime(module, after, CRI_LAYOUT[version], params["nvidia_runtime_default"])
    return after, version, started_from_default, CRI_LAYOUT[version]


def state_absent(before):
    """(text after, version, False, layout) without the NVIDIA runtime; a file of a version the module
    never edits is left as it is."""
    doc = parse(before, "the existing file")
    version = doc.get("version", 1)
    layout = CRI_LAYOUT.get(version)
    if layout is not None:
        remove_nvidia_runtime(doc, layout)
    return tomlkit.dumps(doc), version, False, layout


def without_drop_ins(path, after, layout, refuse_shadowing):
    """(text, drop-ins to remove): nvidia-ctk's drop-ins and their `imports` entries out of ``after``.
    With ``refuse_shadowing``, another imported file that sets a CRI plugin table fails the module."""
    if not after:
        return after, [drop_in for drop_in in nvidia_ctk_drop_ins(path) if os.path.exists(drop_in)]
    doc = parse(after, "the new file")
    removed = shadowing_drop_ins(path, doc, layout if refuse_shadowing else None)
    drop_nvidia_ctk_imports(doc, path, removed)
    return tomlkit.dumps(doc), removed


def differs(before, after):
    """Whether a setting differs: tomlkit's dump of a document it parsed may move a nested table's
    indentation, which containerd does not read and which is not a change."""
    return not before or parse(after, "the new file").unwrap() != parse(before, "the existing file").unwrap()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/containerd/config.toml"),
            sandbox_image=dict(type="str"),
            cni_bin_dir=dict(type="str", default=""),
            nvidia_runtime=dict(type="bool", default=False),
            nvidia_runtime_default=dict(type="bool", default=False),
            containerd_path=dict(type="path", default="containerd"),
            nvidia_ctk_path=dict(type="path", default="nvidia-ctk"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
        ),
        required_if=[("state", "present", ["sandbox_image"])],
        supports_check_mode=True,
    )
    if tomlkit is None:
        module.fail_json(msg=missing_required_lib("tomlkit (python3-tomlkit)"), exception=TOMLKIT_IMPORT_ERROR)
    params = module.params
    path = params["path"]
    if params["nvidia_runtime_default"] and not params["nvidia_runtime"]:
        module.fail_json(msg="nvidia_runtime_default needs nvidia_runtime")
    present = params["state"] == "present"
    containerd = Containerd(module, module.get_bin_path(params["containerd_path"], required=True))
    before = after = ""
    version, started_from_default, layout = None, False, None
    try:
        before = after = read_text(path) if os.path.exists(path) else ""
        if present:
            after, version, started_from_default, layout = state_present(module, before, containerd)
        elif before:
            after, version, started_from_default, layout = state_absent(before)
        after, removed = without_drop_ins(path, after, layout, refuse_shadowing=present)
        if not differs(before, after):
            after = before
        diff = [{"before": before, "after": after, "before_header": path, "after_header": path}]
        diff += [{"before": read_text(drop_in), "after": "", "before_header": drop_in, "after_header": drop_in + " (removed)"}
                 for drop_in in removed]
        changed = after != before or bool(removed)
        if not module.check_mode:
            if after != before:
                write(module, path, after, containerd)
            for drop_in in removed:
                os.unlink(drop_in)
    except ConfigError as exc:
        module.fail_json(msg="%s: %s" % (path, exc))
    result = dict(changed=changed, path=path, version=version, started_from_default=started_from_default,
                  removed_drop_ins=removed, diff=diff)
    if present:
        result["sandbox_image"] = params["sandbox_image"]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
