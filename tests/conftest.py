"""Suite-wide collection order: the ``slow`` tests first.

The suite runs on pytest-xdist's workers (``addopts`` in pyproject.toml). A worker that draws a 100-second test
last keeps the whole suite waiting while the other idles; started first, the long tests overlap each other and
the short ones fill the gaps (longest-first scheduling). The order is stable inside each group, so a test's
neighbours stay those of its file.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
