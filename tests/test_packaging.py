"""The installed package: its version is the distribution's, and CI tests the install."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import pytest

import fastmp

SOURCE_TREE = Path(__file__).resolve().parent.parent / "python"


def test_version_is_the_distributions():
    try:
        installed = metadata.version("fastmp")
    except metadata.PackageNotFoundError:
        pytest.skip("fastmp runs from a source tree, not an installed distribution")
    assert fastmp.__version__ == installed


def test_tests_import_the_installed_package():
    # .ci/run sets FASTMP_TEST_INSTALLED=1: the wheel or sdist it installed is
    # what runs, not python/fastmp of the checkout.
    if os.environ.get("FASTMP_TEST_INSTALLED") != "1":
        pytest.skip("only checked where CI installed a built artifact")
    where = Path(fastmp.__file__).resolve()
    assert SOURCE_TREE not in where.parents, where
    assert "site-packages" in where.parts, where
    assert Path(fastmp._fastmp.__file__).resolve().parent == where.parent
