"""Calibration diagnostics (SBC ranks and TARP coverage) of amortized posteriors on a Gaussian toy.

The toy: θ ~ N(0, I₂), x = (θ, θ, θ) + 0.3·ε, so the exact posterior is Gaussian with precision 1 + 3/0.09 per
coordinate (sd 0.17) and mean Σₖ xₖ / 0.09 / precision.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from personalize.calibration import ATC_NULL_SD, Calibration, calibrate, plot_calibration
from personalize.npe import NPESettings, sequential_npe

REPEATS, NOISE = 3, 0.3
PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))
N_CALIBRATION = 200
pytestmark = [pytest.mark.filterwarnings("ignore:Maximum number of epochs:UserWarning"),  # the cap is deliberate
              pytest.mark.usefixtures("one_torch_thread")]
KS_CRITICAL_1PCT = 1.628
"""Kolmogorov's 1 % critical value of sqrt(n)·sup|F_n - F|: a calibrated ECP stays within 1.628/sqrt(n) of α."""


def simulate(theta: torch.Tensor) -> torch.Tensor:
    return theta.repeat(1, REPEATS) + NOISE * torch.randn(theta.shape[0], 2 * REPEATS)


class GaussianPosterior:
    """The toy's exact posterior, optionally shifted by ``offset`` (a sampler sbi's diagnostics accept)."""

    precision = 1.0 + REPEATS / NOISE**2

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def sample_batched(self, sample_shape, x, show_progress_bars=False):
        mean = x.reshape(x.shape[0], REPEATS, 2).sum(1) / NOISE**2 / self.precision + self.offset
        return mean + torch.randn(*sample_shape, *mean.shape) / math.sqrt(self.precision)


class Shrunk:
    """An overconfident posterior: each x's draws pulled toward their mean by ``factor``."""

    def __init__(self, posterior, factor: float) -> None:
        self.posterior, self.factor = posterior, factor

    def sample_batched(self, sample_shape, x, show_progress_bars=False):
        draws = self.posterior.sample_batched(sample_shape, x=x, show_progress_bars=False)
        mean = draws.mean(0, keepdim=True)
        return mean + self.factor * (draws - mean)


@pytest.fixture(scope="module")
def amortized():
    """A one-round (amortized) MDN NPE of the toy, trained on 2,000 prior simulations (~8 s, 60 epochs)."""
    settings = NPESettings(estimator="mdn", rounds=1, simulations=2000, n_posterior=10, num_components=2,
                           hidden_features=32, training_batch_size=200, max_epochs=60, seed=0)
    return sequential_npe(PRIOR, simulate, torch.zeros(2 * REPEATS), settings, progress=False).posterior


