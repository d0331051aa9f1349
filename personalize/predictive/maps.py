"""Posterior predictive tumour maps: what the posterior says about the cell density in every voxel.

For draws θ_1 … θ_n of the posterior (equally weighted) and their simulated densities u_k,

    mean density      ū(x) = (1/n) Σ_k u_k(x)                    (the posterior-predictive mean),
    exceedance        P(u(x) > c) ≈ (1/n) Σ_k 1[u_k(x) > c],

the second being the probability that the tumour's cell density at x exceeds c, the map from which a
probabilistic radiotherapy target is drawn (Lipkova et al., IEEE TMI 2019, Sec. V).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

DEFAULT_THRESHOLDS = (0.01, 0.25, 0.7)
"""Exceedance levels written by a fit: 1 % (the infiltration a radiotherapy margin must cover), and the
usual FLAIR (0.25) and T1Gd (0.7) visibility thresholds."""


@dataclass(frozen=True, eq=False)
class PredictiveMaps:
    """Posterior-predictive maps on one grid.

    Attributes:
        mean: ū, float32 ``(X, Y, Z)``.
        exceedance: threshold c → P(u > c), float32 ``(X, Y, Z)``.
        n_draws: the number of posterior draws behind the maps.
    """

    mean: np.ndarray
    exceedance: dict[float, np.ndarray]
    n_draws: int


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """The thresholds as sorted, distinct floats in (0, 1); a ValueError otherwise."""
    values = tuple(sorted({float(c) for c in thresholds}))
    if not values or any(not 0 < c < 1 for c in values):
        raise ValueError(f"exceedance thresholds must lie in (0, 1), got {list(thresholds)}")
    return values


def posterior_predictive(
    density: Callable[[torch.Tensor], torch.Tensor],
    samples: np.ndarray,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    chunk_size: int = 32,
    progress: bool = False,
) -> PredictiveMaps:
    """Mean density and exceedance probabilities over equally weighted posterior ``samples[n, P]``.

    Args:
        density: batched ``theta[m, P] -> Tensor[m, X, Y, Z]``, e.g.
            :meth:`personalize.working_grid.ImageLogLikelihood.density`.
        samples: posterior draws, physical units, one per row.
        thresholds: the levels c of P(u > c).
        chunk_size: draws simulated per batch (memory: ``chunk_size`` densities).
        progress: show a progress bar over draws.
    """
    levels = check_thresholds(thresholds)
    theta = torch.as_tensor(np.asarray(samples, dtype=np.float64))
    if theta.ndim != 2 or len(theta) == 0:
        raise ValueError(f"samples must be a non-empty [n, P] array, got shape {tuple(theta.shape)}")
    total = counts = None
    with tqdm(total=len(theta), disable=not progress, desc="posterior predictive", unit="draw") as bar:
        for chunk in theta.split(chunk_size):
            u = density(chunk).double().cpu()
            if total is None:
                total = torch.zeros(u.shape[1:], dtype=torch.float64)
                counts = torch.zeros((len(levels), *u.shape[1:]), dtype=torch.float64)
            total += u.sum(dim=0)
            for i, level in enumerate(levels):
                counts[i] += (u > level).sum(dim=0)
            bar.update(len(chunk))
    n = len(theta)
    return PredictiveMaps(
        mean=(total / n).float().numpy(),
        exceedance={level: (counts[i] / n).float().numpy() for i, level in enumerate(levels)},
        n_draws=n,
    )
