from __future__ import annotations

import os

from module_runner import REPO, run_module

VGS = REPO / "tests/fleet/node_files/vgs"


def _vgs_on_path(tmp_path, line="gpuaas|1099511627776|412316860416"):
    """A PATH whose vgs answers LVM's JSON report for one volume group."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vg_file = tmp_path / "vg"
    vg_file.write_text(line + "\n")
    tool = bin_dir / "vgs"
    tool.write_text(VGS.read_text().replace("/etc/fake-lvm/vg", str(vg_file)))
    tool.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_reports_the_volume_group_and_filesystems(tmp_path):
    result = run_module("storage_info", {"volume_group": "gpuaas", "paths": ["/", str(tmp_path)]},
                        _vgs_on_path(tmp_path))

    assert result["changed"] is False
    assert result["volume_group"] == {"name": "gpuaas", "size_bytes": 1099511627776, "free_bytes": 412316860416,
                                      "used_bytes": 1099511627776 - 412316860416}
    assert [fs["path"] for fs in result["filesystems"]] == ["/", str(tmp_path)]
    root = os.statvfs("/")
    assert result["filesystems"][0]["size_bytes"] == root.f_blocks * root.f_frsize


def test_unknown_volume_group_fails_naming_it(tmp_path):
    result = run_module("storage_info", {"volume_group": "missing"}, _vgs_on_path(tmp_path))

    assert result["failed"] is True
    assert result["msg"] == "volume_group missing does not exist on this host"


def test_volume_group_without_lvm_tools(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_module("storage_info", {"volume_group": "gpuaas"}, {"PATH": str(empty)})

    assert result["failed"] is True
    assert result["msg"] == "volume_group gpuaas cannot be read: the LVM tools (vgs) are not installed"


def test_missing_path_is_named(tmp_path):
    result = run_module("storage_info", {"paths": [str(tmp_path / "nowhere")]}, _vgs_on_path(tmp_path))

    assert result["failed"] is True
    assert result["msg"] == f"paths: {tmp_path / 'nowhere'} does not exist on this host"
