"""Statistics for success rates: the Wilson interval, pass@k, and a :class:`Rate` with both."""

from __future__ import annotations

import math
from fractions import Fraction

from redline.analysis.model import Rate


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% by default) for ``successes`` out of ``trials``.

    >>> [round(x, 3) for x in wilson_interval(9, 10)]
    [0.596, 0.982]
    """
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al. 2021): the chance that at least one of ``k``
    trials drawn without replacement from ``n`` trials, ``c`` of them successful, succeeds:
    ``1 - C(n-c, k) / C(n, k)``. Needs ``0 <= c <= n`` and ``1 <= k <= n`` (else ``ValueError``).

    >>> pass_at_k(10, 3, 1)
    0.3
    >>> round(pass_at_k(10, 3, 5), 4)
    0.9167
    >>> pass_at_k(10, 0, 10), pass_at_k(10, 8, 3)
    (0.0, 1.0)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, not n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def rate(successes: int, trials: int) -> Rate:
    """``successes`` of ``trials`` with its 95% Wilson interval and pass@k for k = 1..trials.

    >>> r = rate(1, 2)
    >>> (r.successes, r.trials, round(r.low, 3), round(r.high, 3), r.pass_at_k)
    (1, 2, 0.095, 0.905, {1: 0.5, 2: 1.0})
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"a rate needs 0 <= successes <= trials, not {successes} of {trials}")
    low, high = wilson_interval(successes, trials)
    return Rate(successes, trials, low, high, {k: pass_at_k(trials, successes, k) for k in range(1, trials + 1)})
