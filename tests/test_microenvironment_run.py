"""Specification of a micro-environment run's pieces: the regional measures, the grow-then-record split, and
settings refused before any work (the command's files are tested in test_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest

from personalize.microenvironment_run import (
    check_run,
    default_start_day,
    grow_and_treat,
    regional_measures,
)
from simulators.microenvironment import (
    MicroenvironmentParameters,
    MicroenvironmentState,
    initial_state,
    simulate_microenvironment,
    time_step_days,
)
from simulators.treatment import Dose, Schedule


def test_regional_measures_average_over_the_tumour_its_core_and_its_rim():
    n = np.array([[0.9, 0.9, 0.6], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    m = np.full((3, 3), 2.0)
    m[0, 0] = 1.0
    P = np.where(n > 0.8, 0.5, 0.1)
    d = np.where(n == 0.3, 4.0, 1.0)
    measures = regional_measures(MicroenvironmentState(n, m, P, np.zeros((3, 3)), d, spacing_mm=0.5))
    assert measures["tumour_burden_mm2"] == pytest.approx(2.7 * 0.25)
    assert measures["tumour_cell_density"] == pytest.approx(0.8)  # mean of 0.9, 0.9, 0.6
    assert measures["core_vessel_density"] == pytest.approx(1.5)
    assert measures["core_pressure"] == pytest.approx(0.5)
    assert measures["core_drug"] == pytest.approx(1.0) and measures["rim_drug"] == pytest.approx(4.0)
    assert measures["max_drug"] == 4.0
    empty = regional_measures(MicroenvironmentState(*(np.zeros((3, 3)),) * 5))
    assert empty["tumour_cell_density"] is None and empty["core_pressure"] is None and empty["rim_drug"] is None


def test_growing_to_the_start_day_then_recording_is_one_uninterrupted_run():
    schedule = Schedule((Dose(0.5, "antiangiogenic", 1.0), Dose(0.75, "chemotherapy", 1.0)))
    split = grow_and_treat(schedule, grid=21, spacing_mm=0.2, seed=2, start_day=0.5, days=0.5,
                           output_every_days=0.25)
    whole = simulate_microenvironment(initial_state((21, 21), seed=2, spacing_mm=0.2), schedule, 1.0,
                                      output_every_days=0.25)
    np.testing.assert_allclose(split.times, whole.times[2:])
    for name in ("n", "m", "P", "A", "d"):
        np.testing.assert_allclose(getattr(split, name), getattr(whole, name)[2:], rtol=1e-9, atol=1e-12)
    assert default_start_day(schedule) == 0.5 and default_start_day(Schedule()) == 0.0


def test_the_time_step_stays_below_the_diffusion_limit_of_a_fine_grid():
    parameters = MicroenvironmentParameters()
    assert time_step_days(0.1, parameters) == pytest.approx(1 / 48)
    fine = time_step_days(0.01, parameters)
    assert fine < 0.01**2 / (4 * parameters.tumour_diffusion)


@pytest.mark.parametrize(
    "settings, problem",
    [({"grid": 2}, "grid must be an integer of at least 3"),
     ({"spacing_mm": 0.0}, "spacing must be a positive number"),
     ({"seed": -1}, "seed must be a non-negative integer"),
     ({"start_day": -1.0}, "start day must be finite and non-negative"),
     ({"days": 1.0, "output_every_days": 0.3}, "whole number of output intervals")],
)
def test_impossible_settings_are_refused_before_any_work(settings, problem):
    values = {"grid": 31, "spacing_mm": 0.2, "seed": 0, "start_day": 0.0, "days": 1.0, "output_every_days": 0.5}
    with pytest.raises(ValueError, match=problem):
        check_run(**(values | settings))
