"""Measurement 4's baseline: pytest-xdist's own fixed cost, with no database at all."""

import pytest


@pytest.mark.parametrize("n", range(2))
def test_nothing(n):
    pass
