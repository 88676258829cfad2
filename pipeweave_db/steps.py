"""Database work written once, and run by a ``Database`` or an ``AsyncDatabase``.

A step function is a generator: it yields what to run, a ``Statement`` (a query and the helper
that runs it) or a ``Transaction`` (more steps, inside ``tx()``), and receives each result, or
the exception it raised; what it returns is the result of the whole. ``run`` drives it on a
Database, ``run_async`` on an AsyncDatabase. So the SQL, its order and the handling of its
errors exist once, for both: psycopg gets the same from generating its sync code from its async
code; here the generators carry no I/O at all.

::

    def count_services() -> Steps[int]:
        row = yield Statement("one", "SELECT count(*) AS n FROM services")
        return row["n"]

    run(db, count_services())                  # with a Database
    await run_async(adb, count_services())     # with an AsyncDatabase
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from pipeweave_db.rows import Kind, Params, Query

if TYPE_CHECKING:
    from pipeweave_db.async_database import AsyncDatabase
    from pipeweave_db.database import Database

T = TypeVar("T")


@dataclass(frozen=True)
class Statement:
    """Run ``query`` with the helper named ``kind`` (``"one"``, ``"many_or_none"``...)."""

    kind: Kind
    query: Query
    params: Params = None


@dataclass(frozen=True)
class Transaction:
    """Run ``steps`` inside ``tx()``: a transaction, or a savepoint inside one."""

    steps: Steps[Any]


Step: TypeAlias = Statement | Transaction
Steps: TypeAlias = Generator[Step, Any, T]


def savepoint(statement: Statement) -> Transaction:
    """``statement`` alone inside ``tx()``: when it fails, the transaction around goes on."""

    def alone() -> Steps[Any]:
        return (yield statement)

    return Transaction(alone())


def run(db: Database, steps: Steps[T]) -> T:
    """Drive ``steps`` on ``db``; return what they return."""
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(result) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        result, error = None, None
        try:
            if isinstance(step, Transaction):
                with db.tx() as t:
                    result = run(t, step.steps)
            else:
                result = db.query(step.query, step.params, step.kind)
        except Exception as exc:
            error = exc


async def run_async(db: AsyncDatabase, steps: Steps[T]) -> T:
    """Drive ``steps`` on ``db``; return what they return."""
    result: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(result) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        result, error = None, None
        try:
            if isinstance(step, Transaction):
                async with db.tx() as t:
                    result = await run_async(t, step.steps)
            else:
                result = await db.query(step.query, step.params, step.kind)
        except Exception as exc:
            error = exc
