"""The baseline of effective robustness: a line through (ImageNet, shifted) accuracies of standard
models in logit (or probit) space, its bootstrap band, and each model's distance above it.

Pure numpy (probit through the standard library's ``statistics.NormalDist``). Accuracies come in
percent; 0% and 100% have no logit, so every accuracy is first clipped to [ε, 100 − ε] percent
(ε = :data:`EPSILON_PERCENT`) and the caller is told how many were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

TRANSFORMS: tuple[str, ...] = ("logit", "probit")
# 0.01 points: far below what any real test set resolves (1 / 50,000 = 0.002 points on ImageNet val is
# the finest step), so only exact 0% / 100% move
EPSILON_PERCENT = 0.01
BAND_LEVEL = 0.95
_NORMAL = NormalDist()
_inv_cdf = np.vectorize(_NORMAL.inv_cdf, otypes=[float])
_cdf = np.vectorize(_NORMAL.cdf, otypes=[float])


def clip_percent(acc: np.ndarray | Sequence[float], eps: float = EPSILON_PERCENT) -> tuple[np.ndarray, int]:
    """Accuracies (percent) clipped to [eps, 100 - eps], and how many had to be."""
    a = np.asarray(acc, dtype=np.float64)
    clipped = np.clip(a, eps, 100.0 - eps)
    return clipped, int(np.count_nonzero(clipped != a))


def to_axis(acc: np.ndarray | Sequence[float], transform: str = "logit") -> np.ndarray:
    """Percent → the fit's axis: logit(p) or Φ⁻¹(p) of the (clipped) fraction."""
    # plain np.clip, not clip_percent: matplotlib's scale calls this hundreds of times per figure
    p = np.clip(np.asarray(acc, dtype=np.float64), EPSILON_PERCENT, 100.0 - EPSILON_PERCENT) / 100.0
    if transform == "logit":
        return np.log(p) - np.log1p(-p)
    if transform == "probit":
        return _inv_cdf(p) if p.size else p
    raise ValueError(f"unknown transform {transform!r}; choose from {', '.join(TRANSFORMS)}")


def from_axis(t: np.ndarray | Sequence[float], transform: str = "logit") -> np.ndarray:
    """The fit's axis → percent (σ or Φ)."""
    t = np.asarray(t, dtype=np.float64)
    if transform == "logit":
        return 100.0 / (1.0 + np.exp(-t))
    if transform == "probit":
        return 100.0 * _cdf(t) if t.size else t
    raise ValueError(f"unknown transform {transform!r}; choose from {', '.join(TRANSFORMS)}")


@dataclass
class LinearFit:
    """t(ood) = slope · t(id) + intercept over ``models``; ``band`` is the pointwise bootstrap
    interval of the line (percent) at ``band_x`` (percent)."""

    transform: str
    slope: float
    intercept: float
    models: list[str]
    band_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    band_lo: np.ndarray = field(default_factory=lambda: np.zeros(0))
    band_hi: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bootstrap: int = 0
    seed: int | None = None
    clipped: int = 0  # accuracies of the fitted rows moved to ε / 100 − ε

    def predict(self, id_acc: np.ndarray | Sequence[float]) -> np.ndarray:
        """The shifted accuracy (percent) the line expects at ImageNet accuracy ``id_acc`` (percent)."""
        return from_axis(self.slope * to_axis(id_acc, self.transform) + self.intercept, self.transform)

    def effective_robustness(self, id_acc: np.ndarray | Sequence[float],
                             ood_acc: np.ndarray | Sequence[float]) -> np.ndarray:
        """ρ = acc_ood − f(acc_id), in percentage points (positive: above the line)."""
        return np.asarray(ood_acc, dtype=np.float64) - self.predict(id_acc)

    def to_dict(self) -> dict:
        return {"transform": self.transform, "slope": self.slope, "intercept": self.intercept,
                "n_models": len(self.models), "models": list(self.models), "bootstrap": self.bootstrap,
                "seed": self.seed, "band_level": BAND_LEVEL, "clipped": self.clipped}


def least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Ordinary least squares of y on x: (slope, intercept)."""
    mx, my = x.mean(), y.mean()
    dx = x - mx
    slope = float(dx @ (y - my) / (dx @ dx))
    return slope, float(my - slope * mx)


def fit_baseline(
    id_acc: Sequence[float], ood_acc: Sequence[float], models: Sequence[str], transform: str = "logit",
    bootstrap: int = 1000, seed: int = 0, band_x: Sequence[float] | None = None,
) -> LinearFit:
    """Least squares of t(ood) on t(id) (``transform``: logit or probit) with a seeded 95% bootstrap band.

    The band resamples the models with replacement ``bootstrap`` times and takes, at each ``band_x``
    (default: 200 points across the fitted ImageNet range), the 2.5th and 97.5th percentile of the
    refitted lines.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose from {', '.join(TRANSFORMS)}")
    id_acc, ood_acc = np.asarray(id_acc, dtype=np.float64), np.asarray(ood_acc, dtype=np.float64)
    if len(id_acc) < 2 or np.ptp(id_acc) == 0:
        raise ValueError("a line needs at least two models with different ImageNet accuracies")
    clipped = clip_percent(id_acc)[1] + clip_percent(ood_acc)[1]
    x, y = to_axis(id_acc, transform), to_axis(ood_acc, transform)
    slope, intercept = least_squares(x, y)
    fit = LinearFit(transform, slope, intercept, list(models), bootstrap=bootstrap, seed=seed, clipped=clipped)
    grid = np.asarray(band_x, dtype=np.float64) if band_x is not None else np.linspace(id_acc.min(), id_acc.max(), 200)
    fit.band_x = grid
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(x), size=(bootstrap, len(x)))
        xs, ys = x[idx], y[idx]
        dx = xs - xs.mean(axis=1, keepdims=True)
        denom = np.einsum("ij,ij->i", dx, dx)
        ok = denom > 0  # a resample of one repeated model has no line
        slopes = np.einsum("ij,ij->i", dx, ys - ys.mean(axis=1, keepdims=True))[ok] / denom[ok]
        intercepts = ys.mean(axis=1)[ok] - slopes * xs.mean(axis=1)[ok]
        lines = slopes[:, None] * to_axis(grid, transform)[None, :] + intercepts[:, None]
        tail = (1.0 - BAND_LEVEL) / 2 * 100
        lo, hi = np.percentile(lines, [tail, 100 - tail], axis=0)
        fit.band_lo, fit.band_hi = from_axis(lo, transform), from_axis(hi, transform)
    return fit
