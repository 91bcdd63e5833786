"""Shared Numba maths for the feature modules (robust statistics, histograms).

Append only: several feature modules import from here.  Every function is ``njit`` and takes
plain arrays; none allocates more than a copy of its input.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def quantile_sorted(x, q):
    """Linear-interpolated quantile (NumPy's default "linear" method) of an ascending array;
    NaN when empty."""
    n = x.shape[0]
    if n == 0:
        return np.nan
    pos = q * (n - 1)
    i = int(np.floor(pos))
    if i >= n - 1:
        return float(x[n - 1])
    frac = pos - i
    return float(x[i]) + (float(x[i + 1]) - float(x[i])) * frac


@nb.njit(cache=True)
def bowley_skew_sorted(x, min_iqr):
    """Bowley (quartile) skewness (Q1 + Q3 - 2 Q2) / (Q3 - Q1) of an ascending array, in [-1, 1].
    0 when the inter-quartile range is below ``min_iqr`` or the median sits on a quartile (RITA v5:
    too little spread for the shape to mean anything)."""
    if x.shape[0] < 3:
        return 0.0
    q1 = quantile_sorted(x, 0.25)
    q2 = quantile_sorted(x, 0.5)
    q3 = quantile_sorted(x, 0.75)
    den = q3 - q1
    if den <= 0.0 or den < min_iqr or q2 == q1 or q2 == q3:
        return 0.0
    s = (q1 + q3 - 2.0 * q2) / den
    return min(1.0, max(-1.0, s))


@nb.njit(cache=True)
def mad_sorted(x):
    """Median absolute deviation about the median (unscaled) of an ascending array; NaN when empty."""
    n = x.shape[0]
    if n == 0:
        return np.nan
    med = quantile_sorted(x, 0.5)
    dev = np.empty(n, np.float64)
    for i in range(n):
        dev[i] = abs(float(x[i]) - med)
    dev.sort()
    return quantile_sorted(dev, 0.5)


@nb.njit(cache=True)
def entropy_bits(counts):
    """Shannon entropy in bits of one histogram (any non-negative counts); 0 when empty."""
    total = 0.0
    for c in counts:
        total += float(c)
    if total <= 0.0:
        return 0.0
    h = 0.0
    for c in counts:
        if c > 0:
            p = float(c) / total
            h -= p * np.log2(p)
    return h


@nb.njit(cache=True)
def entropy_bits_rows(counts):
    """``entropy_bits`` of every row of a 2-D histogram array."""
    out = np.empty(counts.shape[0], np.float64)
    for i in range(counts.shape[0]):
        out[i] = entropy_bits(counts[i])
    return out
