"""Personalization of the micro-environment model to a virtual patient, and its predicted response.

Small grids (15 × 15 cells of 0.5 mm, a step of 2 hours, days 7, 14, 21) keep a simulation near 0.2 s on one
loaded core; the TMCMC fit (392 simulations) takes about 70 s, the file about 100 s.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sbi.utils.user_input_checks import process_prior

from personalize.npe import NPESettings
from personalize.posterior import Posterior
from personalize.predictive.schedules import predict_response
from personalize.virtual_patient import (
    DEFAULT_BOUNDS,
    NAMES,
    DensitySimulator,
    LogUniformPrior,
    MapLogLikelihood,
    VirtualPatientFitSettings,
    VirtualPatientObservation,
    clipped_gaussian_log_likelihood,
    fit_virtual_patient,
    make_virtual_patient,
    protocol_schedule,
)
from simulators.microenvironment import MicroenvironmentParameters, initial_state, simulate_microenvironment
from simulators.treatment import Dose, Schedule

GRID, SPACING_MM, STEP_DAYS = 15, 0.5, 1.0 / 12.0
TINY = dict(grid=GRID, spacing_mm=SPACING_MM, max_time_step_days=STEP_DAYS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def patient():
    return make_virtual_patient(**TINY)


def truth_row(truth, names=NAMES) -> torch.Tensor:
    return torch.tensor([[truth[name] for name in names]], dtype=torch.float64)


def test_simulator_is_deterministic_and_matches_the_model():
    schedule = Schedule((Dose(1.0, "antiangiogenic", 1.0), Dose(1.0, "chemotherapy", 2.0)))
    initial = initial_state((GRID, GRID), seed=3, spacing_mm=SPACING_MM)
    simulator = DensitySimulator(initial, schedule, (2.0, 4.0), ("r_n", "d_r", "sigma"),
                                 max_time_step_days=STEP_DAYS)
    theta = torch.tensor([[0.3, 1.5, 0.1], [0.15, 0.4, 0.2]], dtype=torch.float64)
    maps = simulator(theta)
    assert maps.shape == (2, 2, GRID, GRID)
    assert torch.equal(maps, simulator(theta))
    assert torch.equal(maps[1:], simulator(theta[1:]))  # a row does not depend on its batch
    reference = simulate_microenvironment(initial, schedule, 4.0, MicroenvironmentParameters(tumour_growth=0.3,
                                          drug_kill=1.5), output_every_days=1.0, max_time_step_days=STEP_DAYS)
    np.testing.assert_allclose(maps[0].numpy(), reference.n[[2, 4]], rtol=0, atol=1e-12)


def test_virtual_patient_is_reproducible_noisy_and_clipped(patient):
    observation, truth = patient
    again, _ = make_virtual_patient(**TINY)
    other, _ = make_virtual_patient(noise_seed=1, **TINY)
    assert np.array_equal(observation.maps, again.maps)
    assert not np.array_equal(observation.maps, other.maps)
    assert observation.maps.shape == (3, GRID, GRID) and observation.maps.min() >= 0 and observation.maps.max() <= 1
    assert set(truth) == set(NAMES)
    clean = DensitySimulator(observation.initial_state(), observation.schedule, observation.days, NAMES,
                             max_time_step_days=STEP_DAYS)(truth_row(truth))[0].numpy()
    inside = (observation.maps > 0) & (observation.maps < 1)
    assert np.std(observation.maps[inside] - clean[inside]) == pytest.approx(truth["sigma"], rel=0.3)


def test_clipped_gaussian_likelihood_censors_at_both_ends():
    density = torch.tensor([[[[0.02, 0.5], [0.97, 0.3]]]], dtype=torch.float64)
    observed = torch.tensor([[[0.0, 0.45], [1.0, 0.31]]], dtype=torch.float64)
    sigma = 0.08
    expected = (norm.logcdf(-0.02 / sigma) + norm.logpdf(0.45, 0.5, sigma) + norm.logcdf((0.97 - 1) / sigma)
                + norm.logpdf(0.31, 0.3, sigma))
    value = clipped_gaussian_log_likelihood(density, observed, torch.tensor([sigma], dtype=torch.float64))
    assert float(value[0]) == pytest.approx(expected, rel=1e-12)


def test_likelihood_peaks_at_the_truth_along_each_parameter(patient, measured):
    observation, truth = patient
    simulator = DensitySimulator(observation.initial_state(), observation.schedule, observation.days, NAMES,
                                 max_time_step_days=STEP_DAYS)
    likelihood = MapLogLikelihood(simulator, torch.from_numpy(np.array(observation.maps)))
    factors = (0.5, 0.8, 1.0, 1.25, 2.0)
    for column, name in enumerate(NAMES):
        rows = truth_row(truth).repeat(len(factors), 1)
        rows[:, column] *= torch.tensor(factors, dtype=torch.float64)
        values = likelihood(rows)
        best = int(torch.argmax(values))
        measured(f"log L(0.8, 1.25 x {name}) - log L(truth)", [round(float(values[i] - values[2]), 1) for i in (1, 3)])
        assert factors[best] in (0.8, 1.0, 1.25), name
        assert values[2] > values[0] and values[2] > values[-1], name


def test_prior_is_a_box_in_log_coordinates_that_sbi_accepts():
    prior = LogUniformPrior()
    assert prior.names == NAMES
    z = prior.sample_with(500, torch.Generator().manual_seed(0))
    assert torch.equal(z, prior.sample_with(500, torch.Generator().manual_seed(0)))
    theta = prior.to_physical(z)
    for column, name in enumerate(NAMES):
        low, high = DEFAULT_BOUNDS[name]
        assert low <= float(theta[:, column].min()) and float(theta[:, column].max()) <= high
    assert torch.isfinite(prior.log_prob(z)).all()
    outside = z[:2].clone()
    outside[0, 0] = math.log(DEFAULT_BOUNDS["r_n"][1] * 1.01)
    outside[1, 4] = math.log(DEFAULT_BOUNDS["sigma"][0] * 0.99)
    assert torch.isinf(prior.log_prob(outside)).all()
    process_prior(prior)  # sbi's own check of a prior


@pytest.mark.slow
def test_tmcmc_covers_the_truth_of_growth_and_drug_kill(patient, measured):
    observation, truth = patient
    bounds = {name: DEFAULT_BOUNDS[name] for name in ("r_n", "d_r", "sigma")}
    posterior = fit_virtual_patient(observation, "tmcmc", VirtualPatientFitSettings(
        n_samples=48, chain_steps=1, max_time_step_days=STEP_DAYS), bounds=bounds)
    summary = posterior.summary()
    measured("simulations", posterior.n_simulations)
    for name in bounds:
        measured(f"{name} 90 % interval (truth {truth[name]})",
                 (round(summary[name]["q05"], 4), round(summary[name]["q95"], 4)))
        assert summary[name]["unit"]
    for name in ("r_n", "d_r"):
        assert summary[name]["q05"] <= truth[name] <= summary[name]["q95"], name
    assert posterior.to_inference_data().posterior["d_r"].shape == (1, 48)


@pytest.mark.filterwarnings("ignore:Maximum number of epochs")
def test_npe_returns_a_posterior_in_physical_units(patient):
    observation, _ = patient
    bounds = {name: DEFAULT_BOUNDS[name] for name in ("r_n", "sigma")}
    settings = VirtualPatientFitSettings(npe=NPESettings(rounds=1, simulations=60, n_posterior=200, max_epochs=5),
                                         max_time_step_days=STEP_DAYS)
    posterior = fit_virtual_patient(observation, "npe", settings, bounds=bounds)
    assert posterior.parameter_names == ("r_n", "sigma") and posterior.n_simulations == 60
    for column, name in enumerate(posterior.parameter_names):
        low, high = bounds[name]
        assert low <= posterior.samples[:, column].min() and posterior.samples[:, column].max() <= high


def draws_around(values: dict[str, float], n: int = 6, spread: float = 0.1, seed: int = 0) -> Posterior:
    names = tuple(values)
    rng = np.random.default_rng(seed)
    samples = np.array([values[name] for name in names]) * np.exp(spread * rng.standard_normal((n, len(names))))
    return Posterior(parameter_names=names, samples=samples, log_weights=np.zeros(n), log_evidence=None,
                     n_simulations=0, wall_s=0.0, method="test")


def test_strong_chemotherapy_makes_response_likelier_than_no_treatment(patient):
    observation, _ = patient
    posterior = draws_around({"r_n": 0.2, "d_r": 1.5, "sigma": 0.05})
    schedules = {"none": protocol_schedule(10.0, 0.0, 0.0), "strong": protocol_schedule(10.0, 1.0, 3.0)}
    none, strong = predict_response(posterior, observation, schedules, n_draws=6, max_time_step_days=STEP_DAYS)
    for response in (none, strong):
        assert sum(response.class_probabilities.values()) == pytest.approx(1.0)
        assert sum(response.group_probabilities.values()) == pytest.approx(1.0)
        assert len(response.days) == 8 and response.days[0] == 10.0
        low, median, high = (np.array(response.tumour_area_mm2[i]) for i in (0, 2, 4))
        assert np.all(low <= median) and np.all(median <= high)
    responded = lambda r: r.class_probabilities["CR"] + r.class_probabilities["PR"]  # noqa: E731
    assert responded(strong) > responded(none)
    assert strong.group_probabilities["responsive"] == pytest.approx(responded(strong))
    assert strong.tumour_area_mm2[2][-1] < none.tumour_area_mm2[2][-1]
    record = json.loads(json.dumps(strong.to_dict()))
    assert record["label"] == "strong" and record["schedule"][0] == {"day": 10.0, "agent": "antiangiogenic",
                                                                     "amount": 1.0}
    assert set(record["tumour_area_mm2"]) == {"q05", "q25", "q50", "q75", "q95"}


def test_bad_input_raises_clear_errors(patient):
    observation, truth = patient
    with pytest.raises(ValueError, match="one map per day"):
        VirtualPatientObservation(days=(7.0, 14.0), maps=observation.maps, spacing_mm=SPACING_MM, seed=0,
                                  schedule=observation.schedule)
    with pytest.raises(ValueError, match="strictly increasing"):
        VirtualPatientObservation(days=(14.0, 7.0, 21.0), maps=observation.maps, spacing_mm=SPACING_MM, seed=0,
                                  schedule=observation.schedule)
    with pytest.raises(ValueError, match="positive noise"):
        make_virtual_patient({**truth, "sigma": -0.1}, **TINY)
    with pytest.raises(ValueError, match="0 < low < high"):
        LogUniformPrior({"r_n": (0.1, 0.4), "sigma": (-0.1, 0.3)})
    with pytest.raises(ValueError, match="sigma"):
        LogUniformPrior({"r_n": (0.1, 0.4)})
    with pytest.raises(ValueError, match="method"):
        fit_virtual_patient(observation, "mcmc")
    posterior = draws_around({"r_n": 0.2, "sigma": 0.05})
    with pytest.raises(ValueError, match="no doses"):
        predict_response(posterior, observation, {"none": Schedule()})
    with pytest.raises(ValueError, match="criteria"):
        predict_response(posterior, observation, {"a": protocol_schedule()}, criteria="who")
