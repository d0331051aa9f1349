"""Specification of posterior-predictive maps: the mean density and the probability of exceeding a level."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from personalize.predictive import check_thresholds, posterior_predictive


def ramp(theta: torch.Tensor) -> torch.Tensor:
    """A density u(x) = clip(θ₀ · x / 9) on a 10 × 1 × 1 grid, so every quantity is known by hand."""
    x = torch.arange(10, dtype=torch.float64) / 9
    return (theta[:, :1] * x).clamp(0, 1).reshape(-1, 10, 1, 1)


def test_mean_and_exceedance_are_the_sample_averages():
    samples = np.array([[0.2], [0.5], [1.0], [0.8]])
    maps = posterior_predictive(ramp, samples, thresholds=(0.25, 0.5), chunk_size=3)
    x = np.arange(10) / 9
    np.testing.assert_allclose(maps.mean[:, 0, 0], np.mean(np.clip(samples * x, 0, 1), axis=0), rtol=1e-6)
    for level in (0.25, 0.5):
        np.testing.assert_allclose(maps.exceedance[level][:, 0, 0], np.mean(samples * x > level, axis=0))
    assert maps.n_draws == 4


def test_exceedance_falls_as_the_level_rises():
    samples = np.random.default_rng(0).uniform(0, 1, size=(50, 1))
    maps = posterior_predictive(ramp, samples, thresholds=(0.7, 0.01, 0.25))
    assert list(maps.exceedance) == [0.01, 0.25, 0.7]
    assert np.all(maps.exceedance[0.01] >= maps.exceedance[0.25]) and np.all(maps.exceedance[0.25] >= maps.exceedance[0.7])


@pytest.mark.parametrize("bad", [(), (0.0,), (1.0,), (-0.2, 0.5)])
def test_thresholds_outside_the_unit_interval_are_refused(bad):
    with pytest.raises(ValueError, match="thresholds"):
        check_thresholds(bad)
