#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hosted·ai GPUaaS infrastructure developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: npu_info
short_description: Discover a node's Huawei Ascend NPUs, one entry per chip
version_added: "0.1.0"
description:
  - Lists every Ascend NPU chip with C(npu-smi), from the commands that print each field, as gpustack's
    Ascend detector reads them.
  - C(npu-smi info -l) gives the cards (NPU IDs) and how many chips each holds; C(npu-smi info -m) maps each
    card's chips to their chip logic IDs, and leaves out the board's MCU, which has no logic ID.
  - For each chip, C(npu-smi info -t board -i CARD -c CHIP) gives its name, C(npu-smi info -t usages -i CARD -c CHIP)
    its HBM capacity, and C(npu-smi info -t health -i CARD -c CHIP) its health.
  - An Atlas A2 card (910B) holds one chip; an Atlas A3 card (for example Atlas 800T A3) holds two, and both
    are listed.
  - A chip whose board, usages or health query fails is still listed, with that field null or C(unknown),
    and a warning that names the command and what npu-smi said.
  - Without C(npu-smi), falls back to the PCI bus and lists devices of Huawei's vendor id C(0x19e5)
    with the processing-accelerator class (one PCI function per chip); name, memory and health are then unknown.
author:
  - hosted·ai GPUaaS developers (@hostedai)
options:
  npu_smi_path:
    description: The npu-smi binary; found on C(PATH) (and C(/usr/local/sbin)) when not given.
    type: path
  sysfs_pci_path:
    description: Where the PCI devices are listed, for the fallback.
    type: path
    default: /sys/bus/pci/devices
notes:
  - Runs 2 + 3 x (number of chips) npu-smi commands; on a 16-chip A3 node that is 50 commands.
  - Sources of each parsing rule are cited beside it in the module's code and in docs/development.md.
extends_documentation_fragment:
  - hostedai.gpuaas.read_only
"""

EXAMPLES = r"""
- name: Discover Ascend NPU chips
  hostedai.gpuaas.npu_info:
  register: npu_scan

- name: Fail when any chip is not healthy
  ansible.builtin.assert:
    that: npu_scan.npus | rejectattr('health', 'equalto', 'OK') | list | length == 0

- name: Chips per card (1 on Atlas A2 / 910B, 2 on Atlas A3)
  ansible.builtin.debug:
    msg: "{{ npu_scan.npus | groupby('card_id') | map('last') | map('length') | list }}"
"""

RETURN = r"""
source:
  description: Where the NPUs were found, C(npu-smi), C(pci) or C(none).
  returned: always
  type: str
  sample: npu-smi
npu_count:
  description: How many NPU chips were found (not cards; an Atlas A3 card counts 2).
  returned: always
  type: int
  sample: 16
card_count:
  description: How many NPU cards C(npu-smi info -l) listed; null from the PCI fallback, 0 when none.
  returned: always
  type: int
  sample: 8
msg:
  description: One sentence saying what was found.
  returned: always
  type: str
  sample: "16 Ascend NPU chip(s) on 8 card(s) found with npu-smi"
