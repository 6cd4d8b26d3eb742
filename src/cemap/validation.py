"""Checks of numeric settings shared by every component that takes them: finite and in range, so that a NaN or a
negative value is refused where it enters instead of silently changing a map (``tol=nan`` screened every block)."""

from __future__ import annotations

import math


class SettingError(ValueError):
    """A setting outside its range (a user input error: one line, exit 2)."""


def check_number(name: str, value: float, low: float | None = None, *, strict: bool = False) -> float:
    """``value`` if it is a finite number at least ``low`` (above it when ``strict``), else :class:`SettingError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingError(f"{name}={value!r}: must be a finite number")
    if low is not None and (value <= low if strict else value < low):
        raise SettingError(f"{name}={value!r}: must be {'>' if strict else '>='} {low}")
    return value
