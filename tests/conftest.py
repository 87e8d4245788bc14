"""Suite-wide guards."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


class _SwallowedErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(autouse=True)
def _fail_on_swallowed_exceptions(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test in which swarm_maint caught an exception and only logged it.

    Components keep running after unexpected errors (a broken collector must not stop
    the agent), which would let a bug hide behind a log line; tests that provoke such an
    error on purpose say so with ``@pytest.mark.expect_logged_errors``.
    """
    handler = _SwallowedErrors()
    logger = logging.getLogger("swarm_maint")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.records and request.node.get_closest_marker("expect_logged_errors") is None:
        first = handler.records[0]
        pytest.fail(f"swarm_maint swallowed an exception: {first.getMessage()} "
                    f"({first.exc_info[1]!r})" if first.exc_info else first.getMessage())