npus:
  description: One entry per NPU chip, in chip logic ID order.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description:
        - The chip logic ID (C(npu-smi info -m)), unique on the host; the index runtimes and
          C(ASCEND_RT_VISIBLE_DEVICES) use. From the PCI fallback, the position on the bus.
      type: int
      returned: always
      sample: 0
    card_id:
      description: The card's NPU ID (the C(-i) of npu-smi); null from the PCI fallback.
      type: int
      returned: always
      sample: 0
    chip_id:
      description: The chip's ID on its card (the C(-c) of npu-smi); null from the PCI fallback.
      type: int
      returned: always
      sample: 0
    phy_id:
      description: The chip's physical ID (C(/dev/davinciN)) where C(npu-smi info -m) prints it (Atlas A3), else null.
      type: int
      returned: always
      sample: 0
    chip_name:
      description:
        - C(Chip Name) of C(npu-smi info -t board -i CARD -c CHIP), for example C(910B3) (A2) or C(Ascend910) (A3);
          the name C(npu-smi info -m) printed when the board query failed; null from the PCI fallback.
      type: str
      returned: always
      sample: 910B3
    npu_name:
      description: C(NPU Name) of the board query, which Atlas A3 prints (for example C(9392)); else null.
      type: str
      returned: always
      sample: "9392"
    memory_mb:
      description: C(HBM Capacity(MB)) of the chip's usages query; null when unknown or from the PCI fallback.
      type: int
      returned: always
      sample: 65536
    health:
      description: >-
        C(Health Status) of the chip's health query as npu-smi prints it (C(OK), C(Warning), C(Alarm),
        C(Critical) or C(UNKNOWN)), or C(unknown) when it could not be read.
      type: str
      returned: always
      sample: OK
    pci_address:
      description: C(PCIe Bus Info) of the board query where printed, or the PCI address from the fallback; else null.
      type: str
      returned: always
      sample: "0000:c1:00.0"
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule

HUAWEI_PCI_VENDOR = "0x19e5"
# PCI class 0x1200xx: processing accelerator (Ascend cards), not Huawei NICs.
ACCELERATOR_CLASS_PREFIX = "0x1200"
UNKNOWN_HEALTH = "unknown"
# The column names of `npu-smi info -m` that hold a space; any other word is a column of its own.
MAP_COLUMN = re.compile(r"NPU ID|Chip Logic ID|Chip Phy-ID|Chip ID|Chip Name|\S+")
# The keys of one chip's entry; every source fills all of them (None where it cannot tell).
ENTRY_KEYS = ("id", "card_id", "chip_id", "phy_id", "chip_name", "npu_name", "memory_mb", "health", "pci_address")


def key_values(text):
    """'Key : Value' lines, as npu-smi prints every 'info -l' and 'info -t TYPE' view, in order.

    Split on the first ':' only: values such as 'PCIe Bus Info : 0000:C1:00.0' hold colons
    (gpustack/gpustack gpustack/detectors/npu_smi/npu_smi.py, _parse_line_to_dict, also splits on the first ':').
    """
    pairs = []
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            pairs.append((key.strip(), value.strip()))
    return pairs


def parse_card_list(text):
    """`npu-smi info -l`: {NPU ID: Chip Count}, in the order listed.

    One 'NPU ID' line per card, then its 'Chip Count' (Huawei npu-smi reference, "查询所有NPU设备"
    npusmi_012; on Atlas A3, HDK A3 reference npusmia3_0014, 'Chip Count : 2'; a real 8-card 910B
    in yunionio/telegraf plugins/inputs/npu_smi/npu_smi_test.go, listOutput). 'Total Count' is not used:
    the cards themselves are counted. The old parser read chip name, memory and health here, which
    this view never prints.
    """
    cards, card = {}, None
    for key, value in key_values(text):
        if key == "NPU ID" and value.isdigit():
            card = int(value)
            cards[card] = None
        elif key == "Chip Count" and card is not None and value.isdigit():
            cards[card] = int(value)
    return cards


def parse_chip_map(text):
    """`npu-smi info -m`: one dict per compute chip (card_id, chip_id, id, phy_id, name).

    A header line, then one row per chip of every card (Huawei npu-smi reference,
    "查询所有芯片映射关系信息" npusmi_013). Columns are found by name in the header, because Atlas A3 adds a
    'Chip Phy-ID' column (vllm-project/vllm-ascend tests/ut/test_cpu_binding.py, test_get_npu_map_info);
    the last column, the chip name, may hold a space ('Ascend 910B3', gpustack/gpustack
    gpustack/detectors/npu_smi/npu_smi.py, decode_gpu_device_mapping).
    The MCU's row has '-' as its logic ID: it is not a compute chip and is left out, as gpustack
    (_parse_all_npu_chips_mapping) and gpustack/runtime gpustack_runtime/detector/ascend.py
    (_is_npu_device) leave it out. An NPU ID of -1 marks an unusable NPU whose row is invalid (npusmi_013).
    """
    columns, chips = None, []
    for line in text.splitlines():
        if columns is None:
            if "NPU ID" in line and "Chip ID" in line:
                columns = MAP_COLUMN.findall(line)
            continue
        fields = line.split(None, len(columns) - 1)
        if len(fields) < len(columns):
            continue
        row = dict(zip(columns, fields))
        card, chip, logic = row.get("NPU ID", ""), row.get("Chip ID", ""), row.get("Chip Logic ID", "")
        if not (card.isdigit() and chip.isdigit() and logic.isdigit()):
            continue
        phy = row.get("Chip Phy-ID", "")
        chips.append({"card_id": int(card), "chip_id": int(chip), "id": int(logic),
                      "phy_id": int(phy) if phy.isdigit() else None, "name": row.get("Chip Name")})
    return sorted(chips, key=lambda chip: chip["id"])


