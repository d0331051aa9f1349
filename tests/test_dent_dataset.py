"""Specification of DENT's dataset (Koyuncu et al. 2022): resumable case files, the shared untreated growth,
Diffuser pairs one hour across each injection, Elapser pairs from one treatment day to the next, and a
patient-wise split."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from personalize.microenvironment_run import grow_and_treat
from simulators.microenvironment import FIELDS, agent_balance, grow, initial_state
from simulators.surrogates.dent_dataset import (
    DIFFUSER_SPAN_DAYS,
    Case,
    DatasetDesign,
    extract_pairs,
    generate_cases,
    load_case,
    split_by_patient,
)
from simulators.treatment import Schedule

# 2 patients × 1 start day × 2 chemotherapy levels on a 6 mm square; three days of treatment with an
# anti-angiogenic dose on days t0 and t0 + 2 and chemotherapy on t0 + 2 (DENT's pattern, shortened).
DESIGN = DatasetDesign(patients=(1, 2), start_days=(2.0,), antiangiogenic_levels=(1.0,),
                       chemotherapy_levels=(0.5, 2.0), antiangiogenic_days=(0.0, 2.0), chemotherapy_days=(2.0,),
                       grid=31, spacing_mm=0.2, horizon_days=3.0, output_every_days=1.0)
N, A, D = (FIELDS.index(name) for name in ("n", "A", "d"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dent")
    return folder, generate_cases(DESIGN, folder, progress=False)


@pytest.fixture(scope="module")
def pairs(dataset):
    return extract_pairs(dataset[1].files)


def test_generation_is_resumable_and_a_lost_case_comes_back_identical(dataset):
    folder, first = dataset
    assert len(first.files) == 4 and first.written == first.files
    again = generate_cases(DESIGN, folder, progress=False)
    assert again.files == first.files and again.written == ()
    lost = first.files[-1]
    kept = load_case(lost)
    lost.unlink()
    redone = generate_cases(DESIGN, folder, progress=False)
    assert redone.written == (lost,)
    back = load_case(lost)
    np.testing.assert_array_equal(back.fields, kept.fields)
    np.testing.assert_array_equal(back.before_injection, kept.before_injection)
    assert not list(folder.glob(".*.tmp"))
    with pytest.raises(ValueError, match="grid differ"):
        generate_cases(dataclasses.replace(DESIGN, grid=21), folder, progress=False)


def test_a_folder_of_cases_of_unknown_settings_is_refused(tmp_path):
    (tmp_path / "patient001_start2_aa1_chemo1.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="no design.json"):
        generate_cases(DESIGN, tmp_path, progress=False)


def test_case_file_names_are_distinct_for_distinct_levels():
    names = {Case(1, 14.0, level, 1.0).file_name for level in (1.0, 1.0000001, 0.5)}
    assert len(names) == 3 and "patient001_start14_aa1_chemo1.npz" in names


def test_a_case_is_one_uninterrupted_run_from_day_zero(dataset):
    path = dataset[1].files[1]  # patient 1, chemotherapy 2.0
    case = load_case(path)
    schedule = DESIGN.schedule(DESIGN.cases()[1])
    whole = grow_and_treat(schedule, grid=31, spacing_mm=0.2, seed=1, start_day=2.0, days=3.0,
                           output_every_days=DIFFUSER_SPAN_DAYS)
    np.testing.assert_allclose(case.times, [2.0, 2.0 + 1 / 24, 3.0, 4.0, 4.0 + 1 / 24, 5.0])
    for index, day in enumerate(case.times):
        truth = np.stack([getattr(whole, name)[np.argmin(np.abs(whole.times - day))] for name in FIELDS])
        np.testing.assert_allclose(case.fields[index], truth, rtol=1e-5, atol=1e-6)
    # just before the day-4 injection: n, m, P as in the run, A from the day-2 dose only, no drug yet
    before = case.before_injection[1]
    at_four = np.argmin(np.abs(whole.times - 4.0))
    for channel, name in enumerate(FIELDS[:3]):
        np.testing.assert_allclose(before[channel], getattr(whole, name)[at_four], rtol=1e-5, atol=1e-6)
    plasma = Schedule(schedule.doses[:1]).plasma_concentration("antiangiogenic", 4.0, 1.0)
    agent = agent_balance(whole.n[at_four], whole.m[at_four], plasma, 0.2, DESIGN.parameters).solve()
    np.testing.assert_allclose(before[A], agent.reshape(31, 31), rtol=1e-5, atol=1e-6)
    assert np.all(before[D] == 0) and np.all(case.before_injection[0][[A, D]] == 0)


def test_patients_grow_once_through_their_start_days(tmp_path):
    design = dataclasses.replace(DESIGN, patients=(3,), start_days=(1.0, 2.0), chemotherapy_levels=(1.0,),
                                 antiangiogenic_days=(0.0,), chemotherapy_days=(), horizon_days=1.0)
    files = generate_cases(design, tmp_path, progress=False).files
    direct = grow(initial_state((31, 31), seed=3, spacing_mm=0.2), Schedule(), 2.0)
    untreated = load_case(files[1]).before_injection[0]
    np.testing.assert_allclose(untreated[N], direct.n, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(untreated[FIELDS.index("m")], direct.m, rtol=1e-6, atol=1e-7)


def test_diffuser_pairs_span_the_hour_after_each_injection(dataset, pairs):
    diffuser, _ = pairs
    assert len(diffuser) == 4 * 2
    np.testing.assert_allclose(diffuser.day, [2.0, 4.0] * 4)
    np.testing.assert_array_equal(diffuser.patient, [1, 1, 1, 1, 2, 2, 2, 2])
    np.testing.assert_allclose(diffuser.doses, [[1.0, 0.0], [1.0, 0.5], [1.0, 0.0], [1.0, 2.0]] * 2)
    case = load_case(dataset[1].files[0])
    np.testing.assert_array_equal(diffuser.after[1], case.state_at(4.0 + DIFFUSER_SPAN_DAYS))
    np.testing.assert_array_equal(diffuser.before[1], case.before_injection[1])
    for before, after, doses in zip(diffuser.before, diffuser.after, diffuser.doses):
        assert np.abs(after[N] - before[N]).max() < 0.01  # an hour of growth
        assert after[A].mean() > before[A].mean() + 0.1  # every injection holds the agent
        if doses[1] > 0:
            assert after[D].mean() > before[D].mean() + 0.01
        else:
            assert np.all(after[D] == 0) and np.all(before[D] == 0)


def test_elapser_pairs_run_from_one_treatment_day_to_the_next(dataset, pairs):
    _, elapser = pairs
    assert len(elapser) == 3 * 4 and np.all(elapser.doses == 0)
    np.testing.assert_allclose(elapser.day[:3], [2.0, 3.0, 4.0])
    case = load_case(dataset[1].files[0])
    daily = case.daily_states()
    # an injection day starts where the rollout stands after the Diffuser: n, m, P before the injection,
    # A and d one hour after it
    after_hour = case.state_at(2.0 + DIFFUSER_SPAN_DAYS)
    n_m_p, a_d = [FIELDS.index(name) for name in ("n", "m", "P")], [FIELDS.index(name) for name in ("A", "d")]
    np.testing.assert_array_equal(elapser.before[0][n_m_p], case.before_injection[0][n_m_p])
    np.testing.assert_array_equal(elapser.before[0][a_d], after_hour[a_d])
    assert np.abs(after_hour[a_d] - case.before_injection[0][a_d]).max() > 0.1
    np.testing.assert_array_equal(elapser.after[0], daily[1])
    np.testing.assert_array_equal(elapser.before[1], daily[1])
    np.testing.assert_array_equal(elapser.after[1], case.before_injection[1])  # day 4, before its injection
    np.testing.assert_array_equal(elapser.after[2], case.state_at(5.0))


def test_the_split_keeps_each_patient_on_one_side(pairs):
    diffuser, elapser = pairs
    for kind in (diffuser, elapser):
        train, test = split_by_patient(kind, [2])
        assert set(train.patient) == {1} and set(test.patient) == {2}
        assert len(train) + len(test) == len(kind)
    with pytest.raises(ValueError, match="have no pairs"):
        split_by_patient(diffuser, [7])
    with pytest.raises(ValueError, match="nothing is left to train on"):
        split_by_patient(diffuser, [1, 2])


@pytest.mark.parametrize(
    "settings, problem",
    [({"output_every_days": 0.3}, "output_every_days must divide one day"),
     ({"chemotherapy_days": (3.0,)}, "whole days from 0 to horizon_days - 1"),
     ({"patients": (1, 1)}, "must not repeat"),
     ({"antiangiogenic_days": (), "chemotherapy_days": ()}, "at least one dose day")],
)
def test_impossible_designs_are_refused(settings, problem):
    with pytest.raises(ValueError, match=problem):
        dataclasses.replace(DESIGN, **settings)
