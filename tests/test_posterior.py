"""Posterior: weighted summaries, resampling, and the NetCDF round trip every engine's output relies on."""

from __future__ import annotations

import numpy as np
import pytest

from personalize.posterior import Posterior


def make_posterior(log_weights: np.ndarray, samples: np.ndarray | None = None, **kwargs) -> Posterior:
    rng = np.random.default_rng(0)
    n = len(log_weights)
    fields = dict(
        parameter_names=("D_w", "rho"),
        samples=rng.normal(size=(n, 2)) if samples is None else samples,
        log_weights=log_weights,
        log_evidence=-3.25,
        n_simulations=1234,
        wall_s=5.5,
        method="test",
        units={"D_w": "mm^2/day", "rho": "1/day"},
    )
    return Posterior(**(fields | kwargs))


def test_netcdf_round_trip_keeps_samples_weights_evidence_names_and_densities(tmp_path):
    rng = np.random.default_rng(1)
    original = make_posterior(rng.normal(size=50), log_density=rng.normal(size=50))
    path = tmp_path / "posterior.nc"
    original.to_inference_data().to_netcdf(str(path))
    back = Posterior.from_netcdf(path)
    np.testing.assert_array_equal(back.samples, original.samples)
    np.testing.assert_array_equal(back.log_weights, original.log_weights)
    np.testing.assert_array_equal(back.log_density, original.log_density)
    assert back.parameter_names == original.parameter_names
    assert (back.log_evidence, back.n_simulations, back.wall_s) == (-3.25, 1234, 5.5)
    assert (back.method, back.units) == ("test", original.units)


def test_round_trip_without_evidence_or_densities(tmp_path):
    original = make_posterior(np.zeros(10), log_evidence=None)
    original.to_inference_data().to_netcdf(str(tmp_path / "posterior.nc"))
    back = Posterior.from_netcdf(tmp_path / "posterior.nc")
    assert back.log_evidence is None and back.log_density is None
    np.testing.assert_array_equal(back.samples, original.samples)


def test_inference_data_has_one_chain_and_one_variable_per_parameter():
    data = make_posterior(np.zeros(20)).to_inference_data()
    assert set(data.posterior.data_vars) == {"D_w", "rho"}
    assert data.posterior["rho"].shape == (1, 20)
    assert "log_weight" in data.sample_stats


def test_weighted_quantiles_equal_quantiles_of_repeated_samples():
    """Integer weights mean "this sample, that many times": the inverse weighted CDF says the same."""
    values = np.array([3.0, 1.0, 2.0, 5.0])
    counts = np.array([1, 4, 2, 3])
    samples = np.stack([values, -values], axis=1)
    posterior = make_posterior(np.log(counts), samples=samples)
    repeated = np.repeat(samples, counts, axis=0)
    for q in (0.05, 0.1, 0.3, 0.5, 0.7, 0.95):
        np.testing.assert_allclose(
            posterior.quantile(q), np.quantile(repeated, q, axis=0, method="inverted_cdf"))
    assert posterior.quantile(0.5)[0] == 2.0  # CDF: 1 → 0.4, 2 → 0.6
    np.testing.assert_allclose(posterior.mean(), repeated.mean(axis=0))


def test_weighted_quantiles_of_importance_samples_match_the_target():
    """Uniform samples on [0, 1] weighted by 2x are samples of the density 2x, whose CDF is x²."""
    x = np.random.default_rng(2).uniform(size=(200_000, 1))
    posterior = Posterior(("x",), x, np.log(2 * x[:, 0]), None, 0, 0.0, "test")
    np.testing.assert_allclose(posterior.quantile(np.array([0.05, 0.5, 0.95]))[:, 0],
                               np.sqrt([0.05, 0.5, 0.95]), atol=3e-3)
    assert posterior.effective_sample_size == pytest.approx(200_000 * 0.75, rel=0.01)  # 1 / E[(2x)²]·N


def test_uniform_weights_use_numpys_default_quantiles():
    posterior = make_posterior(np.zeros(101))
    assert not posterior.is_weighted
    np.testing.assert_array_equal(posterior.quantile(0.05), np.quantile(posterior.samples, 0.05, axis=0))


def test_summary_has_map_mean_quantiles_and_units():
    log_density = np.zeros(30)
    log_density[7] = 1.0
    posterior = make_posterior(np.zeros(30), log_density=log_density)
    summary = posterior.summary()
    assert posterior.map_index() == 7
    assert summary["rho"]["map"] == posterior.samples[7, 1]
    assert summary["D_w"]["unit"] == "mm^2/day"
    assert summary["rho"]["q05"] < summary["rho"]["mean"] < summary["rho"]["q95"]
    assert make_posterior(np.zeros(30)).summary()["rho"]["map"] is None
    with pytest.raises(ValueError, match="no MAP"):
        make_posterior(np.zeros(30)).map_index()


def test_resample_draws_in_proportion_to_the_weights():
    samples = np.array([[0.0, 0.0], [1.0, 1.0]])
    posterior = make_posterior(np.log([0.25, 0.75]), samples=samples)
    resampled = posterior.resample(20_000, seed=3)
    assert resampled.samples.shape == (20_000, 2) and not resampled.is_weighted
    assert resampled.samples[:, 0].mean() == pytest.approx(0.75, abs=0.015)  # 5 standard errors
    np.testing.assert_array_equal(resampled.samples, posterior.resample(20_000, seed=3).samples)
    assert resampled.log_evidence == posterior.log_evidence


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="parameter names"):
        Posterior(("a",), np.zeros((3, 2)), np.zeros(3), None, 0, 0.0, "test")
    with pytest.raises(ValueError, match="log_weights"):
        Posterior(("a", "b"), np.zeros((3, 2)), np.zeros(4), None, 0, 0.0, "test")