def parse_board(text):
    """`npu-smi info -t board -i CARD -c CHIP`: the chip's name, NPU name and PCI address.

    'Chip Name' is what gpustack reports as the device name (npu_smi.py, get_npu_chip_board_info);
    Atlas A2 prints 'Chip Type : Ascend' and 'Chip Name : 910B3', Atlas A3 prints 'NPU Name : 9392' and
    'Chip Name : Ascend910' (Huawei npu-smi reference "查询指定芯片信息" npusmi_009; the A3 form from a
    published CANN build guide's captured output). 'PCIe Bus Info' where printed (npusmi_009, gpustack's
    example output 1).
    """
    values = dict(key_values(text))
    bus = values.get("PCIe Bus Info")
    return {"chip_name": values.get("Chip Name") or None, "npu_name": values.get("NPU Name") or None,
            "pci_address": bus.lower() if bus and bus != "NA" else None}


def parse_memory_mb(text):
    """`npu-smi info -t usages -i CARD -c CHIP`: 'HBM Capacity(MB)' (910B and A3); a card without HBM
    (310P) prints 'DDR Capacity(MB)' instead, which gpustack takes when HBM is absent (npu_smi.py,
    _gather_gpu_info). Huawei npu-smi reference "查询指定芯片统计信息" npusmi_020; a real 910B's
    'HBM Capacity(MB) : 65536' in yunionio/telegraf plugins/inputs/npu_smi/npu_smi_test.go (usagesOutput).
    On 910B 'DDR Capacity(MB)' is printed as 0 beside the HBM line, so HBM is read first.
    """
    values = dict(key_values(text))
    for key in ("HBM Capacity(MB)", "DDR Capacity(MB)"):
        value = values.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def parse_health(text):
    """`npu-smi info -t health -i CARD -c CHIP`: 'Health Status', one of OK, Warning, Alarm, Critical or
    UNKNOWN (Huawei npu-smi reference "查询指定芯片健康状态" npusmi_028). Without -c the view prints
    'Health' per chip instead (npusmi_027); that form is read too, for a tool that answers so.
    """
    values = dict(key_values(text))
    return values.get("Health Status") or values.get("Health") or UNKNOWN_HEALTH


class NpuSmi:
    """Runs npu-smi with a C locale (its output is parsed) and keeps the warnings of failed queries."""

    def __init__(self, module, path):
        self.module, self.path, self.warnings = module, path, []

    def run(self, *args):
        rc, out, err = self.module.run_command([self.path] + list(args), environ_update={"LC_ALL": "C"})
        return rc, out, (err or out).strip()

    def required(self, *args):
        """A listing the scan cannot go on without: its failure fails the module in one sentence."""
        rc, out, said = self.run(*args)
        if rc != 0:
            self.module.fail_json(msg="npu-smi %s failed (rc %d): %s" % (" ".join(args), rc, said), rc=rc)
        return out

    def chip_query(self, view, card, chip):
        """One chip's view; None (and a warning) when npu-smi refuses it, so one bad chip does not hide the rest."""
        args = ("info", "-t", view, "-i", str(card), "-c", str(chip))
        rc, out, said = self.run(*args)
        if rc != 0:
            self.warnings.append("npu-smi %s failed (rc %d): %s" % (" ".join(args), rc, said))
            return None
        return out


