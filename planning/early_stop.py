"""Expected tokens GFPO samples per group with and without early stop (trainers/early_stop.py), under a stated length
model: the dry run's plan of what early stop saves, not a measurement.

Length model (LENGTH_MODEL): a response's length is log-normal with coefficient of variation CV (0.5: reasoning
traces of one question spread about that much) and mean MEAN_FRACTION of `max_completion_length`, capped at
`max_completion_length` (the cap turns the tail into truncated rows); the G responses of a group are independent.

With early stop a response runs until it ends or until k other members of its group have ended shorter: it samples
min(L_i, Y_i), Y_i the k-th shortest of the other G - 1 lengths (the forced EOS is one token more; ignored). So

    E[sampled with early stop] / E[sampled without] = E[min(L, Y)] / E[L]
        = integral_0^cap P(L > t) P(Y > t) dt  /  integral_0^cap P(L > t) dt,
    P(Y > t) = sum_{j < k} C(G-1, j) F(t)^j (1 - F(t))^(G-1-j),

integrated numerically (midpoint rule). Pure functions of (G, k, cv, mean fraction), no torch.
"""

from __future__ import annotations

import math

CV = 0.5
MEAN_FRACTION = 0.4  # mean response length / max_completion_length before the cap (e.g. ~12k of a 30k budget)
LENGTH_MODEL = (f"log-normal lengths, coefficient of variation {CV}, mean {MEAN_FRACTION} x max_completion_length, "
                "capped at max_completion_length, independent within a group")


def lognormal_cdf(t: float, mean: float, cv: float) -> float:
    """P(L <= t) for a log-normal L with this mean and coefficient of variation."""
    if t <= 0:
        return 0.0
    sigma2 = math.log1p(cv * cv)
    mu = math.log(mean) - sigma2 / 2
    return 0.5 * (1.0 + math.erf((math.log(t) - mu) / math.sqrt(2.0 * sigma2)))


def expected_sampled_fraction(G: int, k: int, cv: float = CV, mean_fraction: float = MEAN_FRACTION,
                              points: int = 4000) -> float:
    """E[tokens sampled per group with early stop] / E[tokens sampled without], lengths in units of the cap."""
    if not 1 <= k < G:
        raise ValueError(f"need 1 <= k < G, got k={k}, G={G}")
    total = stopped = 0.0
    h = 1.0 / points
    for i in range(points):
        t = (i + 0.5) * h
        F = lognormal_cdf(t, mean_fraction, cv)
        survive = 1.0 - F
        y_survive = sum(math.comb(G - 1, j) * F**j * survive ** (G - 1 - j) for j in range(k))
        total += survive * h
        stopped += survive * y_survive * h
    return stopped / total


def expected_mean_length_fraction(cv: float = CV, mean_fraction: float = MEAN_FRACTION, points: int = 4000) -> float:
    """E[min(L, cap)] / cap: the capped mean length, in units of the cap."""
    h = 1.0 / points
    return sum((1.0 - lognormal_cdf((i + 0.5) * h, mean_fraction, cv)) * h for i in range(points))
