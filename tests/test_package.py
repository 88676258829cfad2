"""The public API of both packages, whose modules are imported on first use."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest

import pipeweave_db
import pytest_pipeweave


@pytest.mark.parametrize("package", [pipeweave_db, pytest_pipeweave], ids=lambda p: p.__name__)
def test_every_public_name_resolves(package: types.ModuleType) -> None:
    for name in package.__all__:
        value = getattr(package, name)
        assert vars(package)[name] is value, "kept, not looked up again"
    assert set(package.__all__) <= set(dir(package))


@pytest.mark.parametrize("package", [pipeweave_db, pytest_pipeweave], ids=lambda p: p.__name__)
def test_an_unknown_name_is_an_attribute_error(package: types.ModuleType) -> None:
    with pytest.raises(
        AttributeError, match=f"module '{package.__name__}' has no attribute 'nope'"
    ):
        package.nope  # noqa: B018
    assert not hasattr(package, "nope")


@pytest.mark.parametrize("package", [pipeweave_db, pytest_pipeweave], ids=lambda p: p.__name__)
def test_type_checkers_see_every_public_name(package: types.ModuleType) -> None:
    """The names are listed twice: imported for type checkers, and mapped for run time."""
    tree = ast.parse(Path(package.__file__ or "").read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    imported = {
        alias.name
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == set(package.__all__)
