"""Specification of the DENT surrogate (Koyuncu et al., Sci Rep 12:2187, 2022) on pairs drawn from the real
micro-environment model: a 24 × 24 grid of 0.25 mm, three virtual patients (two to train, one to validate) under
one schedule, and CNNs a few filters wide."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simulators.microenvironment import (
    FIELDS,
    MicroenvironmentParameters,
    initial_state,
    simulate_microenvironment,
)
from simulators.surrogates.dent import (
    NETWORKS,
    DentArchitecture,
    DentSurrogate,
    MinMaxScaling,
    daily_doses,
    train_dent,
)
from simulators.surrogates.pairs import AGENTS, DentPairs
from simulators.treatment import Dose, Schedule

SHAPE, SPACING_MM = (24, 24), 0.25
PARAMETERS = MicroenvironmentParameters(tumour_width_mm=0.75)  # a tumour a few cells wide from day 0
OUTPUT_DAYS = 1.0 / 24.0  # hourly outputs and steps: the model's 30-minute step is not needed on this coarse grid
DOSES = (Dose(1.0, "antiangiogenic", 1.0), Dose(3.0, "antiangiogenic", 0.5), Dose(3.0, "chemotherapy", 1.0),
         Dose(5.0, "chemotherapy", 2.0))
TINY = DentArchitecture(width=8, depth=3)
TRAINING = dict(batch_size=4, learning_rate=1e-3, device="cpu", progress=False, architecture=TINY)
"""Small data, few epochs: a learning rate ten times the paper's."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def simulated_pairs(seeds: tuple[int, ...]) -> tuple[DentPairs, DentPairs]:
    """Diffuser pairs from one hour before each injection day of DOSES to one hour after it, and Elapser pairs one
    day apart, every 6 hours, over days with no injection in (t, t + 1] — from six simulated days per patient."""
    diffuser, elapser = [], []
    for seed in seeds:
        start = initial_state(SHAPE, seed, PARAMETERS, SPACING_MM)
        run = simulate_microenvironment(start, Schedule(DOSES), 6.0, PARAMETERS, OUTPUT_DAYS,
                                       max_time_step_days=OUTPUT_DAYS)
        states = np.stack([getattr(run, name) for name in FIELDS], axis=1).astype(np.float32)
        index = {round(t / OUTPUT_DAYS): i for i, t in enumerate(run.times)}
        for day in sorted({dose.day for dose in DOSES}):
            amounts = [sum(dose.amount for dose in DOSES if (dose.day, dose.agent) == (day, agent)) for agent in AGENTS]
            at = index[round(day / OUTPUT_DAYS)]
            diffuser.append((states[at - 1], states[at + 1], amounts, seed, day - OUTPUT_DAYS))
        for at in range(0, len(run.times), 6):
            t = run.times[at]
            if t + 1 <= run.times[-1] + 1e-9 and not any(t < dose.day <= t + 1 + 1e-9 for dose in DOSES):
                elapser.append((states[at], states[index[round((t + 1) / OUTPUT_DAYS)]], [0.0, 0.0], seed, t))

    def stacked(rows: list) -> DentPairs:
        before, after, doses, patient, day = zip(*rows)
        return DentPairs(np.stack(before), np.stack(after), np.array(doses, dtype=np.float32), np.array(patient),
                         np.array(day))

    return stacked(diffuser), stacked(elapser)


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[DentPairs, DentPairs]]:
    return {"train": simulated_pairs((1, 2)), "validation": simulated_pairs((3,))}


@pytest.fixture(scope="module")
def trained(pairs):
    return train_dent(*pairs["train"], epochs=20, seed=0, validation=pairs["validation"], **TRAINING)


