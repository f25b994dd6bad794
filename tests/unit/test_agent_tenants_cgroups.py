"""A process's Pod and container from its cgroup v2 line: a table of real-format lines for the
kubelet's systemd and cgroupfs drivers with containerd (cgroups.py cites the layouts), and
hostile or foreign lines, which are never attributed."""
from __future__ import annotations

import pytest
from gpuaas_agent.cgroups import ContainerCgroup, NotInPod, parse_cgroup_file, process_cgroup

UID = "0f2c7a8e-1b3d-4e5f-8a9b-0c1d2e3f4a5b"
U_ = UID.replace("-", "_")
CID = "4b1d" + "a" * 56 + "9c0e"
OTHER_UID, OTHER_CID = "11111111-2222-4333-8444-555555555555", "f" * 64
STATIC_UID = "6d1b6a3f" * 4  # a static Pod's UID: a hash, 32 hex digits
FOUND = ContainerCgroup(UID, CID)

CASES = [
    # (what, /proc/<pid>/cgroup, expected)
    ("systemd, Burstable", f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/cri-containerd-{CID}.scope\n", FOUND),
    ("systemd, BestEffort", f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice/cri-containerd-{CID}.scope", FOUND),
    ("systemd, Guaranteed: directly under kubepods.slice", f"0::/kubepods.slice/kubepods-pod{U_}.slice/cri-containerd-{CID}.scope", FOUND),
    ("systemd, a static Pod's hashed UID", f"0::/kubepods.slice/kubepods-pod{STATIC_UID}.slice/cri-containerd-{CID}.scope",
     ContainerCgroup(STATIC_UID, CID)),
    ("systemd, a cgroup the container made under its own stays its own",
     f"0::/kubepods.slice/kubepods-pod{U_}.slice/cri-containerd-{CID}.scope/init.scope", FOUND),
    ("cgroupfs, Burstable", f"0::/kubepods/burstable/pod{UID}/{CID}", FOUND),
    ("cgroupfs, BestEffort", f"0::/kubepods/besteffort/pod{UID}/{CID}", FOUND),
    ("cgroupfs, Guaranteed", f"0::/kubepods/pod{UID}/{CID}", FOUND),
    ("the kubelet's --cgroup-root before kubepods", f"0::/nodes/gpu1/kubepods/burstable/pod{UID}/{CID}", FOUND),
    ("a mixed v1/v2 host: only the 0:: line counts",
     f"12:memory:/somewhere/else\n1:name=systemd:/kubepods/pod{OTHER_UID}/{OTHER_CID}\n0::/kubepods/pod{UID}/{CID}\n", FOUND),
    ("a nested claim of another Pod is still the first Pod's",
     f"0::/kubepods/pod{UID}/{CID}/kubepods/pod{OTHER_UID}/{OTHER_CID}", FOUND),
]
REFUSED = [
    ("a host service", "0::/system.slice/gpuaas-agent.service\n", "not in a Pod's cgroup"),
    ("a user's session", "0::/user.slice/user-1000.slice/session-3.scope", "not in a Pod's cgroup"),
    ("cgroup v1 only: no 0:: line", f"4:memory:/kubepods/pod{UID}/{CID}\n", "no cgroup v2"),
    ("two 0:: lines", f"0::/kubepods/pod{UID}/{CID}\n0::/kubepods/pod{OTHER_UID}/{OTHER_CID}\n", "more than one"),
    ("empty", "", "no cgroup v2"),
    ("a Pod's own cgroup, not a container's (the Pod's cgroup itself)", f"0::/kubepods/burstable/pod{UID}", "not a container"),
    ("systemd: the UID with - (systemd escapes it as _)",
     f"0::/kubepods.slice/kubepods-pod{UID}.slice/cri-containerd-{CID}.scope", "not a container"),
    ("cgroupfs: the UID with _", f"0::/kubepods/pod{U_}/{CID}", "not a container"),
    ("systemd: the QoS of the slice and of the Pod disagree",
     f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{U_}.slice/cri-containerd-{CID}.scope", "not a container"),
    ("an unknown QoS level", f"0::/kubepods/guaranteed/pod{UID}/{CID}", "not a container"),
    ("a container ID that is not 64 hex digits", f"0::/kubepods/pod{UID}/{CID[:-1]}", "not a container"),
    ("a container ID in capitals", f"0::/kubepods/pod{UID}/{CID.upper()}", "not a container"),
    ("another runtime's scope (docker-)", f"0::/kubepods.slice/kubepods-pod{U_}.slice/docker-{CID}.scope", "not a container"),
    ("a removed cgroup", f"0::/kubepods/pod{UID}/{CID} (deleted)", "not a container"),
    ("a relative path", f"0::kubepods/pod{UID}/{CID}", "not a cgroup path"),
    ("dot-dot", f"0::/kubepods/pod{UID}/../pod{OTHER_UID}/{CID}", "not a container"),
    ("kubepods only as part of a name", f"0::/my-kubepods/pod{UID}/{CID}", "not in a Pod's cgroup"),
]


@pytest.mark.parametrize("what,text,expected", CASES, ids=[case[0] for case in CASES])
def test_a_containers_cgroup_names_its_pod_and_container(what, text, expected):
    assert parse_cgroup_file(text) == expected, what


@pytest.mark.parametrize("what,text,reason", REFUSED, ids=[case[0] for case in REFUSED])
def test_anything_else_is_not_in_a_pod(what, text, reason):
    found = parse_cgroup_file(text)
    assert isinstance(found, NotInPod) and reason in found.reason, (what, found)


def test_a_cgroup_that_cannot_be_read_is_unknown_never_guessed(tmp_path):
    (tmp_path / "41").mkdir()
    (tmp_path / "41" / "cgroup").mkdir()  # not a file: reading it fails
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(f"0::/kubepods/pod{UID}/{CID}\n")  # the positive control
    for pid in (40, 41):  # 40: gone (no /proc/40)
        found = process_cgroup(str(tmp_path), pid)
        assert isinstance(found, NotInPod) and "cannot be read" in found.reason
    assert process_cgroup(str(tmp_path), 42) == FOUND
