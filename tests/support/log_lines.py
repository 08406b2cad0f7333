"""Log records as the services write them, for tests: each the JSON line of
``json_formatter``, formatted where it is logged (in the caller's context, as the handler
``configure_logging`` installs does), so redaction sees the keys of the call logging it."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

from services.common.logs import json_formatter


class FormattedLines(logging.Handler):
    """Every record as the services write it: the JSON line of ``json_formatter``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(json_formatter("test"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def of(self, message: str) -> list[dict[str, object]]:
        return [line for line in map(json.loads, self.lines) if line.get("message") == message]


@contextlib.contextmanager
def formatted_lines() -> Iterator[FormattedLines]:
    root = logging.getLogger()
    handler, level = FormattedLines(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
