"""npu_info against npu-smi output as published (npu_smi_samples.yml, sources cited there) for an Atlas
800T A2 (8 x 910B3) and an Atlas 800T A3 (8 cards x 2 chips), and against the fleet's npu-smi stand-in.

The samples are replayed by a small npu-smi that answers exactly the captured invocations and
refuses any other, so the module is proven to ask for each field where npu-smi prints it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from module_runner import REPO, run_module

NPU_SMI = REPO / "tests/fleet/node_files/npu-smi"
SAMPLES = yaml.safe_load((Path(__file__).parent / "npu_smi_samples.yml").read_text())
HOSTS = {  # cards, chips per card, layout: what each sample host has
    "A2": {"cards": 8, "chips": 1, "name": "910B3", "npu_name": None},
    "A3": {"cards": 8, "chips": 2, "name": "Ascend910", "npu_name": "9392"},
}
MEMORY_MB = 65536

REPLAY = '''#!{python}
import json, sys
answers = json.load(open({answers!r}))
with open({log!r}, "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
rc, out, err = answers.get(" ".join(sys.argv[1:]), [2, "", "replay: not captured: " + " ".join(sys.argv[1:])])
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(rc)
'''


def captured(layout: str, health: dict | None = None, memory: dict | None = None) -> dict:
    """{invocation: [rc, stdout, stderr]} of a sample host; health/memory: {(card, chip): value} overrides."""
    host, low = HOSTS[layout], layout.lower()
    answers = {"info -l": [0, SAMPLES[f"list_{low}"], ""], "info -m": [0, SAMPLES[f"map_{low}"], ""]}
    for card in range(host["cards"]):
        for chip in range(host["chips"]):
            fill = {"card": card, "chip": chip, "bus": f"0000:{0xC1 + card:02X}:00.0",
                    "memory_mb": (memory or {}).get((card, chip), MEMORY_MB),
                    "health": (health or {}).get((card, chip), "OK")}
            for view in ("board", "usages", "health"):
                template = SAMPLES[f"board_{low}"] if view == "board" else SAMPLES[view]
                answers[f"info -t {view} -i {card} -c {chip}"] = [0, template.format(**fill), ""]
    return answers


def replayer(tmp_path: Path, answers: dict) -> Path:
    """An npu-smi that answers ``answers`` and writes each invocation to tmp_path/calls.log."""
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    tool = tmp_path / "npu-smi"
    tool.write_text(REPLAY.format(python=sys.executable, answers=str(tmp_path / "answers.json"),
                                  log=str(tmp_path / "calls.log")))
    tool.chmod(0o755)
    return tool


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


def standin(tmp_path: Path, profile: str) -> Path:
    """The fleet's npu-smi stand-in, reading ``profile`` instead of /etc/fake-npu/profile."""
    (tmp_path / "profile").write_text(profile)
    tool = tmp_path / "npu-smi"
    tool.write_text(NPU_SMI.read_text().replace("/etc/fake-npu/profile", str(tmp_path / "profile")))
    tool.chmod(0o755)
    return tool


def profile_of(layout: str) -> str:
    host = HOSTS[layout]
    lines = [f"layout={layout}"] + ([f"npu_name={host['npu_name']}"] if host["npu_name"] else [])
    lines += [f"{card}|{chip}|{host['name']}|{MEMORY_MB}|OK" for card in range(host["cards"]) for chip in range(host["chips"])]
    return "\n".join(lines) + "\n"


