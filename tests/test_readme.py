"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def example(name: str) -> str:
    """The Python code between ``<!-- name -->`` and ``<!-- /name -->`` in the README."""
    text = README.read_text()
    match = re.search(rf"<!-- {name} -->\s*```python\n(.*?)```\s*<!-- /{name} -->", text, re.S)
    assert match, f"no {name} block in the README"
    return match.group(1)


@pytest.mark.usefixtures("pipeweave_inner_env")
def test_the_async_quick_start(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_readme_async=example("async-example"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2)


@pytest.mark.usefixtures("pipeweave_inner_env")
def test_the_module_data_example(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_readme_module=example("module-example"))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:asyncio", timeout=120
    )
    result.assert_outcomes(passed=4)


@pytest.mark.usefixtures("pipeweave_inner_env")
def test_the_sqlalchemy_recipe(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_readme_sqlalchemy=example("sqlalchemy-example"))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:asyncio", timeout=120
    )
    result.assert_outcomes(passed=2)
