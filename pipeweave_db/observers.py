"""What a Database tells an observer of each statement it ran: for query counting in tests
(pytest-django's ``django_assert_num_queries``), and for logging or tracing elsewhere.

Set ``db.observer`` to a callable; a ``tx()`` block's Database inherits it. The record holds the
statement's text and the number of its parameters, never their values (they may be secrets).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from pipeweave_db.rows import Params, Query, query_text


@dataclass(frozen=True)
class ExecutedStatement:
    """One statement a Database ran (failed ones too): its SQL, parameter count, duration."""

    sql: str
    params: int
    seconds: float
    failed: bool = False


StatementObserver = Callable[[ExecutedStatement], None]


@contextmanager
def observed(observer: StatementObserver, query: Query, params: Params) -> Iterator[None]:
    """Time the block and tell ``observer`` what ran, whether it succeeded or not."""
    started = time.perf_counter()
    failed = True
    try:
        yield
        failed = False
    finally:
        count = len(params) if isinstance(params, (Sequence, Mapping)) else 0
        observer(ExecutedStatement(query_text(query), count, time.perf_counter() - started, failed))
