r"""Small statistics for the study report: mean ± std over seeds and paired confidence intervals.

Every pooler in a sweep is trained with the same seeds (same data order, same initial convolution and
dense weights where the architectures agree), so the honest comparison with max pooling is *paired*:
take the per-seed differences ``d_s = acc(pooler, s) - acc(max, s)`` and put a Student-t interval
around their mean,

.. math::

  \bar d \pm t_{1 - \alpha/2,\, n-1} \, \frac{s_d}{\sqrt{n}},
  \qquad s_d^2 = \frac{1}{n-1} \sum_s (d_s - \bar d)^2 .

With one seed there is no interval (``nan``): the report then says so instead of guessing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with a two-sided confidence interval.

    Attributes:
      mean: the sample mean of the differences.
      low: lower end of the interval (``nan`` when ``n < 2``).
      high: upper end of the interval (``nan`` when ``n < 2``).
      n: number of pairs.
      confidence: the confidence level, e.g. 0.95.
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies above or below 0 (``nan`` ends never exclude it)."""
        return bool(self.low > 0.0 or self.high < 0.0)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Example: ``t_quantile(0.975, 2)`` is 4.302653 (the familiar table value).
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    # Imported here: scipy.stats takes ~0.5 s to import, which every command of the study would
    # otherwise spend before parsing its flags.
    from scipy import stats as scipy_stats

    return float(scipy_stats.t.ppf(p, df))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``); std is ``nan`` for fewer than 2 values.

    Returns ``(nan, nan)`` for no values.
    """
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return math.nan, math.nan
    std = float(a.std(ddof=1)) if a.size > 1 else math.nan
    return float(a.mean()), std


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    r"""Paired t-interval for the mean of ``a - b``.

    .. math::

      d_i = a_i - b_i, \quad \bar d \pm t_{(1+c)/2,\, n-1}\, s_d / \sqrt{n}

    Args:
      a: one value per pair (e.g. a pooler's test accuracy for seeds 0..n-1).
      b: the matching values of the baseline, same order and length.
      confidence: the two-sided level ``c``.

    Returns:
      An :class:`Interval`; ``low``/``high`` are ``nan`` when fewer than two pairs are given, and
      both equal the mean when all differences are identical.

    Raises:
      ValueError: when ``a`` and ``b`` differ in length or are empty.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D of the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired_difference needs at least one pair")
    return mean_interval(a - b, confidence)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    r"""Student-t interval for the mean of ``values``: :math:`\bar x \pm t_{(1+c)/2,\, n-1}\, s / \sqrt{n}`.

    Returns:
      An :class:`Interval`; ``low``/``high`` are ``nan`` for fewer than two values.

    Raises:
      ValueError: when ``values`` is empty or not 1-D.
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"mean_interval needs a non-empty 1-D sequence, got shape {x.shape}")
    n = int(x.size)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, confidence)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence)
