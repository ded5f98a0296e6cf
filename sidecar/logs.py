"""How the sidecar process logs: text lines for people, or one JSON object a line for log
collectors (``log_format: json``).

A JSON line carries ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``, then any extra fields the call passed (``_LOG.info("...", extra={"cluster": n})``),
then ``exception`` with the traceback when there is one. Values JSON cannot hold are written
as their ``str()``.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

#: Values of ``log_format``.
FORMATS = ("text", "json")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[worker %(process)d]: %(message)s"
# Attributes every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, extra fields, exception."""

    def __init__(self, *, worker: bool = False) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.timezone.utc)
        entry: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker:
            entry["worker"] = record.process
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # JSON escapes control characters; ensure_ascii also escapes U+2028 and the like,
        # which some log readers split lines on: a message cannot forge a second entry
        return json.dumps(entry, default=str, ensure_ascii=True)


def configure(
    level: str, log_format: str = "text", *, stream: TextIO | None = None, worker: bool = False
) -> logging.Handler:
    """Send the root logger to ``stream`` (default stderr) at ``level`` in ``log_format``
    (``text`` or ``json``), replacing handlers set before; returns the handler installed.
    ``worker``: the line names the worker process (see :mod:`sidecar.workers`)."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)} (got {log_format!r})")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker=worker))
    else:
        handler.setFormatter(logging.Formatter(_WORKER_TEXT_FORMAT if worker else _TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
