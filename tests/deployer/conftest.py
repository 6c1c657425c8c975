"""Fixtures for the deployer plugin tests: small real charts and spec documents."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from component_docs import BASE_DOC

from deployer_plugin import package_chart

CHARTS = Path(__file__).parent / "charts"



@pytest.fixture
def doc() -> dict[str, Any]:
    """A valid Component document, fresh for each test to modify."""
    return copy.deepcopy(BASE_DOC)


@pytest.fixture(scope="session")
def good_archive() -> bytes:
    return package_chart(CHARTS / "good")


@pytest.fixture(scope="session")
def broken_archive() -> bytes:
    return package_chart(CHARTS / "broken")


@pytest.fixture(scope="session")
def schema_archive() -> bytes:
    return package_chart(CHARTS / "schema")


@pytest.fixture(scope="session")
def generated_archive() -> bytes:
    """A chart that generates its password unless lookup finds it, with hooks, a test hook and NOTES.txt."""
    return package_chart(CHARTS / "generated")


@pytest.fixture
def copy_chart(tmp_path: Path) -> Callable[[str, Path | None], Path]:
    """Copy a test chart somewhere under tmp_path, so a test may change it."""

    def copy_to(name: str, dest: Path | None = None) -> Path:
        target = dest if dest is not None else tmp_path / name
        shutil.copytree(CHARTS / name, target)
        return target

    return copy_to
