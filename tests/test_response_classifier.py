"""Response cohorts (personalize.response_cohort) and the classifier (personalize.response_classifier): the
cohort generator, balancing, CNN training and the experiment, on tiny grids."""

from __future__ import annotations

import numpy as np
import pytest

from personalize.predictive.response import GROUPS, assess_response, rano_sum
from personalize.predictive.schedules import NOT_EVALUABLE
from personalize.response_classifier import (
    ClassifierArchitecture,
    ResponseClassifier,
    TrainingSettings,
    balancing_experiment,
    per_class_accuracy,
    train_classifier,
)
from personalize.response_cohort import GROUP_NAMES, CohortDesign, minority_cases, simulate_cohort

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(grid=15, spacing_mm=0.5, max_time_step_days=1 / 12, chunk_size=8)
"""15 x 15 cells of 0.5 mm, step 1/12 day: about 0.3 s per case."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny cohort of cases 0-15, simulated once for the module."""
    path = tmp_path_factory.mktemp("cohort")
    cohort, simulated = simulate_cohort(CohortDesign(**TINY), path, range(16), progress=False)
    assert simulated == 16
    return path, cohort


def test_cohort_is_deterministic_and_resumable(folder, tmp_path, measured):
    path, cohort = folder
    again, simulated = simulate_cohort(CohortDesign(**TINY), path, range(16), progress=False)
    assert simulated == 0
    for name in ("index", "vessel_seed", "theta", "inputs", "masks", "response", "group"):
        np.testing.assert_array_equal(getattr(again, name), getattr(cohort, name))
    # a case is the same whichever chunk simulates it
    other, simulated = simulate_cohort(CohortDesign(**(TINY | {"chunk_size": 3})), tmp_path, range(12, 16),
                                       progress=False)
    assert simulated == 4
    np.testing.assert_array_equal(other.inputs, cohort.inputs[12:])
    np.testing.assert_array_equal(other.group, cohort.group[12:])
    assert cohort.inputs.shape == (16, 2, 15, 15) and cohort.masks.shape == (16, 8, 15, 15)
    measured("tiny cohort classes", cohort.counts())


def test_labels_agree_with_assess_response_on_stored_masks(folder):
    _, cohort = folder
    design = CohortDesign(**TINY)
    spacing = (design.spacing_mm, design.spacing_mm)
    for masks, response, group in zip(cohort.masks, cohort.response, cohort.group):
        if rano_sum(masks[0], spacing, measurable_mm=design.measurable) == 0:
            assert response == group == NOT_EVALUABLE
            continue
        final = assess_response(list(masks), spacing, criteria="rano", measurable_mm=design.measurable).final
        assert response == final and group == GROUPS[final]
    assert set(cohort.group) <= {*GROUP_NAMES, NOT_EVALUABLE}
    # the input's tumour channel is the baseline mask's density
    np.testing.assert_array_equal(cohort.inputs[:, 1] > 0.5, cohort.masks[:, 0])


def test_folder_of_other_settings_is_refused(folder):
    path, _ = folder
    with pytest.raises(ValueError, match="other settings"):
        simulate_cohort(CohortDesign(**(TINY | {"criteria": "recist"})), path, range(4), progress=False)


def test_balancing_adds_only_wanted_classes_up_to_the_counts(folder):
    path, _ = folder
    design = CohortDesign(**TINY)
    wanted = {"stable": 2, "responsive": 1}
    kept, spent = minority_cases(design, path, wanted, first_index=16, max_cases=64, progress=False)
    assert {name: int(np.sum(kept.group == name)) for name in wanted} == wanted
    assert set(kept.group) <= set(wanted) and kept.index.min() >= 16
    # the first cases of each class among the draws spent, nothing simulated twice
    drawn, simulated = simulate_cohort(design, path, range(16, 16 + spent), progress=False)
    assert simulated == 0
    for name, count in wanted.items():
        np.testing.assert_array_equal(kept.index[kept.group == name], drawn.index[drawn.group == name][:count])


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable maps: the class sets the radius of the tumour disc (2, 4 or 6 cells), vessels are noise;
    classes 60 / 25 / 15 %."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.6, 0.25, 0.15])
    x, y = np.mgrid[-7:8, -7:8]
    inputs = np.empty((n, 2, 15, 15), dtype=np.float32)
    inputs[:, 0] = rng.random((n, 15, 15))
    for i, label in enumerate(labels):
        inputs[i, 1] = (np.hypot(x, y) <= 2 + 2 * label + rng.uniform(-0.5, 0.5)) + 0.05 * rng.random((15, 15))
    return inputs, labels


