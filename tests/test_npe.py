"""Specification of sequential NPE (:mod:`personalize.npe`): it reaches a known posterior, resumes a killed
run to the same result, refuses another run's checkpoint, and runs the diffusion-type estimators too."""

from __future__ import annotations

import pickle

import pytest
import torch
from sbi.utils.metrics import c2st
from torch.distributions import Independent, MultivariateNormal, Uniform

from personalize.npe import NPESettings, sequential_npe

NOISE = 0.5
REPEATS = 4
X_O = torch.tensor([0.8, -0.4] * REPEATS)


def simulate(theta: torch.Tensor) -> torch.Tensor:
    """x = θ repeated four times + N(0, 0.5²) noise: the posterior under a N(0, I) prior is Gaussian."""
    return theta.repeat(1, REPEATS) + NOISE * torch.randn(theta.shape[0], 2 * REPEATS)


def true_posterior() -> MultivariateNormal:
    """N(m, s² I) with precision 1 + 4/σ² and mean s² Σ x / σ² per coordinate (conjugate Gaussian)."""
    precision = 1.0 + REPEATS / NOISE**2
    mean = X_O.reshape(REPEATS, 2).sum(dim=0) / NOISE**2 / precision
    return MultivariateNormal(mean, torch.eye(2) / precision)


PRIOR = MultivariateNormal(torch.zeros(2), torch.eye(2))
SMALL = NPESettings(estimator="mdn", rounds=2, simulations=500, n_posterior=1000, max_epochs=60, seed=3)


def test_sequential_mdn_reaches_the_known_posterior(measured):
    result = sequential_npe(PRIOR, simulate, X_O, SMALL, progress=False)
    reference = true_posterior().sample((1000,))
    score = float(c2st(result.samples, reference, seed=0, classifier="mlp"))
    measured("sequential MDN vs analytic posterior: C2ST", round(score, 3))
    assert score <= 0.6
    assert result.n_simulations == 1000 and len(result.rounds) == 2
    assert result.log_prob.shape == (1000,) and torch.isfinite(result.log_prob).all()


def test_atomic_loss_is_kept_where_sbi_would_switch_to_its_closed_form(tmp_path, measured):
    """Under a Gaussian prior sbi trains an MDN's later rounds with its closed-form loss, which can fail in
    float32; ``atomic_loss`` keeps APT's atomic loss there, and the estimate still reaches the posterior."""
    settings = NPESettings(estimator="mdn", rounds=2, simulations=500, n_posterior=1000, max_epochs=60, seed=3,
                           atomic_loss=True)
    result = sequential_npe(PRIOR, simulate, X_O, settings, checkpoint_dir=tmp_path, progress=False)
    with open(tmp_path / "npe_round.pkl", "rb") as handle:
        inference = pickle.load(handle)["inference"]
    assert inference.use_non_atomic_loss is False
    score = float(c2st(result.samples, true_posterior().sample((1000,)), seed=0, classifier="mlp"))
    measured("sequential MDN, atomic loss, vs analytic posterior: C2ST", round(score, 3))
    assert score <= 0.6


def test_a_torch_uniform_prior_trains_its_later_rounds_too():
    """sbi takes any (wrapped) torch Uniform prior as box-uniform and switches an MDN to its closed-form loss
    from round 2, which needs an affine standardisation of θ (sbibm's priors are such)."""
    prior = Independent(Uniform(-2 * torch.ones(2), 2 * torch.ones(2)), 1)
    settings = NPESettings(estimator="mdn", rounds=2, simulations=100, n_posterior=200, max_epochs=5, seed=1)
    result = sequential_npe(prior, simulate, X_O, settings, progress=False)
    assert result.n_simulations == 200 and (result.samples.abs() <= 2).all()


def test_the_spline_flow_learns_a_bounded_prior_in_its_unbounded_space(measured):
    """The spline flow learns θ through the box's logit transform (sbi's nflows spline refuses it; the zuko one
    takes it), so every draw lies inside the prior and the estimate reaches the known posterior."""
    box = Independent(Uniform(-3 * torch.ones(2), 3 * torch.ones(2)), 1)  # the posterior lies deep inside
    settings = NPESettings(estimator="nsf", rounds=2, simulations=1000, n_posterior=1000, max_epochs=200, seed=3)
    result = sequential_npe(box, simulate, X_O, settings, progress=False)
    assert (result.samples.abs() < 3).all() and torch.isfinite(result.log_prob).all()
    score = float(c2st(result.samples, true_posterior().sample((1000,)), seed=0, classifier="mlp"))
    measured("sequential spline flow (bounded prior) vs analytic posterior: C2ST", round(score, 3))
    assert score <= 0.6


class Killed(RuntimeError):
    pass


def test_a_killed_run_resumes_from_its_last_round_to_the_same_result(tmp_path):
    def kill_after_first(record):
        if record.index == 0:
            raise Killed

    with pytest.raises(Killed):
        sequential_npe(PRIOR, simulate, X_O, SMALL, checkpoint_dir=tmp_path, progress=False,
                       after_round=kill_after_first)
    calls = []

    def counting(theta):
        calls.append(len(theta))
        return simulate(theta)

    resumed = sequential_npe(PRIOR, counting, X_O, SMALL, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert calls == [SMALL.simulations]  # only the second round was simulated again
    uninterrupted = sequential_npe(PRIOR, simulate, X_O, SMALL, checkpoint_dir=tmp_path / "whole", progress=False)
    torch.testing.assert_close(resumed.samples, uninterrupted.samples)
    assert resumed.n_simulations == uninterrupted.n_simulations == 1000


def test_resume_refuses_the_checkpoint_of_another_run(tmp_path):
    sequential_npe(PRIOR, simulate, X_O, NPESettings(rounds=1, simulations=200, n_posterior=10, max_epochs=5),
                   checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another NPE run"):
        sequential_npe(PRIOR, simulate, X_O + 1.0, NPESettings(rounds=1, simulations=200, n_posterior=10,
                                                               max_epochs=5),
                       checkpoint_dir=tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("estimator", ["fmpe"])
def test_vector_field_estimators_truncate_the_prior_between_rounds(estimator, measured, tmp_path):
    """Truncated-prior rounds reach the posterior, and their checkpoint (which holds the truncation) is written."""
    settings = NPESettings(estimator=estimator, rounds=2, simulations=300, n_posterior=300, max_epochs=30, seed=1)
    result = sequential_npe(PRIOR, simulate, X_O, settings, progress=False, checkpoint_dir=tmp_path)
    assert (tmp_path / "npe_round.pkl").is_file()
    truth = true_posterior()
    error = (result.samples.mean(dim=0) - truth.mean).abs().max().item()
    measured(f"{estimator}: largest error of the posterior mean", round(error, 3))
    assert error < 0.15  # the posterior's standard deviation is 0.24
    assert result.n_simulations == 600


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown estimator"):
        NPESettings(estimator="maf2")
    with pytest.raises(ValueError, match="rounds"):
        NPESettings(rounds=0)
