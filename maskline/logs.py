"""How the process logs: `MASKLINE_LOG_FORMAT=text` ("time level logger: message") or `json`, one
object per line with `time`, `level`, `logger`, `event` (the message) and, where the line has
them, `request_id`, `status`, `latency_ms`, `code`, `outcome`. Messages are written by the packages
with phone numbers already masked (pool/numbers.py `mask`); nothing here adds any."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Final

import orjson

__all__ = ["configure", "JsonFormatter"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EXTRAS: Final = ("request_id", "status", "latency_ms", "code", "outcome")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in EXTRAS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            line["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, fmt: str) -> None:
    """The root logger on stderr, in `fmt` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
