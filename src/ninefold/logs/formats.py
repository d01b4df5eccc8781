"""How an agent writes its log records: `text` for people, `json` (one object
a line) for programs, and RFC 5424 for syslog receivers.

Every format starts with the same time: ISO 8601 in UTC with milliseconds
(`2026-12-03T10:17:13.123Z`), which `ninefold logs --since` reads back.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
"""Attributes every LogRecord has; anything else was passed as `extra=`."""


def iso_time(when: float) -> str:
    """`when` (Unix seconds) as `2026-12-03T10:17:13.123Z`."""
    stamp = datetime.fromtimestamp(when, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the caller passed with `extra=`, as JSON-able values."""
    out: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _RECORD_FIELDS or key.startswith("_"):
            continue
        ok = value is None or isinstance(value, str | int | float | bool | list | dict)
        out[key] = value if ok else str(value)
    return out


class TextFormatter(logging.Formatter):
    """`<time> <node> <logger> <LEVEL> <message>`, then any traceback."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{iso_time(record.created)} {self.node} {record.name} "
            f"{record.levelname} {record.getMessage()}"
        )
        extra = extra_fields(record)
        if extra:
            line += " " + " ".join(f"{k}={json.dumps(v)}" for k, v in extra.items())
        trace = self._trace(record)
        return f"{line}\n{trace}" if trace else line

    def _trace(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)


class JsonFormatter(TextFormatter):
    """One JSON object a line: time, level, logger, node, message, then the
    record's `extra=` fields and, for an exception, `exception` (its traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            doc.setdefault(key, value)
        trace = self._trace(record)
        if trace:
            doc["exception"] = trace
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def formatter(kind: LogFormat, node: str) -> logging.Formatter:
    return JsonFormatter(node) if kind == "json" else TextFormatter(node)


# --- RFC 5424 ------------------------------------------------------------------------------

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{n}": 16 + n for n in range(8)},
}  # fmt: skip
"""Syslog facility names (RFC 5424 section 6.2.1) and their codes."""

SEVERITY_OF_LEVEL = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
INFO = 6
"""The severity of an instance's output line (stdout and stderr share its file)."""

SD_ID = "ninefold@32473"
"""The structured data element's id (32473: the enterprise number RFC 5612
reserves for examples; the element is ninefold's own)."""

_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def severity(level: int) -> int:
    for threshold in sorted(SEVERITY_OF_LEVEL, reverse=True):
        if level >= threshold:
            return SEVERITY_OF_LEVEL[threshold]
    return 7


def header_field(value: str, limit: int) -> str:
    """A header field of RFC 5424: printable US-ASCII, no spaces, at most
    `limit` characters; `-` (NILVALUE) when empty."""
    text = _PRINTUSASCII.sub("_", value)[:limit]
    return text or "-"


def _param(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc5424(
    *,
    facility: int,
    severity: int,
    when: float,
    hostname: str,
    app_name: str,
    procid: str | None,
    msgid: str | None,
    data: dict[str, str],
    message: str,
) -> bytes:
    """One syslog message (RFC 5424) without framing; `data` becomes one
    structured data element `[ninefold@32473 key="value" ...]`."""
    params = "".join(f' {header_field(k, 32)}="{_param(v)}"' for k, v in data.items())
    sd = f"[{SD_ID}{params}]" if params else "-"
    head = (
        f"<{facility * 8 + severity}>1 {iso_time(when)} {header_field(hostname, 255)} "
        f"{header_field(app_name, 48)} {header_field(procid or '', 128)} "
        f"{header_field(msgid or '', 32)} {sd}"
    )
    return f"{head} {message}".encode("utf-8", errors="replace")


def octet_counted(message: bytes) -> bytes:
    """`message` framed by octet counting (RFC 6587 section 3.4.1, RFC 5425)."""
    return f"{len(message)} ".encode() + message


def record_message(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    """The text of a record for syslog: its message, then any traceback."""
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + formatter.formatException(record.exc_info)
    return text
