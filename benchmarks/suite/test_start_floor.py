"""Measurement 9's floor: session start to the first test, pytest alone, a fixture doing nothing."""

import pytest


@pytest.fixture
def nothing():
    return None


def test_first(nothing):
    assert nothing is None
