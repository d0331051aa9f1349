"""Specification of DENT's forecast measures (Koyuncu et al. 2022): SSIM and PSNR with an explicit data range,
tumour cell density and its absolute percentage error, per day and per channel."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulators.surrogates.metrics import (
    absolute_percentage_error,
    forecast_scores,
    psnr,
    ssim,
    tumour_cell_density,
)


def smooth_map(seed: int, shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    x, y = np.meshgrid(*(np.linspace(0, 1, size) for size in shape), indexing="ij")
    rng = np.random.default_rng(seed)
    return np.sin(4 * x + rng.random()) * np.cos(3 * y) + 0.05 * rng.standard_normal(shape)


def test_identical_maps_score_one_and_an_infinite_psnr():
    image = smooth_map(0)
    assert ssim(image, image, data_range=2.0) == pytest.approx(1.0)
    assert ssim(np.zeros((16, 16)), np.zeros((16, 16)), data_range=1.0) == pytest.approx(1.0)
    assert psnr(image, image, data_range=2.0) == math.inf


def test_ssim_falls_with_noise_and_depends_on_the_data_range():
    image = smooth_map(1)
    noisy = image + 0.2 * np.random.default_rng(2).standard_normal(image.shape)
    assert ssim(noisy, image, data_range=2.0) < 0.9
    assert ssim(noisy, image, data_range=20.0) > ssim(noisy, image, data_range=2.0)


def test_psnr_is_ten_log10_of_range_squared_over_mse():
    true = np.zeros((4, 4))
    pred = true.copy()
    pred[0, 0] = 2.0  # MSE = 4 / 16 = 0.25
    assert psnr(pred, true, data_range=5.0) == pytest.approx(10 * math.log10(25.0 / 0.25))  # 20 dB


def test_tumour_cell_density_averages_the_cells_above_the_threshold():
    n = np.array([[0.9, 0.7, 0.5], [0.2, 0.0, 1.0]])
    assert tumour_cell_density(n) == pytest.approx((0.9 + 0.7 + 1.0) / 3)  # 0.5 itself is not above 0.5
    assert tumour_cell_density(n, threshold=0.8) == pytest.approx(0.95)
    assert math.isnan(tumour_cell_density(np.zeros((3, 3))))


def test_absolute_percentage_error_by_hand():
    assert absolute_percentage_error(0.9, 0.8) == pytest.approx(12.5)
    assert absolute_percentage_error(0.7, 0.8) == pytest.approx(12.5)
    np.testing.assert_allclose(absolute_percentage_error(np.array([1.0, 3.0]), np.array([2.0, 4.0])), [50.0, 25.0])


def test_forecast_scores_per_day_and_channel():
    truth = np.stack([np.stack([smooth_map(10 * day + channel) for channel in range(5)]) for day in range(3)])
    truth[:, 0] = np.where(truth[:, 0] > 0, 0.6 + 0.3 * np.clip(truth[:, 0], 0, 1), 0.3)  # no n near 0.5
    predicted = truth.copy()
    predicted[2, 0] *= 1.02  # day 2: tumour cells 2 % too dense
    predicted[1, 3] += 0.1  # day 1: the anti-angiogenic map off by 0.1 everywhere
    ranges = np.full(5, 2.0)
    scores = forecast_scores(predicted, truth, ranges)
    assert scores.ssim.shape == scores.psnr.shape == (3, 5) and scores.tumour_density_ape.shape == (3,)
    assert scores.psnr[1, 3] == pytest.approx(10 * math.log10(4.0 / 0.01))
    assert np.isinf(scores.psnr[0]).all() and scores.ssim[0] == pytest.approx(np.ones(5))
    np.testing.assert_allclose(scores.tumour_density_ape, [0.0, 0.0, 2.0], atol=1e-9)
    assert scores.mean_ssim[1] < 1.0 and scores.mean_psnr.shape == (3,)
    lost = predicted.copy()
    lost[2, 0] = 0.2  # day 2: the forecast loses a tumour the truth still has
    assert forecast_scores(lost, truth, ranges).tumour_density_ape[2] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="one value per channel"):
        forecast_scores(predicted, truth, ranges[:4])
    with pytest.raises(ValueError, match="data_range must be positive"):
        forecast_scores(predicted, truth, np.zeros(5))