def test_training_lowers_the_loss_and_beats_the_majority_baseline(tmp_path, measured):
    inputs, labels = _toy(96, 0)
    test_inputs, test_labels = _toy(64, 1)
    settings = TrainingSettings(architecture=ClassifierArchitecture(width=4, blocks=2), epochs=30, patience=30,
                                learning_rate=3e-3)
    classifier, history = train_classifier(inputs[:72], labels[:72], validation=(inputs[72:], labels[72:]),
                                           settings=settings, checkpoint=tmp_path / "c.pt", progress=False)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    accuracy = per_class_accuracy(classifier.predict(test_inputs), test_labels)
    baseline = np.bincount(test_labels).max() / len(test_labels)
    measured("toy accuracy vs majority baseline", (round(accuracy["overall"], 3), round(baseline, 3)))
    assert accuracy["overall"] > baseline + 0.2  # measured: 1.0 against 0.58
    loaded = ResponseClassifier.load(tmp_path / "c.pt")
    np.testing.assert_allclose(loaded.probabilities(test_inputs), classifier.probabilities(test_inputs), atol=1e-6)


def test_experiment_reports_both_runs_on_one_test_set(folder):
    path, cohort = folder
    settings = TrainingSettings(architecture=ClassifierArchitecture(width=4, blocks=2), epochs=3, patience=3)
    result = balancing_experiment(CohortDesign(**TINY), path, 16, settings=settings, max_extra_cases=16,
                                  progress=False)
    record = result.to_dict()
    assert set(record["imbalanced"]["accuracy"]) == {*GROUP_NAMES, "overall"}
    assert sum(result.test_counts.values()) == 4
    assert sum(result.natural_counts.values()) + result.not_evaluable == 16
    largest = max(result.imbalanced.train_counts.values())
    for name in GROUP_NAMES:
        added = result.balanced.train_counts[name] - result.imbalanced.train_counts[name]
        assert (added > 0) <= (name in result.minority) and result.balanced.train_counts[name] <= largest
    assert (path / "classifier_balanced.pt").exists()


def test_bad_inputs_raise_clear_errors(folder, tmp_path):
    path, _ = folder
    with pytest.raises(ValueError, match="bounds must name"):
        CohortDesign(bounds={"r_n": (0.1, 0.4)})
    with pytest.raises(ValueError, match="criteria"):
        CohortDesign(criteria="who")
    with pytest.raises(ValueError, match="whole number"):
        CohortDesign(horizon_days=7.5)
    with pytest.raises(ValueError, match="theta may hold only"):
        CohortDesign(**TINY).simulate(0, {"sigma": 0.1})
    with pytest.raises(ValueError, match="non-empty range"):
        simulate_cohort(CohortDesign(**TINY), tmp_path, range(0), progress=False)
    with pytest.raises(ValueError, match="wanted"):
        minority_cases(CohortDesign(**TINY), path, {"partial": 1}, first_index=16, max_cases=8)
    with pytest.raises(ValueError, match="inputs must be"):
        train_classifier(np.zeros((4, 3, 15, 15)), np.zeros(4, dtype=int), progress=False)
    with pytest.raises(ValueError, match="labels must be"):
        train_classifier(np.zeros((4, 2, 15, 15)), np.array([0, 1, 2, 3]), progress=False)
    with pytest.raises(ValueError, match="training grid"):
        train_classifier(np.zeros((4, 2, 15, 15)), np.zeros(4, dtype=int),
                         validation=(np.zeros((2, 2, 9, 9)), np.zeros(2, dtype=int)), progress=False)
    with pytest.raises(ValueError, match="too few"):
        balancing_experiment(CohortDesign(**TINY), path, 4, progress=False)