def test_trained_amortized_posterior_is_calibrated(amortized, measured, tmp_path):
    calibration = calibrate(amortized, PRIOR, simulate, n_simulations=N_CALIBRATION, seed=0,
                            parameter_names=("a", "b"))
    deviation = float(np.max(np.abs(calibration.tarp_ecp - calibration.tarp_alpha)))
    measured("SBC KS p-values", np.round(calibration.sbc_ks_pvalues, 3).tolist())
    measured("SBC C2ST ranks vs uniform", np.round(calibration.sbc_c2st_ranks, 3).tolist())
    measured("SBC C2ST data-averaged posterior vs prior", np.round(calibration.sbc_c2st_dap, 3).tolist())
    measured("TARP ATC (tolerance)", f"{calibration.tarp_atc:+.4f} ({calibration.atc_tolerance():.4f})")
    measured("TARP max |ECP - alpha|", f"{deviation:.3f}")
    measured("TARP KS p-value", f"{calibration.tarp_ks_pvalue:.3f}")
    measured("wall s (with C2STs)", f"{calibration.wall_s:.1f}")

    assert calibration.ranks.shape == (N_CALIBRATION, 2)
    assert calibration.ranks.min() >= 0 and calibration.ranks.max() <= 1000
    assert calibration.parameter_names == ("a", "b")
    assert calibration.n_simulations == N_CALIBRATION and calibration.n_invalid == 0
    # Four training seeds measured min KS p 0.12 and ATC +0.008 … +0.019 with these settings.
    assert np.all(calibration.sbc_ks_pvalues > 0.01)
    # ATC's sampling sd under calibration is sqrt(5/192)/sqrt(n) = 0.011; the tolerance is its z-test at 1/3 %.
    assert abs(calibration.tarp_atc) <= calibration.atc_tolerance() == pytest.approx(
        2.935 * ATC_NULL_SD / math.sqrt(N_CALIBRATION), rel=1e-3)
    assert deviation < KS_CRITICAL_1PCT / math.sqrt(N_CALIBRATION)
    assert np.all(np.abs(calibration.sbc_c2st_ranks - 0.5) < 0.1)
    assert np.all(np.abs(calibration.sbc_c2st_dap - 0.5) < 0.1)
    assert calibration.calibrated() and calibration.failures() == ()

    record = json.loads(json.dumps(calibration.to_dict()))
    assert record["calibrated"] is True and record["n_simulations"] == N_CALIBRATION
    assert set(record["sbc"]) == {"a", "b"} and len(record["tarp"]["ecp"]) == len(calibration.tarp_alpha)

    path = plot_calibration(calibration, tmp_path / "figures" / "calibration.png", title="MDN")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_overconfident_posterior_is_flagged(amortized, measured, tmp_path):
    calibration = calibrate(Shrunk(amortized, 0.3), PRIOR, simulate, n_simulations=N_CALIBRATION, seed=0,
                            c2st=False)
    measured("SBC KS p-values", [f"{p:.1e}" for p in calibration.sbc_ks_pvalues])
    measured("TARP ATC (tolerance)", f"{calibration.tarp_atc:+.4f} ({calibration.atc_tolerance():.4f})")
    measured("wall s (no C2STs)", f"{calibration.wall_s:.2f}")

    assert np.all(calibration.sbc_ks_pvalues < 1e-6)
    ranks = calibration.ranks
    assert np.mean((ranks < 50) | (ranks > 950)) > 0.3  # ∪-shaped: the truth falls outside the narrow draws
    assert calibration.tarp_atc < -calibration.atc_tolerance()  # too narrow
    assert not calibration.calibrated()
    assert len(calibration.failures()) == 3 and "too narrow" in calibration.failures()[-1]
    assert np.all(np.isnan(calibration.sbc_c2st_ranks))
    assert json.loads(json.dumps(calibration.to_dict()))["sbc"]["theta_1"]["c2st_ranks"] is None
    assert plot_calibration(calibration, tmp_path / "overconfident.png").exists()


def test_biased_posterior_is_flagged_by_sbc(measured):
    """A shift of 0.6 posterior sd: SBC's ranks pile at 0; TARP's coverage with random references barely moves."""
    calibration = calibrate(GaussianPosterior(offset=0.1), PRIOR, simulate, n_simulations=N_CALIBRATION, seed=0,
                            c2st=False)
    measured("SBC KS p-values", [f"{p:.1e}" for p in calibration.sbc_ks_pvalues])
    measured("TARP ATC (tolerance)", f"{calibration.tarp_atc:+.4f} ({calibration.atc_tolerance():.4f})")
    assert np.all(calibration.sbc_ks_pvalues < 1e-4)
    assert np.all(np.median(calibration.ranks, axis=0) < 400)
    assert not calibration.calibrated()
    assert all(reason.startswith("SBC") for reason in calibration.failures())


