from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser):
    # Not required: pytest must collect tests/build beside the other directories (make test-build passes both).
    parser.addoption("--installed", help="collections path the built tarball was installed into")
    parser.addoption("--tarball", help="the built collection tarball")


def _option(request, name: str) -> Path:
    value = request.config.getoption(name)
    if value is None:
        message = f"tests/build checks a built collection: give {name} (make test-build does)"
        if os.environ.get("CI") == "true":  # in CI a missing tarball is a broken target, never a skip
            pytest.fail(message)
        pytest.skip(message)
    return Path(value)


@pytest.fixture(scope="session")
def installed(request) -> Path:
    return _option(request, "--installed")


@pytest.fixture(scope="session")
def tarball(request) -> Path:
    return _option(request, "--tarball")
