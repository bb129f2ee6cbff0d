"""Label budgets: how many points (or pixels) a query round may ask for, met exactly.

A budget is a percentage of the **in-view** items of one frame: the points of a scan that
project into the camera image (or the pixels of an image when images are queried). The count
for a frame of ``n`` items is

    ``count = floor(percent * n / 100 + 1/2)``  (round half up, computed exactly),

raised to 1 when ``percent > 0`` and ``n > 0`` (a frame always gets at least one query), and
never more than ``n``. ``percent`` is read as the decimal number it prints as (``0.1`` is one
tenth, not the binary float nearest to it), so ``percent=1.5, n=50`` gives exactly 1
(0.75 -> 1) and ``percent=1, n=250`` gives 3 (2.5 rounds up).

Every strategy returns exactly ``count`` indices; a point labelled in an earlier round is never
returned again (the per-frame labelled mask is the state, see :mod:`terraseg.active.rounds`).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from terraseg.errors import ConfigError, DataError


def check_percent(percent: float, what: str = "budget") -> float:
    """``percent`` as a float when it lies in (0, 100], else one :class:`ConfigError`."""
    try:
        p = float(percent)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a percentage in (0, 100], got {percent!r}") from None
    if not math.isfinite(p) or not 0.0 < p <= 100.0:
        raise ConfigError(f"{what} must be a percentage in (0, 100], got {percent!r}")
    return p


def budget_count(percent: float, n: int) -> int:
    """The number of items a ``percent`` budget asks for in a frame of ``n`` in-view items.

    Round half up of ``percent * n / 100`` computed in exact rational arithmetic, at least 1
    when ``n > 0`` (see the module doc). Raises :class:`ConfigError` for a percentage outside
    (0, 100] and :class:`DataError` for a negative ``n``.
    """
    p = check_percent(percent)
    if int(n) != n or n < 0:
        raise DataError(f"number of in-view items must be a non-negative integer, got {n!r}")
    n = int(n)
    if n == 0:
        return 0
    exact = Fraction(repr(p)) * n / 100  # repr: the shortest decimal that reads back as p
    count = math.floor(exact + Fraction(1, 2))
    return int(min(n, max(1, count)))


def labelled_fraction(mask: np.ndarray) -> float:
    """The fraction (0..1) of True entries of a labelled mask (0.0 for an empty mask)."""
    m = np.asarray(mask, dtype=bool)
    return float(m.sum()) / m.size if m.size else 0.0
