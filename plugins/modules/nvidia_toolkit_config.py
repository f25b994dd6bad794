#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_toolkit_config
short_description: Set top-level settings in the NVIDIA container toolkit's config.toml, keeping everything else
version_added: "0.1.0"
description:
  - Edits C(/etc/nvidia-container-runtime/config.toml) in place, with a TOML parser that keeps its comments, order and
    every setting it is not given.
  - The settings are the file's top-level keys, where the toolkit reads them (nvidia-container-toolkit
    C(internal/config/config.go), C(Config)), for example C(accept-nvidia-visible-devices-as-volume-mounts) and
    C(accept-nvidia-visible-devices-envvar-when-unprivileged).
  - A missing file is created with the settings alone; the toolkit takes its defaults for every key a file leaves out
    (C(internal/config/toml.go), the file is read over C(GetDefault)).
  - A file that is not TOML is left untouched, and the module fails saying where it could not be read.
  - Needs the C(tomlkit) Python library on the node (Debian and Ubuntu C(python3-tomlkit)).
author:
  - hosted·ai GPUaaS developers (@hostedai)
options:
  path:
    description: The toolkit's configuration file.
    type: path
    default: /etc/nvidia-container-runtime/config.toml
  settings:
    description:
      - Top-level keys and their values (booleans, numbers or strings).
      - A key that names a table in the file is refused.
    type: dict
    required: true
attributes:
  check_mode:
    support: full
    description: Reports whether the file would change and shows how, and writes nothing.
  diff_mode:
    support: full
    description: Shows the file before and after.
  idempotent:
    support: full
    description: A second run with the same settings changes nothing.
requirements:
  - tomlkit (Debian 12 C(python3-tomlkit) 0.11.7 or newer)
"""

EXAMPLES = r"""
- name: Take GPUs only from the device plugin's mounts, never from an unprivileged container's variable
  hostedai.gpuaas.nvidia_toolkit_config:
    settings:
      accept-nvidia-visible-devices-as-volume-mounts: true
      accept-nvidia-visible-devices-envvar-when-unprivileged: false
"""

RETURN = r"""
path:
  description: The configuration file.
  returned: always
  type: str
  sample: /etc/nvidia-container-runtime/config.toml
changed_keys:
  description: The keys whose value was (or, in check mode, would be) set.
  returned: always
  type: list
  elements: str
  sample: [accept-nvidia-visible-devices-envvar-when-unprivileged]
"""

import os
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

SCALARS = (bool, int, float, str)


def read(module, path):
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        module.fail_json(msg=f"{path}: cannot be read ({error}); it was left untouched")


def parse(module, path, text):
    try:
        return tomlkit.parse(text)
    except TOMLKitError as error:
        module.fail_json(msg=f"{path}: not TOML ({' '.join(str(error).split())}); it was left untouched")


def apply(module, path, document, settings):
    """Set each setting that differs; return the keys that changed."""
    plain = document.unwrap()
    changed = []
    for key, value in settings.items():
        if not isinstance(value, SCALARS):
            module.fail_json(msg=f"settings.{key} must be a boolean, a number or a string")
        current = plain.get(key)
        if isinstance(current, (dict, list)):
            module.fail_json(msg=f"{path}: {key} is not a top-level setting of one value; it was left untouched")
        # A value of another type is a change too (true is not the string "true").
        if type(current) is not type(value) or current != value:
            document[key] = value
            changed.append(key)
    return changed


def write(module, path, text):
    """Write through a temporary file in the same directory, keeping the file's mode and owner."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.gpuaas-tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    if os.path.exists(path):
        module.atomic_move(temporary, path, unsafe_writes=False)
    else:
        os.chmod(temporary, 0o644)
        module.atomic_move(temporary, path)


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "default": "/etc/nvidia-container-runtime/config.toml"},
            "settings": {"type": "dict", "required": True},
        },
        supports_check_mode=True,
    )
    if tomlkit is None:
        module.fail_json(msg=missing_required_lib("tomlkit"), exception=TOMLKIT_IMPORT_ERROR)
    path = module.params["path"]
    before = read(module, path)
    document = parse(module, path, before or "")
    changed_keys = apply(module, path, document, module.params["settings"])
    after = tomlkit.dumps(document)
    result = {"changed": bool(changed_keys), "path": path, "changed_keys": changed_keys}
    if module._diff:
        result["diff"] = {"before": before or "", "after": after, "before_header": path, "after_header": path}
    if changed_keys and not module.check_mode:
        write(module, path, after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