def warnings_of(result: dict) -> list[str]:
    """The module's warnings as text (ansible-core 2.19 wraps each in a WarningSummary)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


def wrong_with(result: dict, layout: str) -> list[str]:
    """What a scan of a sample host got wrong: every chip counted, named, sized and its health read."""
    host = HOSTS[layout]
    count = host["cards"] * host["chips"]
    wrong = []
    if result.get("npu_count") != count or len(result.get("npus", [])) != count:
        wrong.append(f"counted {result.get('npu_count')} chips, not {count}")
    npus = result.get("npus", [])
    if [npu.get("id") for npu in npus] != list(range(count)):
        wrong.append("ids are not the chip logic IDs 0..%d" % (count - 1))
    if [(npu.get("card_id"), npu.get("chip_id")) for npu in npus] != [
            (card, chip) for card in range(host["cards"]) for chip in range(host["chips"])]:
        wrong.append("card and chip IDs are not each card's chips")
    for field, expected in (("chip_name", host["name"]), ("memory_mb", MEMORY_MB), ("health", "OK"),
                            ("npu_name", host["npu_name"])):
        if {npu.get(field) for npu in npus} != {expected}:
            wrong.append(f"{field}: {sorted({str(npu.get(field)) for npu in npus})}, not {expected}")
    return wrong


@pytest.mark.parametrize("layout", ["A2", "A3"])
def test_every_chip_of_the_published_samples_is_counted_named_sized_and_its_health_read(tmp_path, layout):
    tool = replayer(tmp_path, captured(layout))

    result = run_module("npu_info", {"npu_smi_path": str(tool)})

    assert result["source"] == "npu-smi" and not result.get("warnings"), result
    assert wrong_with(result, layout) == []
    assert result["card_count"] == 8
    assert result["msg"] == "%d Ascend NPU chip(s) on 8 card(s) found with npu-smi" % (8 * HOSTS[layout]["chips"])
    # Each field from the view that prints it, and nothing else asked (the replay refuses the rest).
    chips = [(card, chip) for card in range(8) for chip in range(HOSTS[layout]["chips"])]
    assert calls(tmp_path) == ["info -l", "info -m"] + [
        f"info -t {view} -i {card} -c {chip}" for card, chip in chips for view in ("board", "usages", "health")]


def test_an_a3_card_is_two_chips_with_their_physical_ids(tmp_path):
    tool = replayer(tmp_path, captured("A3"))

    npus = run_module("npu_info", {"npu_smi_path": str(tool)})["npus"]

    assert npus[:3] == [
        {"id": 0, "card_id": 0, "chip_id": 0, "phy_id": 0, "chip_name": "Ascend910", "npu_name": "9392",
         "memory_mb": 65536, "health": "OK", "pci_address": None},
        {"id": 1, "card_id": 0, "chip_id": 1, "phy_id": 1, "chip_name": "Ascend910", "npu_name": "9392",
         "memory_mb": 65536, "health": "OK", "pci_address": None},
        {"id": 2, "card_id": 1, "chip_id": 0, "phy_id": 2, "chip_name": "Ascend910", "npu_name": "9392",
         "memory_mb": 65536, "health": "OK", "pci_address": None},
    ]


def test_a_910b_chip_has_its_board_name_and_bus_address(tmp_path):
    tool = replayer(tmp_path, captured("A2"))

    npus = run_module("npu_info", {"npu_smi_path": str(tool)})["npus"]

    assert npus[7] == {"id": 7, "card_id": 7, "chip_id": 0, "phy_id": None, "chip_name": "910B3", "npu_name": None,
                       "memory_mb": 65536, "health": "OK", "pci_address": "0000:c8:00.0"}


def test_each_chip_has_its_own_health_and_memory(tmp_path):
    tool = replayer(tmp_path, captured("A3", health={(3, 1): "Alarm", (5, 0): "Warning"}, memory={(6, 1): 32768}))

    npus = run_module("npu_info", {"npu_smi_path": str(tool)})["npus"]

    assert {npu["id"]: npu["health"] for npu in npus if npu["health"] != "OK"} == {7: "Alarm", 10: "Warning"}
    assert {npu["id"]: npu["memory_mb"] for npu in npus if npu["memory_mb"] != MEMORY_MB} == {13: 32768}


def test_a_chip_whose_views_fail_is_still_listed_with_a_warning(tmp_path):
    answers = captured("A2")
    answers["info -t health -i 2 -c 0"] = [1, "", "query failed"]
    answers["info -t usages -i 2 -c 0"] = [1, "", "query failed"]
    answers["info -t board -i 2 -c 0"] = [1, "", "query failed"]
    tool = replayer(tmp_path, answers)

    result = run_module("npu_info", {"npu_smi_path": str(tool)})

    assert result["npu_count"] == 8
    assert result["npus"][2] == {"id": 2, "card_id": 2, "chip_id": 0, "phy_id": None, "chip_name": "Ascend 910B3",
                                 "npu_name": None, "memory_mb": None, "health": "unknown", "pci_address": None}
    expected = [f"npu-smi info -t {view} -i 2 -c 0 failed (rc 1): query failed" for view in ("board", "usages", "health")]
    assert warnings_of(result) == expected


def test_a_card_that_the_map_misses_is_named(tmp_path):
    answers = captured("A3")
    kept = [line for line in SAMPLES["map_a3"].splitlines() if line.split()[:2] != ["7", "1"]]
    answers["info -m"][1] = "\n".join(kept)
    tool = replayer(tmp_path, answers)

    result = run_module("npu_info", {"npu_smi_path": str(tool)})

    assert result["npu_count"] == 15
    assert warnings_of(result) == ["npu-smi info -l says card 7 holds 2 chip(s); info -m maps 1"]


@pytest.mark.parametrize("listing", ["info -l", "info -m"])
def test_a_failed_listing_fails_in_one_sentence(tmp_path, listing):
    answers = captured("A2")
    answers[listing] = [8, "", "dcmi module initialize failed. ret is -8005"]
    tool = replayer(tmp_path, answers)

    result = run_module("npu_info", {"npu_smi_path": str(tool)})

    assert result["failed"] is True
    assert result["msg"] == f"npu-smi {listing} failed (rc 8): dcmi module initialize failed. ret is -8005"


def test_no_card_listed_is_no_npu_and_no_further_query(tmp_path):
    tool = replayer(tmp_path, {"info -l": [0, "        Total Count                    : 0\n", ""]})

    result = run_module("npu_info", {"npu_smi_path": str(tool)})

    assert (result["source"], result["npu_count"], result["card_count"], result["npus"]) == ("npu-smi", 0, 0, [])
    assert calls(tmp_path) == ["info -l"]


def read_info_l_only(text: str) -> dict:
    """The parsing this module had before (its one rule): every field from `npu-smi info -l`."""
    npus, current = [], None
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, value = [part.strip() for part in line.split(":", 1)]
        if key == "NPU ID":
            current = {"id": int(value), "chip_name": None, "memory_mb": None, "health": "unknown"}
            npus.append(current)
        elif current is not None and key == "Chip Name":
            current["chip_name"] = value
        elif current is not None and key.startswith("HBM Capacity"):
            current["memory_mb"] = int(value)
        elif current is not None and key == "Health":
            current["health"] = value
    return {"npu_count": len(npus), "npus": npus}


@pytest.mark.parametrize("layout", ["A2", "A3"])
def test_positive_control_reading_info_l_alone_fails_the_same_checks(layout):
    wrong = wrong_with(read_info_l_only(SAMPLES[f"list_{layout.lower()}"]), layout)

    assert any(item.startswith("chip_name") for item in wrong)
    assert any(item.startswith("memory_mb") for item in wrong)
    assert any(item.startswith("health: ['unknown']") for item in wrong)
    assert (any(item.startswith("counted 8 chips, not 16") for item in wrong)) == (layout == "A3")


# ----------------------------------------------------------------------------- the fleet's stand-in

@pytest.mark.parametrize("layout", ["A2", "A3"])
def test_the_standin_prints_the_published_samples(tmp_path, layout):
    tool, low = standin(tmp_path, profile_of(layout)), layout.lower()

    def run(*args):
        done = subprocess.run([str(tool), *args], capture_output=True, text=True, check=True)
        return done.stdout

    assert run("info", "-l").strip("\n") == SAMPLES[f"list_{low}"].strip("\n")
    assert run("info", "-m").strip("\n") == SAMPLES[f"map_{low}"].strip("\n")
    fill = {"card": 3, "chip": 0, "memory_mb": MEMORY_MB, "health": "OK", "bus": "0000:C4:00.0"}
    assert run("info", "-t", "usages", "-i", "3", "-c", "0") == SAMPLES["usages"].format(**fill)
    assert run("info", "-t", "health", "-i", "3", "-c", "0") == SAMPLES["health"].format(**fill)
    # The board view: the lines the samples publish come in the samples' order (identifiers aside).
    board = run("info", "-t", "board", "-i", "3", "-c", "0").splitlines()
    published = [line for line in SAMPLES[f"board_{low}"].format(**fill).splitlines() if "ID" not in line.split(":")[0]
                 or "NPU ID" in line or "Chip ID" in line]
    assert [line for line in board if line in published] == published


@pytest.mark.parametrize("layout", ["A2", "A3"])
def test_the_module_reads_the_standin_as_it_reads_the_samples(tmp_path, layout):
    result = run_module("npu_info", {"npu_smi_path": str(standin(tmp_path, profile_of(layout)))})

    assert wrong_with(result, layout) == [] and not result.get("warnings"), result


@pytest.mark.parametrize("args, word", [
    (["info"], "not one of the invocations"),
    (["info", "-t", "board", "-i", "0"], "not one of the invocations"),  # real, but npu_info never asks it
    (["info", "-t", "memory", "-i", "0", "-c", "0"], "not one of the invocations"),
    (["info", "-t", "board", "-i", "8", "-c", "0"], "no NPU with ID 8"),
    (["info", "-t", "health", "-i", "x", "-c", "0"], "no NPU with ID x"),
    (["info", "-t", "board", "-i", "0", "-c", "2"], "has no compute chip 2"),
    (["info", "-t", "usages", "-i", "0", "-c", "1"], "usages of the MCU"),
], ids=["bare-info", "board-without-chip", "other-view", "unknown-card", "bad-card", "unknown-chip", "mcu-usages"])
def test_the_standin_refuses_what_it_does_not_model_and_ids_the_board_lacks(tmp_path, args, word):
    tool = standin(tmp_path, profile_of("A2"))

    done = subprocess.run([str(tool), *args], capture_output=True, text=True, check=False)

    assert done.returncode != 0 and done.stdout == "" and word in done.stderr


def test_the_standin_without_a_profile_is_a_host_without_a_board(tmp_path):
    tool = standin(tmp_path, "")
    (tmp_path / "profile").unlink()

    result = run_module("npu_info", {"npu_smi_path": str(tool)})

    assert result["failed"] is True and result["msg"].startswith("npu-smi info -l failed (rc 1)")


def _pci_device(root: Path, address: str, vendor: str, device_class: str) -> None:
    device = root / address
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
    (device / "class").write_text(device_class + "\n")


def test_falls_back_to_huawei_accelerators_on_the_pci_bus(tmp_path):
    sysfs = tmp_path / "devices"
    _pci_device(sysfs, "0000:c1:00.0", "0x19e5", "0x120000")  # Ascend accelerator
    _pci_device(sysfs, "0000:81:00.0", "0x19e5", "0x020000")  # Huawei NIC: not an NPU
    _pci_device(sysfs, "0000:18:00.0", "0x10de", "0x030200")  # NVIDIA GPU

    result = run_module("npu_info", {"sysfs_pci_path": str(sysfs)}, {"PATH": "/usr/bin:/bin"})

    assert result["source"] == "pci" and result["card_count"] is None
    assert result["npus"] == [{"id": 0, "card_id": None, "chip_id": None, "phy_id": None, "chip_name": None,
                               "npu_name": None, "memory_mb": None, "health": "unknown", "pci_address": "0000:c1:00.0"}]
    assert result["msg"] == "1 Ascend NPU chip(s) found on the PCI bus (no npu-smi)"


def test_host_without_npus(tmp_path):
    result = run_module("npu_info", {"sysfs_pci_path": str(tmp_path / "none")}, {"PATH": "/usr/bin:/bin"})

    assert result["source"] == "none"
    assert result["npu_count"] == 0
    assert not result.get("failed")
    assert result["msg"].startswith("No Ascend NPU on this host")
