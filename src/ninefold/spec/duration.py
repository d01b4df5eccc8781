"""Durations as people write them (`500ms`, `2s`, `1m30s`), held as float seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, SerializationInfo, WrapSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_PART = re.compile(rf"({_NUMBER})\s*(ms|h|m|s)")
_WHOLE = re.compile(rf"(?:{_NUMBER}\s*(?:ms|h|m|s)\s*)+")

HUMAN_DURATIONS = "human_durations"
"""Serialization context key: when true, `Duration` fields dump as text like `500ms`."""


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`: a bare number (seconds) or text like `500ms`, `1.5 s`, `1m30s`.

    Raises ValueError with a short message for anything else, including negatives.
    """
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
        shown = repr(value)
    elif isinstance(value, str):
        shown = repr(value)
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not _WHOLE.fullmatch(text):
                raise ValueError(f"{shown} is not a duration") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            if not re.fullmatch(_NUMBER, text):  # float() also takes 'nan', '-1', '1_0'
                raise ValueError(f"{shown} is not a duration")
    else:
        raise ValueError(f"expected a duration like 500ms or 2s, got {type(value).__name__}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{shown} is not a duration")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {shown}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest usual text for `seconds`; `parse_duration` reads it back exactly."""
    for text in _candidates(seconds):
        try:
            if parse_duration(text) == seconds:
                return text
        except ValueError:
            continue
    return repr(float(seconds))


def _candidates(seconds: float) -> list[str]:
    out: list[str] = []
    if seconds >= 3600 and seconds % 3600 == 0:
        out.append(f"{int(seconds // 3600)}h")
    if seconds >= 60 and seconds % 60 == 0:
        out.append(f"{int(seconds // 60)}m")
    if seconds == int(seconds):
        out.append(f"{int(seconds)}s")
    if seconds < 1:
        millis = round(seconds * 1000)
        out.append(f"{millis}ms")
    out.append(f"{seconds!r}s")
    return out


def _serialize(value: float, handler: Any, info: SerializationInfo) -> Any:
    context = info.context
    if isinstance(context, dict) and context.get(HUMAN_DURATIONS):
        return format_duration(value)
    return handler(value)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WrapSerializer(_serialize),
]
"""Float seconds; validates text like `500ms` or a bare number of seconds."""
