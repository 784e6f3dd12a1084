"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Every command falls back to the embedded default and its synthetic body model (made once per module)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SATHMR_WEIGHTS", str(tmp_path_factory.mktemp("no_weights")))
        mp.setenv("SATHMR_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
