"""The study's statistics, with rliable (Agarwal et al., "Deep RL at the Edge of the Statistical
Precipice", NeurIPS 2021): interquartile means with stratified-bootstrap 95% confidence intervals,
the probability of improvement, performance profiles, and the sample-efficiency ratio with a
bootstrap interval over seeds.

Scores are one task at a time: arrays [runs] (seeds) or [runs, steps]. rliable's bootstrap draws
from numpy's global RNG, so every function here seeds it (and restores it afterwards) for
reproducible intervals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
from scipy.stats import trim_mean

REPS = 10_000  # bootstrap resamples for the final-return CIs, improvement and ratio intervals
CURVE_REPS = 1_000  # per evaluation step of a curve
CI = 0.95


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def iqm(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: the 25%-trimmed mean (rliable's `aggregate_iqm`), along `axis`."""
    return trim_mean(values, proportiontocut=0.25, axis=axis)


def iqm_ci(finals: dict[str, np.ndarray], reps: int = REPS, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """{algo: (IQM, CI low, CI high)} of each algo's per-seed scores."""
    from rliable import library as rly
    from rliable import metrics

    with seeded(seed):
        point, interval = rly.get_interval_estimates(
            {k: np.asarray(v, np.float64).reshape(-1, 1) for k, v in finals.items()},
            lambda s: np.array([metrics.aggregate_iqm(s)]),
            reps=reps,
            confidence_interval_size=CI,
        )
    return {k: (float(point[k][0]), float(interval[k][0, 0]), float(interval[k][1, 0])) for k in finals}


def curve_iqm_ci(
    values: np.ndarray, reps: int = CURVE_REPS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values [seeds, steps] -> (IQM, CI low, CI high) per step; the bootstrap resamples seeds at each step."""
    from rliable import library as rly

    with seeded(seed):
        point, interval = rly.get_interval_estimates(
            {"curve": np.asarray(values, np.float64)}, lambda s: iqm(s, axis=0), reps=reps, confidence_interval_size=CI
        )
    return point["curve"], interval["curve"][0], interval["curve"][1]


def probability_of_improvement(
    x: np.ndarray, y: np.ndarray, reps: int = REPS, seed: int = 0
) -> tuple[float, float, float]:
    """P(X > Y): the chance that a run of X beats a run of Y (ties count half), with its CI; X and Y are
    resampled independently, so their seed counts may differ."""
    from rliable import library as rly
    from rliable import metrics

    pair = [np.asarray(x, np.float64).reshape(-1, 1), np.asarray(y, np.float64).reshape(-1, 1)]
    with seeded(seed):
        point, interval = rly.get_interval_estimates(
            {"x,y": pair},
            lambda a, b: np.array([metrics.probability_of_improvement(a, b)]),
            reps=reps,
            confidence_interval_size=CI,
        )
    return float(point["x,y"][0]), float(interval["x,y"][0, 0]), float(interval["x,y"][1, 0])


def performance_profiles(
    finals: dict[str, np.ndarray], taus: np.ndarray, reps: int = 2_000, seed: int = 0
) -> dict[str, dict]:
    """{algo: {"fraction": P(score > tau) per tau, "ci_low", "ci_high"}} (rliable's score distributions)."""
    from rliable import library as rly

    with seeded(seed):
        profiles, cis = rly.create_performance_profile(
            {k: np.asarray(v, np.float64).reshape(-1, 1) for k, v in finals.items()},
            np.asarray(taus),
            reps=reps,
            confidence_interval_size=CI,
        )
    return {
        k: {"fraction": profiles[k].tolist(), "ci_low": cis[k][0].tolist(), "ci_high": cis[k][1].tolist()}
        for k in finals
    }


def first_reach(steps, values, target: float) -> float | None:
    """The first step at which the piecewise-linear curve (steps, values) reaches `target`, or None."""
    for k, value in enumerate(values):
        if value >= target:
            if k == 0:
                return float(steps[0])
            s0, s1, v0 = float(steps[k - 1]), float(steps[k]), float(values[k - 1])
            return s0 + (target - v0) / (float(value) - v0) * (s1 - s0)
    return None


def efficiency_ratio(
    omad_steps, omad_values: np.ndarray, base_steps, base_values: np.ndarray
) -> tuple[float | None, float]:
    """(ratio, bound): ratio = B's budget / the first step at which OMAD's IQM curve reaches B's final IQM,
    None if it never does; bound = B's budget / OMAD's budget (the ratio is below it when not reached)."""
    target = float(iqm(np.asarray(base_values)[:, -1]))
    step = first_reach(omad_steps, iqm(np.asarray(omad_values), axis=0), target)
    budget = float(base_steps[-1])
    return (budget / step if step is not None else None), budget / float(omad_steps[-1])


def efficiency_ratio_ci(
    omad_steps, omad_values: np.ndarray, base_steps, base_values: np.ndarray, reps: int = REPS, seed: int = 0
) -> tuple[float, float, float]:
    """Percentile CI of the ratio under a bootstrap over seeds: each resample draws OMAD's seeds and B's
    seeds with replacement (whole curves, independently) and recomputes the ratio. A resample in which
    OMAD never reaches B's final IQM contributes the bound (an upper limit of its ratio, so the lower CI
    end is conservative). Returns (low, high, fraction of resamples not reached)."""
    rng = np.random.default_rng(seed)
    omad_values, base_values = np.asarray(omad_values, np.float64), np.asarray(base_values, np.float64)
    omad_idx = rng.integers(0, len(omad_values), (reps, len(omad_values)))
    base_idx = rng.integers(0, len(base_values), (reps, len(base_values)))
    curves = iqm(omad_values[omad_idx], axis=1)  # [reps, steps]
    targets = iqm(base_values[base_idx, -1], axis=1)  # [reps]
    budget, bound = float(base_steps[-1]), float(base_steps[-1]) / float(omad_steps[-1])
    ratios, missed = np.empty(reps), 0
    for r in range(reps):
        step = first_reach(omad_steps, curves[r], targets[r])
        missed += step is None
        ratios[r] = bound if step is None else budget / step
    low, high = np.quantile(ratios, [(1 - CI) / 2, (1 + CI) / 2])
    return float(low), float(high), missed / reps