def test_exact_posterior_passes_is_reproducible_and_leaves_torch_state(measured):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = calibrate(GaussianPosterior(), PRIOR, simulate, n_simulations=N_CALIBRATION, seed=7, c2st=False)
    assert torch.equal(torch.get_rng_state(), before)
    second = calibrate(GaussianPosterior(), PRIOR, simulate, n_simulations=N_CALIBRATION, seed=7, c2st=False)
    other = calibrate(GaussianPosterior(), PRIOR, simulate, n_simulations=N_CALIBRATION, seed=8, c2st=False)
    measured("SBC KS p-values", np.round(first.sbc_ks_pvalues, 3).tolist())
    measured("TARP ATC", f"{first.tarp_atc:+.4f}")
    assert first.calibrated()
    assert np.array_equal(first.ranks, second.ranks) and first.tarp_atc == second.tarp_atc
    assert not np.array_equal(first.ranks, other.ranks)


def test_non_finite_simulations_are_dropped_and_counted():
    def failing(theta: torch.Tensor) -> torch.Tensor:
        x = simulate(theta)
        x[theta[:, 0] > 1.0] = float("nan")  # ~16 % of prior draws
        return x

    calibration = calibrate(GaussianPosterior(), PRIOR, failing, n_simulations=N_CALIBRATION, c2st=False)
    assert calibration.n_invalid > 10
    assert calibration.n_simulations + calibration.n_invalid == N_CALIBRATION
    assert calibration.ranks.shape == (calibration.n_simulations, 2)


@pytest.mark.filterwarnings("ignore:Number of (SBC|TARP) samples:UserWarning")
@pytest.mark.filterwarnings("ignore:ks_2samp. Exact calculation unsuccessful:RuntimeWarning")
def test_volumes_through_an_embedding_net():
    """x of shape [N, C, X, Y, Z] as personalize.fit passes them (two channels, sbi's "structured" z-scoring, which
    fails for one channel: it takes the standard deviation over dimension 1): a DirectPosterior with a Conv3d
    embedding samples all x in one batch."""
    def volumes(theta: torch.Tensor) -> torch.Tensor:
        grid = torch.linspace(-1, 1, 4)
        a, b = (theta[:, j, None, None, None] for j in (0, 1))
        ramps = torch.stack([(grid[:, None, None] * a).expand(-1, 4, 4, 4),
                             (grid[None, None, :] * b).expand(-1, 4, 4, 4)], dim=1)
        return ramps + NOISE * torch.randn(theta.shape[0], 2, 4, 4, 4)

    embedding = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 8))
    settings = NPESettings(estimator="mdn", rounds=1, simulations=300, n_posterior=10, num_components=2,
                           hidden_features=16, max_epochs=3, seed=0)
    posterior = sequential_npe(PRIOR, volumes, torch.zeros(2, 4, 4, 4), settings, embedding=embedding,
                               z_score_x="structured", progress=False).posterior
    calibration = calibrate(posterior, PRIOR, volumes, n_simulations=40, n_posterior_samples=100, c2st=False)
    assert calibration.ranks.shape == (40, 2) and calibration.ranks.max() <= 100
    assert np.all(np.isfinite(calibration.sbc_ks_pvalues)) and math.isfinite(calibration.tarp_atc)
    assert len(calibration.tarp_alpha) == len(calibration.tarp_ecp) == 40 // 10 + 1
    one_by_one = calibrate(posterior, PRIOR, volumes, n_simulations=40, n_posterior_samples=100, c2st=False,
                           batched=False)
    assert one_by_one.ranks.shape == (40, 2) and math.isfinite(one_by_one.tarp_atc)


@pytest.mark.filterwarnings("ignore:Number of (SBC|TARP) samples:UserWarning")
def test_arguments_are_checked():
    with pytest.raises(ValueError, match="n_simulations"):
        calibrate(GaussianPosterior(), PRIOR, simulate, n_simulations=10)
    with pytest.raises(ValueError, match="names"):
        calibrate(GaussianPosterior(), PRIOR, simulate, n_simulations=20, parameter_names=("a",), c2st=False)
    calibration = calibrate(GaussianPosterior(), PRIOR, simulate, n_simulations=20, c2st=False)
    assert isinstance(calibration, Calibration)
    with pytest.raises(ValueError, match="level"):
        calibration.calibrated(level=0.0)