def test_the_scaling_maps_the_training_pairs_onto_the_unit_interval_and_back(pairs):
    diffuser, elapser = pairs["train"]
    arrays = [diffuser.before, diffuser.after, elapser.before, elapser.after]
    scaling = MinMaxScaling.fit(*arrays)
    scaled = [scaling.transform(torch.from_numpy(array).double()) for array in arrays]
    low = torch.stack([values.amin(dim=(0, 2, 3)) for values in scaled]).amin(dim=0)
    high = torch.stack([values.amax(dim=(0, 2, 3)) for values in scaled]).amax(dim=0)
    assert torch.equal(low, torch.zeros(len(FIELDS), dtype=torch.float64))
    assert torch.equal(high, torch.ones(len(FIELDS), dtype=torch.float64))
    for array, values in zip(arrays, scaled):
        np.testing.assert_allclose(scaling.inverse(values).numpy(), array, rtol=1e-12, atol=1e-12)
    constant = MinMaxScaling.fit(np.full((3, 1), 2.5))  # a single dose level: maps to 0 and back
    assert constant.transform(torch.tensor([[2.5]])).item() == 0.0
    assert constant.inverse(torch.tensor([[0.0]])).item() == 2.5


def test_training_lowers_every_networks_loss_and_keeps_its_best_validation_weights(pairs, trained, measured):
    surrogate, history = trained
    assert history.networks == NETWORKS and history.train.shape == history.validation.shape == (20, len(NETWORKS))
    ratio = history.train[-1] / history.train[0]
    for name, first, last, best in zip(NETWORKS, history.train[0], history.train[-1], history.validation.min(axis=0)):
        measured(f"{name}: training MSE first -> last epoch, best validation", f"{first:.4f} -> {last:.4f}, {best:.4f}")
    measured("training wall time (s)", f"{history.wall_s:.1f}")
    assert np.all(ratio < 0.5)
    np.testing.assert_array_equal(history.best_epoch, history.validation.argmin(axis=0))
    kept = surrogate.losses(*pairs["validation"], batch_size=TRAINING["batch_size"])
    np.testing.assert_allclose(kept, history.validation.min(axis=0), rtol=1e-5)


def test_training_is_reproducible_for_a_seed(pairs):
    first, _ = train_dent(*pairs["train"], epochs=2, seed=5, **TRAINING)
    again, _ = train_dent(*pairs["train"], epochs=2, seed=5, **TRAINING)
    other, _ = train_dent(*pairs["train"], epochs=2, seed=6, **TRAINING)
    for part in ("diffuser", "elapser"):
        weights, repeated, different = (getattr(model, part).state_dict() for model in (first, again, other))
        assert all(torch.equal(weights[key], repeated[key]) for key in weights)
        assert not all(torch.equal(weights[key], different[key]) for key in weights)


def test_save_and_load_give_identical_forecasts(trained, pairs, tmp_path):
    surrogate, _ = trained
    path = tmp_path / "dent.pt"
    surrogate.save(path)
    loaded = DentSurrogate.load(path, device="cpu")
    assert loaded.architecture == surrogate.architecture and loaded.grid_shape == SHAPE
    assert loaded.state_scaling == surrogate.state_scaling and loaded.dose_scaling == surrogate.dose_scaling
    state = pairs["validation"][0].before[0]
    np.testing.assert_array_equal(loaded.rollout(state, Schedule(DOSES), 1.0, 5),
                                  surrogate.rollout(state, Schedule(DOSES), 1.0, 5))