def chip_entry(npu_smi, chip):
    """Everything the per-chip views tell about one chip of `npu-smi info -m`."""
    card, chip_id = chip["card_id"], chip["chip_id"]
    board = npu_smi.chip_query("board", card, chip_id)
    usages = npu_smi.chip_query("usages", card, chip_id)
    health = npu_smi.chip_query("health", card, chip_id)
    entry = dict.fromkeys(ENTRY_KEYS)
    entry.update(id=chip["id"], card_id=card, chip_id=chip_id, phy_id=chip["phy_id"], chip_name=chip["name"],
                 health=UNKNOWN_HEALTH)
    if board is not None:
        named = parse_board(board)
        entry.update(named, chip_name=named["chip_name"] or chip["name"])
    if usages is not None:
        entry["memory_mb"] = parse_memory_mb(usages)
    if health is not None:
        entry["health"] = parse_health(health)
    return entry


def check_chip_counts(cards, chips):
    """Warnings where `info -m` does not show each card of `info -l` with its 'Chip Count' chips."""
    found = {}
    for chip in chips:
        found[chip["card_id"]] = found.get(chip["card_id"], 0) + 1
    warnings = []
    for card, count in cards.items():
        if count is not None and found.get(card, 0) != count:
            warnings.append("npu-smi info -l says card %d holds %d chip(s); info -m maps %d" % (card, count, found.get(card, 0)))
    warnings += ["npu-smi info -m maps card %d, which info -l does not list" % card for card in sorted(set(found) - set(cards))]
    return warnings


def scan_npu_smi(module, path):
    npu_smi = NpuSmi(module, path)
    cards = parse_card_list(npu_smi.required("info", "-l"))
    chips = parse_chip_map(npu_smi.required("info", "-m")) if cards else []
    npus = [chip_entry(npu_smi, chip) for chip in chips]
    return cards, npus, check_chip_counts(cards, chips) + npu_smi.warnings


def scan_pci(sysfs):
    npus = []
    if not os.path.isdir(sysfs):
        return npus
    for address in sorted(os.listdir(sysfs)):
        try:
            with open(os.path.join(sysfs, address, "vendor")) as vendor:
                if vendor.read().strip().lower() != HUAWEI_PCI_VENDOR:
                    continue
            with open(os.path.join(sysfs, address, "class")) as device_class:
                if not device_class.read().strip().lower().startswith(ACCELERATOR_CLASS_PREFIX):
                    continue
        except (IOError, OSError):
            continue
        entry = dict.fromkeys(ENTRY_KEYS)
        entry.update(id=len(npus), health=UNKNOWN_HEALTH, pci_address=address)
        npus.append(entry)
    return npus


def main():
    module = AnsibleModule(
        argument_spec=dict(
            npu_smi_path=dict(type="path"),
            sysfs_pci_path=dict(type="path", default="/sys/bus/pci/devices"),
        ),
        supports_check_mode=True,
    )
    npu_smi = module.params["npu_smi_path"] or module.get_bin_path("npu-smi", opt_dirs=["/usr/local/sbin"])
    if npu_smi:
        cards, npus, warnings = scan_npu_smi(module, npu_smi)
        for warning in warnings:
            module.warn(warning)
        source, card_count = "npu-smi", len(cards)
        msg = "%d Ascend NPU chip(s) on %d card(s) found with npu-smi" % (len(npus), card_count)
    else:
        npus = scan_pci(module.params["sysfs_pci_path"])
        source, card_count = ("pci" if npus else "none"), None
        msg = ("%d Ascend NPU chip(s) found on the PCI bus (no npu-smi)" % len(npus) if npus
               else "No Ascend NPU on this host (no npu-smi, no Huawei accelerator on the PCI bus)")
    module.exit_json(changed=False, source=source, npu_count=len(npus), card_count=card_count, npus=npus, msg=msg)


if __name__ == "__main__":
    main()
