"""Durations as people write them (`15m`, `2h`, `1h30m`, `90s`, `45`) and as a run prints them."""

from __future__ import annotations

import math
import re

from asymco.errors import UserError

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([hms])")


def parse_duration(text: str, *, key: str = "train.budget") -> float:
    """Seconds in `text`: numbers with units h, m, s (`1h30m`, `15m`, `90s`), or plain seconds."""
    spec = str(text).strip().lower().replace(" ", "")
    try:
        seconds = float(spec)
    except ValueError:
        parts = _PART.findall(spec)
        if not parts or "".join(n + u for n, u in parts) != spec:
            raise UserError(
                f"{key} must be a duration such as 15m, 2h, 1h30m or 90s, got {text!r}"
            ) from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 366 * 86400:
        raise UserError(f"{key} must be a positive duration of at most a year, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """`1h02m`, `4m10s` or `35s`."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
