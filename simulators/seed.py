"""Initial tumour cell density around a seed point.

Two shapes, both defined in millimetres of world space and restricted to tissue voxels:

- ``"gaussian"``: u₀(r) = A·exp(−r² / (2 w²)), truncated where it falls below ``cutoff``·A.
- ``"bump"``: the smooth compact step of GliomaSolver (Lipkova et al., IEEE TMI 2019, ``lib_cpp.cpp``):
  u₀(r) = A·φ(ψ) with ψ = (r − c) / w clipped to [−1, 1] and φ(ψ) = ½(1 − ψ − sin(πψ)/π), so u₀ = A
  for r ≤ c − w, u₀ = 0 for r ≥ c + w, and u₀(0) = A·φ(−c/w) when c < w.

The default is TumorGrowthToolkit's FK seed (Balcerak et al.; ``FK.py``, ``gauss_sol3d``): a Gaussian
with variance 10 mm² and peak 250/(20π)^{3/2} ≈ 0.502, set to zero at and below 0.1. :data:`PRESETS`
names it and GliomaSolver's seed on its 256-voxel, 1 mm example grid (``lib_cpp.cpp``: transition radius
0.005 and half-width 1/64 of a domain 256 mm long).

r is the Euclidean distance in mm from the seed, measured between world coordinates of voxel centres,
so the seed has the same physical size on any grid and any orientation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np


_TGT_PEAK = 250.0 / (20.0 * math.pi) ** 1.5  # TumorGrowthToolkit's heat kernel: 250/(4π·5)^{3/2} ≈ 0.502


@dataclass(frozen=True)
class Seed:
    """Shape and amplitude of the initial condition.

    Attributes:
        shape: ``"gaussian"`` or ``"bump"``.
        width_mm: Gaussian standard deviation w, or the bump's half transition width w (mm).
        amplitude: A, the density at the centre of the profile (before tissue masking).
        center_mm: the bump's transition radius c (mm); unused for the Gaussian.
        cutoff: relative level below which the Gaussian is set to zero (gives it compact support).
    """

    shape: Literal["gaussian", "bump"] = "gaussian"
    width_mm: float = math.sqrt(10.0)
    amplitude: float = _TGT_PEAK
    center_mm: float = 0.0
    cutoff: float = 0.1 / _TGT_PEAK

    def __post_init__(self) -> None:
        if self.shape not in ("gaussian", "bump"):
            raise ValueError(f"seed shape must be 'gaussian' or 'bump', got {self.shape!r}")
        if not self.width_mm > 0:
            raise ValueError(f"seed width_mm must be positive, got {self.width_mm}")
        if not 0 < self.amplitude <= 1:
            raise ValueError(f"seed amplitude must lie in (0, 1], got {self.amplitude}")
        if not 0 < self.cutoff < 1:
            raise ValueError(f"seed cutoff must lie in (0, 1), got {self.cutoff}")

    @property
    def support_mm(self) -> float:
        """Radius beyond which the profile is exactly zero."""
        if self.shape == "gaussian":
            return self.width_mm * math.sqrt(2.0 * math.log(1.0 / self.cutoff))
        return self.center_mm + self.width_mm

    def profile(self, r_mm: np.ndarray) -> np.ndarray:
        """Density as a function of distance from the seed (mm), before tissue masking."""
        r = np.asarray(r_mm, dtype=np.float64)
        if self.shape == "gaussian":
            value = self.amplitude * np.exp(-0.5 * (r / self.width_mm) ** 2)
            return np.where(value >= self.cutoff * self.amplitude, value, 0.0)
        psi = np.clip((r - self.center_mm) / self.width_mm, -1.0, 1.0)
        return self.amplitude * 0.5 * (1.0 - psi - np.sin(np.pi * psi) / np.pi)


PRESETS: dict[str, Seed] = {
    "tumorgrowthtoolkit": Seed(),
    "gliomasolver": Seed("bump", width_mm=4.0, center_mm=1.28, amplitude=1.0),
}
"""Peers' seed conventions by name, to compare with a peer under its own initial condition."""
