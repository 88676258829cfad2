"""pg-promise's cardinality rules, shared by ``Database`` and ``AsyncDatabase``.

Each helper (``none``, ``one``, ``one_or_none``, ``many``, ``many_or_none``) allows a number of
rows; ``expect`` applies that rule to what a query returned, with the same error either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

from psycopg import sql

from pipeweave_db.errors import QueryResultError

Row: TypeAlias = dict[str, Any]
Query: TypeAlias = str | bytes | sql.SQL | sql.Composed
Params: TypeAlias = Sequence[Any] | Mapping[str, Any] | None
# A helper's name: what it returns, and how many rows it allows.
Kind: TypeAlias = Literal["none", "one", "one_or_none", "many", "many_or_none", "result"]

_ALLOWED = {
    "none": "no rows",
    "one": "one row",
    "one_or_none": "one row or none",
    "many": "one row or more",
}


def expect(kind: Kind, rows: list[Row], rowcount: int, query: Query) -> Any:
    """What helper ``kind`` returns for ``rows``, or QueryResultError when it allows no such
    number of rows."""
    count = len(rows)
    allowed = {
        "none": count == 0,
        "one": count == 1,
        "one_or_none": count <= 1,
        "many": count >= 1,
    }.get(kind, True)
    if not allowed:
        raise QueryResultError(_ALLOWED[kind], count, query_text(query))
    if kind == "none":
        return None
    if kind == "one":
        return rows[0]
    if kind == "one_or_none":
        return rows[0] if rows else None
    if kind == "result":
        return rowcount
    return rows


def query_text(query: Query) -> str:
    """``query`` as text, for error messages and statement observers."""
    if isinstance(query, bytes):
        return query.decode(errors="replace")
    if isinstance(query, str):
        return query
    try:
        return query.as_string()  # psycopg 3.2+: quoting without a connection
    except Exception:
        return repr(query)
