"""Confidence intervals of a mean over seeds, and whether two of them are separated.

Student's t quantile is computed here rather than taken from scipy, which is not a dependency
(and torch has no t quantile): for an integer number of degrees of freedom the t distribution's
two-sided probability has a closed form, a finite trigonometric sum (Abramowitz & Stegun
26.7.3-4), and bisection inverts it to float precision in a few dozen steps.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def t_within(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` (a positive integer) degrees of freedom."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2))
        term = total = 1.0
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return sin * total
    total, term = 0.0, 1.0  # odd: 2/pi (theta + sin cos (1 + 2/3 cos^2 + ... up to cos^(df-3)))
    if df > 1:
        total = 1.0
        for k in range(1, (df - 1) // 2):
            term *= cos2 * (2 * k) / (2 * k + 1)
            total += term
    return 2 / math.pi * (theta + (sin * math.cos(theta) * total if df > 1 else 0.0))


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (above 0.5) of Student's t with ``df`` degrees of freedom."""
    if not 0.5 < probability < 1.0 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < probability < 1 and df >= 1, not {probability}, {df}")
    within = 2 * probability - 1
    low, high = 0.0, 1.0
    while t_within(high, df) < within:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if t_within(middle, df) < within else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """Mean, standard deviation and ``level`` confidence interval (Student t) of n scores."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None

    def text(self, digits: int = 2) -> str:
        if self.low is None or self.high is None:
            return f"{self.mean:.{digits}f} (n={self.n}, no interval)"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def interval(scores: Sequence[float], level: float = 0.95) -> Interval | None:
    """None without scores; with one score no spread and no interval."""
    if not scores:
        return None
    n, mean = len(scores), statistics.mean(scores)
    if n < 2:
        return Interval(n, mean, None, None, None)
    sd = statistics.stdev(scores)
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half)


def separated(a: Interval, b: Interval) -> bool | None:
    """True when the two intervals do not overlap; None when either has none."""
    if None in (a.low, a.high, b.low, b.high):
        return None
    return a.high < b.low or b.high < a.low  # type: ignore[operator]


def separation_line(name_a: str, a: Interval | None, name_b: str, b: Interval | None) -> str:
    """One line: 'separated' (the higher first) or 'not separated', with both intervals."""
    if a is None or b is None:
        missing = name_a if a is None else name_b
        return f"{name_a} vs {name_b}: no comparison ({missing} has no scores)"
    verdict = separated(a, b)
    if verdict is None:
        return f"{name_a} vs {name_b}: no comparison (an interval needs 2 or more seeds)"
    if verdict:
        (hi_name, hi), (lo_name, lo) = sorted([(name_a, a), (name_b, b)], key=lambda p: -p[1].mean)
        return f"{hi_name} > {lo_name}: separated ({hi_name} {hi.text()}, {lo_name} {lo.text()})"
    return f"{name_a} vs {name_b}: not separated ({name_a} {a.text()}, {name_b} {b.text()})"


def separation_lines(cells: dict[str, Interval | None]) -> list[str]:
    """A line per pair of names, in the dict's order."""
    names = list(cells)
    return [separation_line(a, cells[a], b, cells[b]) for i, a in enumerate(names) for b in names[i + 1 :]]
