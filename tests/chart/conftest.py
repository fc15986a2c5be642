"""Chart test fixtures: the pinned helm binaries must exist (make tools builds them)."""

from __future__ import annotations

import pytest

from tests.chart.helpers import helm_bin


@pytest.fixture(scope="session")
def helm3() -> str:
    return helm_bin(3)


@pytest.fixture(scope="session")
def helm4() -> str:
    return helm_bin(4)
