"""One rule for integer and real arguments across fastvae.

An integer argument is a `numbers.Integral` (Python or NumPy int), never a bool, a float or a
string: ``2.5``, ``True`` and ``"3"`` are refused, not rounded or parsed. A real argument is a
`numbers.Real` (ints and NumPy floats included), never a bool, and finite unless the caller
allows infinities; NaN is always refused. Every error is a ValueError that names the argument,
the accepted range and the value it got.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

__all__ = ["check_int", "check_real", "describe"]


def describe(value: object) -> str:
    """The value as an error message shows it: its repr for numbers, strings and None, else its type."""
    if value is None or isinstance(value, (numbers.Number, str)):
        return repr(value)
    return f"a {type(value).__name__}"


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _bounds(low: Optional[float], high: Optional[float], strict_low: bool) -> str:
    parts = []
    if low is not None and low != -math.inf:
        parts.append(f"{'>' if strict_low else '>='} {_num(low)}")
    if high is not None and high != math.inf:
        parts.append(f"<= {_num(high)}")
    return f" {' and '.join(parts)}" if parts else ""


def check_int(name: str, value: object, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``value`` as an int, when it is an integer in [low, high] (either bound optional)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer{_bounds(low, high, False)}, got {describe(value)}")
    result = int(value)
    if (low is not None and result < low) or (high is not None and result > high):
        raise ValueError(f"{name} must be an integer{_bounds(low, high, False)}, got {result}")
    return result


def check_real(
    name: str,
    value: object,
    low: Optional[float] = None,
    high: Optional[float] = None,
    strict_low: bool = False,
    allow_inf: bool = False,
) -> float:
    """``value`` as a float, when it is a real number in the range (``strict_low``: > low).

    NaN is always refused; +-inf only with ``allow_inf`` (and then still subject to the bounds).
    """
    kind = "a number" if allow_inf else "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {kind}{_bounds(low, high, strict_low)}, got {describe(value)}")
    result = float(value)
    bad = math.isnan(result) or (not allow_inf and math.isinf(result))
    if low is not None and (result < low or (strict_low and result == low)):
        bad = True
    if high is not None and result > high:
        bad = True
    if bad:
        raise ValueError(f"{name} must be {kind}{_bounds(low, high, strict_low)}, got {value!r}")
    return result
