"""How well the inverse network does on held-out tumours: errors of its outputs, and of the tumours it implies.

Ezhov et al., Medical Image Analysis 83:102672 (2023), arXiv:2111.04090, score LMI two ways (their Table 2
format): the error of the predicted parameters, and the agreement of the tumour simulated from them with the
true one, by the Dice coefficient of the two densities thresholded at u = 0.01, 0.1 and 0.8 and the mean
absolute error of the density in white and in grey matter. Here:

- :attr:`TestMetrics.mae_scaled`, :attr:`TestMetrics.mae`: mean absolute error of each output (μ₁, μ₂, x, y, z)
  over the whole test set, in the network's [−1, 1] units and in physical units (mm; μ₂ dimensionless);
- for the first ``cases`` test samples, the density grown from the predicted (μ₁, μ₂, x, y, z) against the one
  grown from the true parameters, on the dataset's anatomy with its simulator. (D_w, ρ, T) come from μ at the
  true front speed 2√(D_w ρ) (:func:`personalize.lmi.parameters.growth_from_mu`); any speed gives the same
  density, so the comparison is of μ and the seed alone. WM and GM voxels: tissue voxels (``wm + gm`` ≥
  :data:`personalize.priors.TISSUE_THRESHOLD`) labelled by the larger of the two probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from personalize.overlap import dice
from personalize.lmi.dataset import ShardDataset
from personalize.lmi.network import predict
from personalize.lmi.parameters import OUTPUT_NAMES, OutputRanges, growth_from_mu, mu_from_growth
from personalize.priors import TISSUE_THRESHOLD
from simulators.anatomy import Anatomy
from simulators.fisher_kolmogorov import FisherKolmogorov, front_speed

DENSITY_THRESHOLDS = (0.01, 0.1, 0.8)
"""Levels u at which the predicted and the true density are compared by Dice (Ezhov et al. 2023, Table 2)."""


@dataclass(frozen=True)
class CaseMetrics:
    """One test sample: Dice at each of :data:`DENSITY_THRESHOLDS`, density MAE in WM and in GM."""

    sample: int
    dice: tuple[float, ...]
    mae_wm: float
    mae_gm: float


@dataclass(frozen=True)
class TestMetrics:
    """Test-set errors (module docstring); ``cases`` hold the density comparisons, ``dice_mean``, ``mae_wm_mean``
    and ``mae_gm_mean`` their means."""

    samples: int
    mae_scaled: dict[str, float]
    mae: dict[str, float]
    cases: tuple[CaseMetrics, ...]
    dice_mean: dict[str, float]
    mae_wm_mean: float
    mae_gm_mean: float

    def table(self) -> str:
        """The Table 2 row: mean ± standard deviation over the cases."""
        columns = [(f"Dice u={u:g}", [case.dice[i] for case in self.cases]) for i, u in enumerate(DENSITY_THRESHOLDS)]
        columns += [("MAE WM", [case.mae_wm for case in self.cases]), ("MAE GM", [case.mae_gm for case in self.cases])]
        head = " | ".join(f"{name:>15}" for name, _ in columns)
        row = " | ".join(f"{np.mean(values):>7.3f} ± {np.std(values):5.3f}" for _, values in columns)
        return f"{head}\n{row}"


def tissue_regions(anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Boolean WM and GM masks: tissue voxels labelled by the larger of the two probabilities."""
    tissue = anatomy.wm + anatomy.gm >= TISSUE_THRESHOLD
    return tissue & (anatomy.wm >= anatomy.gm), tissue & (anatomy.wm < anatomy.gm)


def compare_densities(predicted: np.ndarray, true: np.ndarray, anatomy: Anatomy,
                      sample: int = 0) -> CaseMetrics:
    """Dice of ``predicted > u`` and ``true > u`` at each of :data:`DENSITY_THRESHOLDS`, and the mean absolute
    density error over WM and over GM voxels (:func:`tissue_regions`)."""
    if predicted.shape != true.shape or true.shape != anatomy.shape:
        raise ValueError(f"densities {predicted.shape}, {true.shape} must lie on the anatomy's grid {anatomy.shape}")
    wm, gm = tissue_regions(anatomy)
    error = np.abs(predicted - true)
    return CaseMetrics(sample=sample, dice=tuple(dice(predicted > u, true > u) for u in DENSITY_THRESHOLDS),
                       mae_wm=float(error[wm].mean()), mae_gm=float(error[gm].mean()))


def predict_dataset(network: nn.Module, dataset: ShardDataset, *, batch_size: int = 16) -> torch.Tensor:
    """Scaled outputs ``[N, 5]`` (CPU) of every sample of ``dataset``, in order, a batch at a time."""
    return torch.cat([predict(network, inputs, batch_size=batch_size)
                      for inputs, _ in DataLoader(dataset, batch_size=batch_size)])


def evaluate_test_set(network: nn.Module, test_set: ShardDataset, ranges: OutputRanges, anatomy: Anatomy,
                      simulator: FisherKolmogorov, *, cases: int, batch_size: int = 16) -> TestMetrics:
    """:class:`TestMetrics` of ``network`` on ``test_set`` (samples of ``anatomy``'s grid, targets scaled by
    ``ranges``), growing the densities of the first ``cases`` samples with ``simulator`` on the CPU."""
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    predicted_scaled = predict_dataset(network, test_set, batch_size=batch_size).double().numpy()
    parameters = test_set.parameters
    true = np.column_stack([*mu_from_growth(parameters[:, 0], parameters[:, 1], parameters[:, 2]), parameters[:, 3:6]])
    predicted = ranges.unscale(predicted_scaled)
    mae_scaled = np.abs(predicted_scaled - ranges.scale(true)).mean(axis=0)
    mae = np.abs(predicted - true).mean(axis=0)
    compared = []
    for sample in range(min(cases, len(test_set))):
        velocity = front_speed(parameters[sample, 0], parameters[sample, 1])
        growth = growth_from_mu(predicted[sample, 0], predicted[sample, 1], velocity)
        rows = torch.tensor(np.stack([[*growth, *predicted[sample, 2:]], parameters[sample]]))
        densities = [simulator.simulate(row[None], anatomy)[0].numpy() for row in rows]
        compared.append(compare_densities(*densities, anatomy, sample=sample))
    return TestMetrics(
        samples=len(test_set),
        mae_scaled={name: float(v) for name, v in zip(OUTPUT_NAMES, mae_scaled)},
        mae={name: float(v) for name, v in zip(OUTPUT_NAMES, mae)},
        cases=tuple(compared),
        dice_mean={f"{u:g}": float(np.mean([case.dice[i] for case in compared]))
                   for i, u in enumerate(DENSITY_THRESHOLDS)},
        mae_wm_mean=float(np.mean([case.mae_wm for case in compared])),
        mae_gm_mean=float(np.mean([case.mae_gm for case in compared])))
