import pytest


@pytest.fixture(autouse=True)
def _doctest_tmp(doctest_namespace, tmp_path):
    """Docstring examples write to `tmp`, a fresh folder per example."""
    doctest_namespace["tmp"] = tmp_path
