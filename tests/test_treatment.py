"""Specification of treatment schedules: validated doses, TOML files, and exponentially decaying plasma levels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulators.treatment import Dose, Schedule


def test_a_schedule_sorts_its_doses_by_day_keeping_the_order_of_equal_days():
    late, first, second = Dose(6.0, "chemotherapy", 1.0), Dose(2.0, "antiangiogenic", 0.5), Dose(2.0, "chemotherapy", 2)
    schedule = Schedule((late, first, second))
    assert schedule.doses == (first, second, late)
    assert isinstance(second.amount, float) and Schedule().doses == ()


@pytest.mark.parametrize(
    "day, agent, amount, problem",
    [(-1.0, "chemotherapy", 1.0, "day must be finite and non-negative"),
     (1.0, "chemotherapy", -0.5, "amount must be finite and non-negative"),
     (math.nan, "chemotherapy", 1.0, "day must be finite"),
     (1.0, "chemotherapy", math.inf, "amount must be finite"),
     (1.0, "radiotherapy", 1.0, "unknown agent 'radiotherapy'"),
     (True, "chemotherapy", 1.0, "day must be a number")],
)
def test_impossible_doses_are_refused_with_the_reason(day, agent, amount, problem):
    with pytest.raises(ValueError, match=problem):
        Dose(day, agent, amount)


def test_plasma_concentration_jumps_by_the_amount_and_falls_by_e_in_one_time_constant():
    schedule = Schedule((Dose(2.0, "chemotherapy", 3.0),))
    tau = 1.5
    before, at, later = (schedule.plasma_concentration("chemotherapy", t, tau) for t in (1.999, 2.0, 2.0 + tau))
    assert before == 0.0 and at == 3.0
    assert later == pytest.approx(3.0 / math.e, rel=1e-12)  # an e-folding time, not a half-life (that gives 1.5)


def test_a_dose_acts_at_a_time_a_loop_rounds_to_one_ulp_below_its_day():
    schedule = Schedule((Dose(14.9, "antiangiogenic", 1.0),))
    rounded = float(np.nextafter(14.9, 0.0))  # 14.899999999999999, as a time loop can compute the dose day
    assert schedule.plasma_concentration("antiangiogenic", rounded, 1.0) == pytest.approx(1.0)
    assert schedule.plasma_concentration("antiangiogenic", 14.9 - 1e-6, 1.0) == 0.0


def test_plasma_concentrations_add_over_doses_and_keep_agents_apart():
    schedule = Schedule((Dose(0.0, "antiangiogenic", 1.0), Dose(1.0, "antiangiogenic", 2.0),
                         Dose(0.5, "chemotherapy", 4.0)))
    times = np.array([0.5, 1.0, 3.0])
    agent = schedule.plasma_concentration("antiangiogenic", times, 1.0)
    expected = np.exp(-times) + np.where(times >= 1.0, 2.0 * np.exp(-(times - 1.0)), 0.0)
    np.testing.assert_allclose(agent, expected, rtol=1e-12)
    assert schedule.plasma_concentration("chemotherapy", 0.5, 2.0) == 4.0
    assert Schedule().plasma_concentration("chemotherapy", 10.0, 1.0) == 0.0


@pytest.mark.parametrize("agent, tau, problem", [("surgery", 1.0, "unknown agent"), ("chemotherapy", 0.0, "positive")])
def test_plasma_concentration_refuses_an_unknown_agent_or_a_non_positive_time_constant(agent, tau, problem):
    with pytest.raises(ValueError, match=problem):
        Schedule().plasma_concentration(agent, 1.0, tau)


def test_a_schedule_reads_from_toml(tmp_path):
    path = tmp_path / "schedule.toml"
    path.write_text('[[dose]]\nday = 16\nagent = "chemotherapy"\namount = 0.5\n\n'
                    '[[dose]]\nday = 14.0\nagent = "antiangiogenic"\namount = 1.0\n')
    schedule = Schedule.from_toml(path)
    assert schedule.doses == (Dose(14.0, "antiangiogenic", 1.0), Dose(16.0, "chemotherapy", 0.5))


@pytest.mark.parametrize(
    "text, problem",
    [('[[dose]]\nday = 1\nagent = "chemotherapy"\n', "dose 1: missing amount"),
     ('[[dose]]\nday = 1\nagent = "chemotherapy"\namount = 1\nunit = "mg"\n', "dose 1: unknown unit"),
     ('[[dose]]\nday = 1\nagent = "chemotherapy"\namount = 1\n[[dose]]\nday = 2\nagent = "chemotherapy"\n'
      'amount = -1\n', "dose 2: dose amount must be finite and non-negative"),
     ('[[dose]]\nday = "monday"\nagent = "chemotherapy"\namount = 1\n', "dose 1: dose day must be a number"),
     ("[schedule]\nday = 1\n", "no \\[\\[dose\\]\\] tables"),
     ("day = = 1\n", "not valid TOML")],
)
def test_a_bad_schedule_file_is_refused_naming_the_file_and_the_dose(tmp_path, text, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"bad.toml: .*{problem}"):
        Schedule.from_toml(path)
