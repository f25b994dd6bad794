from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--installed", required=True, help="collections path the built tarball was installed into")
    parser.addoption("--tarball", required=True, help="the built collection tarball")


@pytest.fixture(scope="session")
def installed(request) -> Path:
    return Path(request.config.getoption("--installed"))


@pytest.fixture(scope="session")
def tarball(request) -> Path:
    return Path(request.config.getoption("--tarball"))
