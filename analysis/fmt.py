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


def fid(x: Any) -> str:
    """FID: 2 decimals."""
    return "n/a" if _bad(x) else f"{float(x):.2f}"


def kimg(x: Any) -> str:
    """kimg: 2 decimals (evaluations fall on multiples of a quarter kimg in small runs)."""
    return "n/a" if _bad(x) else f"{float(x):.2f}"


def seconds(x: Any) -> str:
    return "n/a" if _bad(x) else f"{float(x):.1f}"


def nats(x: Any) -> str:
    """Losses, reconstruction and KL terms (nats per image): 2 decimals."""
    return "n/a" if _bad(x) else f"{float(x):.2f}"


def kl(x: Any) -> str:
    """KL of class shares from uniform: 3 decimals."""
    return "n/a" if _bad(x) else f"{float(x):.3f}"


def importance(x: Any) -> str:
    return "n/a" if _bad(x) else f"{float(x):.2f}"


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
