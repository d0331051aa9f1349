"""What the Learn-Morph-Infer network predicts, and how it maps to Fisher–Kolmogorov parameters.

Ezhov et al., "Learn-Morph-Infer: a new way of solving the inverse problem for brain tumor modeling",
Medical Image Analysis 83:102672 (2023), arXiv:2111.04090. A tumour imaged once determines D_w, ρ and T only
through the products D_w·T and ρ·T (rescaling time by T, ∂u/∂s = D_w T ∇·(d∇u) + ρT u(1 − u) on s ∈ [0, 1]),
so the network predicts

    μ₁ = √(D_w·T)  (mm, an infiltration length),   μ₂ = √(ρ·T)  (dimensionless, a growth number),

and the seed position x, y, z (mm, atlas world space). Back to (D_w, ρ, T) it goes at a fixed front velocity
v = 2√(D_w·ρ) (the Fisher–KPP front speed, :func:`simulators.fisher_kolmogorov.front_speed`):

    T = 2 μ₁ μ₂ / v,   D_w = μ₁² / T,   ρ = μ₂² / T,

which is exact: μ₁² μ₂² = D_w ρ T² = (v T / 2)². Every v gives the same density at time T.

The network's five outputs live in [−1, 1]: :class:`OutputRanges` maps each linearly from its range,
``scaled = 2 (value − low) / (high − low) − 1``. The ranges are data-independent: μ₁ ∈ [√(D_lo T_lo),
√(D_hi T_hi)] and μ₂ ∈ [√(ρ_lo T_lo), √(ρ_hi T_hi)] from the prior box of (D_w, ρ, T) (LMI's published code
derives its μ₁ range, [0.1, √22.5] cm, the same way from its box), and x, y, z span the world bounding box of
the atlas's tissue voxels where seeds are drawn (:attr:`personalize.priors.Prior.seed_box`).

All functions take numpy arrays or torch tensors (and return the same kind), element-wise with broadcasting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

OUTPUT_NAMES = ("mu_1", "mu_2", "x", "y", "z")
"""The network's outputs, in order."""
OUTPUT_UNITS = {"mu_1": "mm", "mu_2": "1", "x": "mm", "y": "mm", "z": "mm"}

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def mu_from_growth(d_w: Array, rho: Array, t: Array) -> tuple[Array, Array]:
    """``(μ₁, μ₂) = (√(D_w·T), √(ρ·T))`` (Ezhov et al. 2023), with D_w in mm²/day, ρ in 1/day, T in days.

    Raises:
        ValueError: any input not finite and positive.
    """
    for name, value in (("D_w", d_w), ("rho", rho), ("T", t)):
        _check_positive(name, value)
    return _sqrt(d_w * t), _sqrt(rho * t)


def growth_from_mu(mu_1: Array, mu_2: Array, velocity: Array | float) -> tuple[Array, Array, Array]:
    """``(D_w, ρ, T)`` of ``(μ₁, μ₂)`` at front velocity ``velocity`` (mm/day): T = 2μ₁μ₂/v, D_w = μ₁²/T,
    ρ = μ₂²/T (Ezhov et al. 2023). ``velocity`` is 2√(D_w·ρ) of the growth one assumes, e.g.
    :func:`simulators.fisher_kolmogorov.front_speed` of a reference tumour.

    Raises:
        ValueError: any input not finite and positive.
    """
    for name, value in (("mu_1", mu_1), ("mu_2", mu_2), ("velocity", velocity)):
        _check_positive(name, value)
    t = 2.0 * mu_1 * mu_2 / velocity
    return mu_1**2 / t, mu_2**2 / t, t


@dataclass(frozen=True)
class OutputRanges:
    """The range of each output (:data:`OUTPUT_NAMES` order) that maps linearly onto [−1, 1].

    Attributes:
        low, high: five floats each, ``low < high``; μ₁ and x, y, z in mm, μ₂ dimensionless.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        low, high = tuple(float(v) for v in self.low), tuple(float(v) for v in self.high)
        if len(low) != len(OUTPUT_NAMES) or len(high) != len(OUTPUT_NAMES):
            raise ValueError(f"ranges need {len(OUTPUT_NAMES)} lows and highs ({', '.join(OUTPUT_NAMES)}), "
                             f"got {len(low)} and {len(high)}")
        for name, lo, hi in zip(OUTPUT_NAMES, low, high):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"{name}: the range must be finite with low < high, got [{lo}, {hi}]")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def from_bounds(cls, bounds: Mapping[str, tuple[float, float]],
                    seed_box: Mapping[str, tuple[float, float]]) -> OutputRanges:
        """The ranges spanned by the prior box ``bounds`` of ``D_w, rho, T`` (μ₁, μ₂ are increasing in each)
        and the seed's world bounding box ``seed_box`` of ``x, y, z`` (mm)."""
        (d_lo, d_hi), (r_lo, r_hi), (t_lo, t_hi) = (bounds[name] for name in ("D_w", "rho", "T"))
        low_mu = mu_from_growth(np.float64(d_lo), np.float64(r_lo), np.float64(t_lo))
        high_mu = mu_from_growth(np.float64(d_hi), np.float64(r_hi), np.float64(t_hi))
        return cls(low=(*low_mu, *(seed_box[name][0] for name in "xyz")),
                   high=(*high_mu, *(seed_box[name][1] for name in "xyz")))

    def scale(self, values: Array) -> Array:
        """``values`` ``[..., 5]`` in physical units → ``2 (values − low) / (high − low) − 1``."""
        low, high = self._bounds_like(values)
        return 2.0 * (values - low) / (high - low) - 1.0

    def unscale(self, scaled: Array) -> Array:
        """Inverse of :meth:`scale`: ``low + (scaled + 1) (high − low) / 2``."""
        low, high = self._bounds_like(scaled)
        return low + (scaled + 1.0) * (high - low) / 2.0

    def _bounds_like(self, values: Array) -> tuple[Array, Array]:
        if values.shape[-1:] != (len(OUTPUT_NAMES),):
            raise ValueError(f"expected [..., {len(OUTPUT_NAMES)}] values ({', '.join(OUTPUT_NAMES)}), "
                             f"got shape {tuple(values.shape)}")
        if isinstance(values, torch.Tensor):
            dtype = values.dtype if values.dtype.is_floating_point else torch.float64
            return (torch.tensor(self.low, dtype=dtype, device=values.device),
                    torch.tensor(self.high, dtype=dtype, device=values.device))
        return np.asarray(self.low), np.asarray(self.high)


def _sqrt(value: Array) -> Array:
    return torch.sqrt(value) if isinstance(value, torch.Tensor) else np.sqrt(value)


def _check_positive(name: str, value: Array | float) -> None:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if not np.all(np.isfinite(array) & (array > 0)):
        bad = array[~(np.isfinite(array) & (array > 0))] if array.ndim else array
        raise ValueError(f"{name} must be finite and positive, got {np.ravel(bad)[:5].tolist()}")
