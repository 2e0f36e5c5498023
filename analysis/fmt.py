"""Number formats of the report: one per kind of quantity, so a number reads the same everywhere
and can be found in the frames at that rounding."""

from __future__ import annotations

import math
from typing import Any


def _bad(x: Any) -> bool:
    try:
        return x is None or not math.isfinite(float(x))
    except (TypeError, ValueError):
        return True


def _fixed(decimals: int, doc: str):
    def format_number(x: Any) -> str:
        return "n/a" if _bad(x) else f"{float(x):.{decimals}f}"

    format_number.__doc__ = doc
    return format_number


fid = _fixed(2, "FID: 2 decimals.")
kimg = _fixed(2, "kimg: 2 decimals (evaluations fall on multiples of a quarter kimg in small runs).")
seconds = _fixed(1, "Wall time in seconds: 1 decimal.")
nats = _fixed(2, "Losses, reconstruction and KL terms (nats per image): 2 decimals.")
kl = _fixed(3, "KL of class shares from uniform: 3 decimals.")
importance = _fixed(2, "Hyperparameter importance: 2 decimals.")


def count(x: Any) -> str:
    return "n/a" if _bad(x) else str(int(x))


def trials(n: Any) -> str:
    """'1 trial', '3 trials'."""
    return f"{count(n)} trial" + ("" if count(n) == "1" else "s")


def percent(k: int, n: int) -> str:
    return "n/a" if not n else f"{100.0 * k / n:.0f}%"


def param(x: Any) -> str:
    """A hyperparameter value: integers as integers, floats to 3 significant digits, else as text."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, bool) or isinstance(x, str):
        return str(x)
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1):
        return str(int(x))
    return f"{x:.3g}"


def table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A markdown table of already formatted cells."""
    if not rows:
        return ""
    columns = columns or list(rows[0])
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