def test_a_rollout_starts_at_its_input_and_stays_in_the_physical_ranges(trained, pairs):
    surrogate, _ = trained
    state = pairs["validation"][0].before[0]  # patient 3 an hour before its first dose
    forecast = surrogate.rollout(state, Schedule(DOSES), 1.0, 5)
    assert forecast.shape == (6, len(FIELDS), *SHAPE) and forecast.dtype == np.float32
    np.testing.assert_array_equal(forecast[0], state)
    assert np.all(np.isfinite(forecast)) and forecast.min() >= 0 and forecast[:, FIELDS.index("n")].max() <= 1
    batched = surrogate.rollout(np.stack([state, state]), [Schedule(), Schedule(DOSES)], 1.0, 5)
    np.testing.assert_allclose(batched[0], surrogate.rollout(state, Schedule(), 1.0, 5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched[1], forecast, rtol=1e-5, atol=1e-6)


def test_the_diffuser_runs_only_on_days_with_injections_and_changes_only_the_drug_maps(trained, pairs):
    surrogate, _ = trained
    state = pairs["validation"][0].before[0]
    untreated = surrogate.rollout(state, Schedule(), 1.0, 5)
    outside = Schedule((Dose(0.5, "chemotherapy", 1.0), Dose(6.0, "antiangiogenic", 1.0)))  # before and after
    np.testing.assert_array_equal(surrogate.rollout(state, outside, 1.0, 5), untreated)
    dosed = surrogate.rollout(state, Schedule((Dose(3.0, "chemotherapy", 2.0),)), 1.0, 5)
    np.testing.assert_array_equal(dosed[:3], untreated[:3])  # days 1, 2, 3: the dose is given at day 3
    assert not np.array_equal(dosed[3, FIELDS.index("d")], untreated[3, FIELDS.index("d")])
    states = torch.from_numpy(pairs["validation"][0].before)
    injected = surrogate.inject(states, torch.from_numpy(pairs["validation"][0].doses))
    kept = [FIELDS.index(name) for name in ("n", "m", "P")]
    assert torch.equal(injected[:, kept], states[:, kept]) and injected.min() >= 0


def test_doses_fall_on_the_day_that_starts_at_or_before_them():
    schedule = Schedule((Dose(13.9, "chemotherapy", 5.0), Dose(14.0, "antiangiogenic", 1.0),
                         Dose(16.0, "antiangiogenic", 1.0), Dose(16.0, "chemotherapy", 0.5),
                         Dose(16.5, "chemotherapy", 0.25), Dose(20.99, "chemotherapy", 2.0),
                         Dose(21.0, "antiangiogenic", 3.0)))
    expected = np.zeros((7, len(AGENTS)))
    expected[0] = [1.0, 0.0]
    expected[2] = [1.0, 0.75]
    expected[6] = [0.0, 2.0]
    np.testing.assert_array_equal(daily_doses(schedule, 14.0, 7), expected)


def test_simulate_returns_the_daily_trajectory_of_the_rollout(trained):
    surrogate, _ = trained
    start = initial_state(SHAPE, 4, PARAMETERS, SPACING_MM)
    trajectory = surrogate.simulate(start, Schedule(DOSES), 3, start_day=1.0)
    np.testing.assert_array_equal(trajectory.times, [1.0, 2.0, 3.0, 4.0])
    assert trajectory.spacing_mm == SPACING_MM
    forecast = surrogate.rollout(start, Schedule(DOSES), 1.0, 3)
    for index, name in enumerate(FIELDS):
        np.testing.assert_array_equal(getattr(trajectory, name), forecast[:, index])
    assert trajectory.state(-1).shape == SHAPE


def test_wrong_kinds_of_pairs_and_shapes_are_refused(trained, pairs, tmp_path):
    surrogate, _ = trained
    diffuser, elapser = pairs["train"]
    with pytest.raises(ValueError, match="swapped"):
        train_dent(elapser, diffuser, epochs=1, seed=0, **TRAINING)
    cropped = DentPairs(elapser.before[..., :20, :20], elapser.after[..., :20, :20], elapser.doses, elapser.patient,
                        elapser.day)
    with pytest.raises(ValueError, match="one grid"):
        train_dent(diffuser, cropped, epochs=1, seed=0, **TRAINING)
    with pytest.raises(ValueError, match="one grid"):
        train_dent(diffuser, elapser, epochs=1, seed=0, validation=(diffuser, cropped), **TRAINING)
    state = diffuser.before[0]
    for wrong in (state[:, :20, :20], state[:4]):
        with pytest.raises(ValueError, match="training grid"):
            surrogate.rollout(wrong, Schedule(), 0.0, 1)
    with pytest.raises(ValueError, match="one per state"):
        surrogate.rollout(np.stack([state, state]), [Schedule()], 0.0, 1)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a DENT surrogate"):
        DentSurrogate.load(tmp_path / "other.pt", device="cpu")


def test_training_stops_once_the_summed_validation_error_stalls_for_patience_epochs(pairs):
    _, history = train_dent(*pairs["train"], epochs=30, seed=0, validation=pairs["validation"], patience=2,
                            **{**TRAINING, "learning_rate": 1e-2})  # a step large enough for a noisy validation error
    epochs = len(history.train)
    assert epochs < 30 and history.validation.sum(axis=1).argmin() == epochs - 1 - 2
