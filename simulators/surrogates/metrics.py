"""How close a forecast of the tumour micro-environment is to the simulated truth: the measures of DENT
(Koyuncu et al., Sci Rep 12:2187, 2022) as small pure functions.

DENT scores its seven-day forecasts of the five maps (n, m, P, A, d) by the structural similarity index
(SSIM; Wang, Bovik, Sheikh, Simoncelli, IEEE Trans Image Process 13(4):600–612, 2004) and the peak
signal-to-noise ratio (PSNR), and the tumour by the absolute percentage error of its tumour cell density (the
mean density over the cells above a threshold). It reports SSIM 0.973 and PSNR 35.41 at day 7 and a tumour
density error of 2.29 % (mean over test cases) at day 7.

SSIM and PSNR come from scikit-image with the data range passed explicitly: a forecast's range must not
decide its own score. DENT does not say which SSIM window it used; here it is Wang et al.'s (an 11 × 11
Gaussian window of σ = 1.5 pixels, K1 = 0.01, K2 = 0.03, population covariances), not scikit-image's default
(a 7 × 7 uniform window with sample covariances). Images must then be at least 11 × 11.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from simulators.microenvironment import FIELDS

DEFAULT_TUMOUR_THRESHOLD = 0.5
"""Cells with n above this are tumour: the tumour region of ``personalize.microenvironment_run`` (n > 0.5),
where the logistic front of Eq. (1) is half-way between normal tissue (n = 0) and its carrying capacity (1).
DENT does not print the threshold it used."""

SSIM_SETTINGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "K1": 0.01, "K2": 0.03}
"""Keyword arguments of ``skimage.metrics.structural_similarity`` that reproduce Wang et al. (2004)."""


def ssim(pred: np.ndarray, true: np.ndarray, data_range: float) -> float:
    """Mean structural similarity of a 2D map ``pred`` to ``true`` (Wang et al. 2004), in [−1, 1].

    Args:
        pred: the forecast map, 2D, at least 11 × 11.
        true: the simulated map, same shape.
        data_range: the span of values the channel can take (max − min over the training data, say); fixes
            the stabilising constants (K1·range)² and (K2·range)².

    Uses :data:`SSIM_SETTINGS` (an 11 × 11 Gaussian window of σ = 1.5). Identical maps score 1, constant ones
    included.
    """
    _check_maps(pred, true, data_range)
    return float(structural_similarity(np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64),
                                       data_range=data_range, **SSIM_SETTINGS))


def psnr(pred: np.ndarray, true: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio 10·log10(data_range² / MSE) of ``pred`` against ``true``, in dB.

    ``data_range`` is the peak: the span of values the channel can take. Identical maps (MSE 0) give
    ``math.inf``.
    """
    _check_maps(pred, true, data_range)
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64),
                                             data_range=data_range))


def tumour_cell_density(n: np.ndarray, threshold: float = DEFAULT_TUMOUR_THRESHOLD) -> float:
    """Mean tumour cell density over the cells where ``n > threshold`` (DENT's tumour cell density).

    NaN where no cell exceeds the threshold (no tumour left).
    """
    n = np.asarray(n, dtype=np.float64)
    tumour = n[n > threshold]
    return float(tumour.mean()) if tumour.size else float("nan")


def absolute_percentage_error(pred: float | np.ndarray, true: float | np.ndarray) -> float | np.ndarray:
    """100·|pred − true| / |true|, elementwise (infinite where ``true`` is 0 and ``pred`` is not)."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        error = 100.0 * np.abs(pred - true) / np.abs(true)
    return float(error) if error.ndim == 0 else error


@dataclass(frozen=True, eq=False)
class ForecastScores:
    """Scores of a forecast of ``D`` days, channels in :data:`simulators.microenvironment.FIELDS` order.

    ``ssim`` and ``psnr`` are ``[D, 5]``; ``tumour_density_pred``, ``tumour_density_true`` and
    ``tumour_density_ape`` (percent) are ``[D]``.
    """

    ssim: np.ndarray
    psnr: np.ndarray
    tumour_density_pred: np.ndarray
    tumour_density_true: np.ndarray
    tumour_density_ape: np.ndarray

    @property
    def mean_ssim(self) -> np.ndarray:
        """SSIM per day averaged over the five maps, ``[D]`` (DENT's "average SSIM")."""
        return self.ssim.mean(axis=1)

    @property
    def mean_psnr(self) -> np.ndarray:
        """PSNR per day averaged over the five maps, ``[D]`` (infinite if a map is exact)."""
        return self.psnr.mean(axis=1)


def forecast_scores(predicted: np.ndarray, truth: np.ndarray, data_range: np.ndarray | tuple[float, ...],
                    threshold: float = DEFAULT_TUMOUR_THRESHOLD) -> ForecastScores:
    """Per day and per channel SSIM and PSNR of ``predicted`` against ``truth``, both ``[D, 5, X, Y]``, and the
    absolute percentage error of the tumour cell density (channel n) per day.

    Args:
        predicted: forecast maps, channels in FIELDS order (n, m, P, A, d).
        truth: simulated maps, same shape.
        data_range: one positive span per channel, ``[5]`` (e.g. max − min of the training data).
        threshold: tumour cells are those with n above it (see :func:`tumour_cell_density`).

    A forecast with no cell above ``threshold`` where the truth has some gets density 0 (an error of 100 %); the
    error is NaN only where the truth has no tumour.
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    data_range = np.asarray(data_range, dtype=np.float64)
    if predicted.shape != truth.shape or predicted.ndim != 4 or predicted.shape[1] != len(FIELDS):
        raise ValueError(f"predicted and truth must be [D, {len(FIELDS)}, X, Y] of one shape, got {predicted.shape} "
                         f"and {truth.shape}")
    if data_range.shape != (len(FIELDS),):
        raise ValueError(f"data_range must hold one value per channel ({len(FIELDS)}), got shape {data_range.shape}")
    days, channels = predicted.shape[:2]
    structural = np.array([[ssim(predicted[day, c], truth[day, c], data_range[c]) for c in range(channels)]
                           for day in range(days)])
    peak = np.array([[psnr(predicted[day, c], truth[day, c], data_range[c]) for c in range(channels)]
                     for day in range(days)])
    tumour = FIELDS.index("n")
    density_pred = np.array([tumour_cell_density(predicted[day, tumour], threshold) for day in range(days)])
    density_true = np.array([tumour_cell_density(truth[day, tumour], threshold) for day in range(days)])
    # a forecast that loses a tumour the truth still has scores its density as 0 (100 % error), never NaN:
    # NaN would drop the worst forecasts from a mean
    density_pred = np.where(np.isnan(density_pred) & ~np.isnan(density_true), 0.0, density_pred)
    return ForecastScores(ssim=structural.reshape(days, channels), psnr=peak.reshape(days, channels),
                          tumour_density_pred=density_pred, tumour_density_true=density_true,
                          tumour_density_ape=np.asarray(absolute_percentage_error(density_pred, density_true))
                          .reshape(days))


def _check_maps(pred: np.ndarray, true: np.ndarray, data_range: float) -> None:
    if np.shape(pred) != np.shape(true) or np.ndim(pred) != 2:
        raise ValueError(f"pred and true must be 2D maps of one shape, got {np.shape(pred)} and {np.shape(true)}")
    if not (np.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be positive and finite, got {data_range}")
