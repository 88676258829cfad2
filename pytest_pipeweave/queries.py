"""The statements a test ran through the plugin's Databases, and assertions on their number
(pytest-django's ``django_assert_num_queries``, for plain SQL code)."""

from __future__ import annotations

from collections.abc import Iterator

from pipeweave_db import ExecutedStatement


class CapturedQueries:
    """The statements run while a capture was open, in order: ``len()``, iteration, indexing.

    Each has its SQL, its number of parameters (not their values) and its duration. The
    plugin's own statements (BEGIN, savepoints, resets) are not among them.
    """

    def __init__(self) -> None:
        self.statements: list[ExecutedStatement] = []

    def __len__(self) -> int:
        return len(self.statements)

    def __iter__(self) -> Iterator[ExecutedStatement]:
        return iter(self.statements)

    def __getitem__(self, index: int) -> ExecutedStatement:
        return self.statements[index]

    def listing(self) -> str:
        """The statements numbered from 1, one per line, as pytest-django's failures list them."""
        return "\n".join(
            f"{number}. {' '.join(s.sql.split())}"
            + (f"  [{s.params} parameter{'s' if s.params != 1 else ''}]" if s.params else "")
            + ("  (failed)" if s.failed else "")
            for number, s in enumerate(self.statements, 1)
        )

    def __repr__(self) -> str:
        return f"<CapturedQueries: {len(self)} statements>"


def count_mismatch(statements: CapturedQueries, count: int, *, exact: bool) -> str | None:
    """What a failed ``assert_num_queries`` says, or None when ``statements`` are as many as
    expected (no more than ``count``, unless ``exact``)."""
    done = len(statements)
    if done == count or (not exact and done < count):
        return None
    expected = f"{count}" if exact else f"at most {count}"
    return (
        f"Expected to perform {expected} queries but {done} were done\n\n"
        f"Queries:\n========\n\n{statements.listing() or '(none)'}"
    )
