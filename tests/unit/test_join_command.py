"""cluster_join's check of the join line, against what real kubeadm prints.

Ansible's `match` test is Python's re.match; the pattern is the role's (vars/main.yml).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

VARS = yaml.safe_load((Path(__file__).resolve().parents[2] / "roles/cluster_join/vars/main.yml").read_text())
PATTERN = VARS["cluster_join_command_start"] + VARS["cluster_join_command_end"]
TOKEN = "abcdef.0123456789abcdef"
HASH = "sha256:" + "0123456789abcdef" * 4


def matches(line: str) -> bool:
    return re.match(PATTERN, line) is not None


def test_the_line_real_kubeadm_prints_matches_with_its_trailing_space():
    # token.go: the template's "\\\n" and "\t" removed, then Fprintln; the command module
    # strips only the final newline, so the trailing space stays.
    assert matches(f"kubeadm join 10.89.0.11:6443 --token {TOKEN} --discovery-token-ca-cert-hash {HASH} ")


@pytest.mark.parametrize("line", [
    f"kubeadm join 10.89.0.11:6443 --token {TOKEN}  \t--discovery-token-ca-cert-hash {HASH}   ",
    f"kubeadm join [fd00::11]:6443 --token {TOKEN} --discovery-token-ca-cert-hash {HASH}",
    f"kubeadm join ctrl-01.example:6443 --token {TOKEN}\n--discovery-token-ca-cert-hash {HASH}\n",
])
def test_any_whitespace_between_the_arguments_matches(line):
    assert matches(line)


@pytest.mark.parametrize("line", [
    "",
    f"kubeadm join 10.89.0.11:6443 --token {TOKEN}",                                    # no CA pin
    f"kubeadm join 10.89.0.11:6443 --token ABCDEF.0123456789abcdef --discovery-token-ca-cert-hash {HASH}",
    f"kubeadm join 10.89.0.11:6443 --token {TOKEN} --discovery-token-ca-cert-hash sha256:abc",
    f"kubeadm join 10.89.0.11:6443 --token {TOKEN} --discovery-token-unsafe-skip-ca-verification",
    f"kubeadm join 10.89.0.11:6443 --token {TOKEN} --discovery-token-ca-cert-hash {HASH} --control-plane",
    # init's own output keeps the template's backslash continuation: split, it would pass "\\"
    f"kubeadm join 10.89.0.11:6443 --token {TOKEN} \\\n\t--discovery-token-ca-cert-hash {HASH} ",
    f"error: kubeadm join 10.89.0.11:6443 --token {TOKEN} --discovery-token-ca-cert-hash {HASH}",
])
def test_anything_else_is_refused(line):
    assert not matches(line)
