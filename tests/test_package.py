"""The public API of both packages, whose modules are imported on first use."""

from __future__ import annotations

import ast
import re
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


# -- layers: plugin -> ephemeral servers -> library ------------------------------------------

ROOT = Path(__file__).parents[1]
PLUGIN_LAYER = {"plugin", "fixtures", "session", "factories", "seed"}


def modules(package: str) -> dict[str, ast.Module]:
    """Every module of ``package`` by its dotted name, parsed."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text())
    return found


def imported(tree: ast.Module) -> set[str]:
    """The dotted names a module imports anywhere (in functions too), ``module.name`` for
    ``from module import name``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_library_imports_the_test_package_only_in_the_dev_command() -> None:
    users = {
        name
        for name, tree in modules("pipeweave_db").items()
        if any(i.startswith("pytest_pipeweave") for i in imported(tree))
    }
    assert users == {"pipeweave_db.cli.dev"}


def test_no_module_imports_a_private_name_of_the_other_package() -> None:
    for package, other in (
        ("pipeweave_db", "pytest_pipeweave"),
        ("pytest_pipeweave", "pipeweave_db"),
    ):
        for name, tree in modules(package).items():
            private = [
                i
                for i in imported(tree)
                if i.startswith(other) and any(p.startswith("_") for p in i.split("."))
            ]
            assert private == [], name


def test_the_ephemeral_layer_imports_neither_pytest_nor_the_plugin() -> None:
    for name, tree in modules("pytest_pipeweave").items():
        if name == "pytest_pipeweave" or name.split(".")[-1] in PLUGIN_LAYER:
            continue  # the package's __init__ exports both layers
        wrong = {
            i
            for i in imported(tree)
            if i.split(".")[0] == "pytest"
            or any(i.startswith(f"pytest_pipeweave.{m}") for m in PLUGIN_LAYER)
        }
        assert wrong == set(), name


def test_backend_decisions_stay_in_the_backends() -> None:
    branch = re.compile(r"""backend\s*(==|!=|in)\s*[(\[{]?\s*["'](local|docker|url)["']""")
    for path in (ROOT / "pytest_pipeweave").rglob("*.py"):
        if "servers" not in path.parts:
            assert not branch.search(path.read_text()), path
