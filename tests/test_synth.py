"""Specification of synthetic patients: scans follow the imaging model, and the written case reads back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import phantom
from likelihoods.masks import detection_probability, mask_log_likelihood
from personalize.io import load_observation
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
from simulators.anatomy import Anatomy

TRUTH = BUILT_IN_CASE | {"x": -20.0, "y": 0.0, "z": 4.0, "D_w": 0.3, "rho": 0.05, "T": 200.0}


@pytest.fixture(scope="module")
def patient():
    return synthesize(TRUTH, phantom(32, 4.0), seed=1)


def test_masks_are_the_density_thresholded_at_the_true_thresholds(patient):
    np.testing.assert_array_equal(patient.t1gd, patient.density > TRUTH["u_t1gd"])
    np.testing.assert_array_equal(patient.flair, patient.density > TRUTH["u_flair"])
    assert patient.t1gd.sum() > 0 and np.all(patient.flair >= patient.t1gd)


def test_detection_masks_show_each_voxel_with_the_probability_of_eq_6():
    truth = TRUTH | {"sigma_alpha": 0.05}
    patient = synthesize(truth, phantom(32, 4.0), seed=5, masks="detection")
    density = torch.from_numpy(patient.density)[None]
    for mask, u_c in ((patient.flair, truth["u_flair"]), (patient.t1gd, truth["u_t1gd"])):
        alpha = detection_probability(density, u_c, truth["sigma_alpha"], clamp=0.0)[0].numpy()
        uncertain = (alpha > 0.05) & (alpha < 0.95)
        assert uncertain.sum() > 200
        expected, spread = alpha[uncertain].sum(), np.sqrt((alpha * (1 - alpha))[uncertain].sum())
        assert abs(mask[uncertain].sum() - expected) < 4 * spread
        assert np.all(mask[alpha < 1e-9] == 0) and np.all(mask[alpha > 1 - 1e-9] == 1)


def _threshold_estimate(density: np.ndarray, mask: np.ndarray, sigma_alpha: float) -> float:
    """The u_c maximising the mask likelihood (Eq. 6) of ``mask`` on ``density``, on a 0.001 grid."""
    grid = np.linspace(0.15, 0.35, 201)
    values = torch.from_numpy(density)[None]
    loglik = [float(mask_log_likelihood(values, torch.from_numpy(mask), u_c, sigma_alpha)[0]) for u_c in grid]
    return float(grid[int(np.argmax(loglik))])


def test_the_mask_likelihood_finds_the_threshold_on_masks_drawn_from_it_but_not_on_thresholded_ones():
    """Eq. 6 is the imaging model behind ``masks="detection"``: its maximum sits at the true u_flair. A mask
    cut exactly at u_flair is not drawn from it; the more populous shell below u_flair pulls the maximum up."""
    truth = TRUTH | {"sigma_alpha": 0.05}
    anatomy = phantom(32, 4.0)
    drawn = [synthesize(truth, anatomy, seed=seed, masks="detection") for seed in range(3)]
    estimates = [_threshold_estimate(p.density, p.flair, truth["sigma_alpha"]) for p in drawn]
    assert abs(np.mean(estimates) - truth["u_flair"]) < 0.005
    cut = synthesize(truth, anatomy, seed=0)
    assert _threshold_estimate(cut.density, cut.flair, truth["sigma_alpha"]) > truth["u_flair"] + 0.01


def test_pet_is_scaled_density_plus_noise_of_the_stated_width(patient):
    clear = (patient.anatomy.tissue > 0) & (patient.density * TRUTH["pet_scale"] > 5 * TRUTH["pet_sigma"])
    residual = patient.pet[clear] - TRUTH["pet_scale"] * patient.density[clear]
    assert clear.sum() > 500
    assert abs(residual.mean()) < 4 * TRUTH["pet_sigma"] / np.sqrt(clear.sum())
    assert residual.std() == pytest.approx(TRUTH["pet_sigma"], rel=0.1)
    assert patient.pet.min() >= 0 and patient.pet[patient.anatomy.tissue == 0].max() == 0


def test_the_same_seed_gives_the_same_patient():
    anatomy = phantom(24, 5.0)
    first, second = (synthesize(TRUTH, anatomy, seed=3) for _ in range(2))
    np.testing.assert_array_equal(first.pet, second.pet)


def test_written_case_reads_back_as_an_observation_and_an_anatomy(patient, tmp_path):
    paths = write_synthetic(patient, tmp_path)
    observation = load_observation(paths["t1gd"], paths["flair"], paths["pet"])
    np.testing.assert_array_equal(observation.t1gd, patient.t1gd)
    np.testing.assert_allclose(observation.pet, patient.pet)
    anatomy = Anatomy.from_nifti(paths["wm"], paths["gm"], paths["csf"])
    np.testing.assert_allclose(anatomy.affine, patient.anatomy.affine)
    truth = json.loads(paths["truth"].read_text())
    assert truth["mu_1"]["value"] == pytest.approx(np.sqrt(TRUTH["D_w"] * TRUTH["T"]))
    assert truth["D_w"] == {"value": TRUTH["D_w"], "unit": "mm^2/day"}


@pytest.mark.parametrize(
    "change, problem",
    [({"T": 1.0}, "nothing would show"), ({"u_flair": 0.8}, "u_flair < u_t1gd"), ({"pet_sigma": -1.0}, "pet_sigma")],
)
def test_impossible_cases_are_refused(change, problem):
    with pytest.raises(ValueError, match=problem):
        synthesize(TRUTH | change, phantom(24, 5.0))


@pytest.mark.parametrize("masks, problem", [("detection", "missing parameters: sigma_alpha"), ("noisy", "masks must be")])
def test_a_mask_model_without_its_parameter_or_unknown_is_refused(masks, problem):
    with pytest.raises(ValueError, match=problem):
        synthesize(TRUTH, phantom(24, 5.0), masks=masks)


def test_the_synth_command_writes_the_built_in_case_with_overrides(tmp_path, capsys):
    from personalize.cli import main

    out = tmp_path / "case"
    assert main(["synth", "--spacing", "8", "--param", "T=400", "D_w=0.3", "--out", str(out)]) == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["T"]["value"] == 400.0 and truth["D_w"]["value"] == 0.3 and truth["rho"]["value"] == BUILT_IN_CASE["rho"]
    assert {p.name for p in out.iterdir()} >= {"t1gd.nii.gz", "flair.nii.gz", "pet.nii.gz", "wm.nii.gz", "gm.nii.gz"}
    assert "mL" in capsys.readouterr().out


def test_the_synth_command_draws_masks_from_the_detection_model_on_request(tmp_path):
    from personalize.cli import main

    out = tmp_path / "case"
    assert main(["synth", "--spacing", "8", "--masks", "detection", "--param", "sigma_alpha=0.05", "--no-pet",
                 "--out", str(out)]) == 0
    assert json.loads((out / "truth.json").read_text())["sigma_alpha"]["value"] == 0.05


def test_the_synth_command_refuses_an_unknown_parameter_in_one_line(tmp_path, capsys):
    from personalize.cli import main

    assert main(["synth", "--param", "Dw=0.3", "--out", str(tmp_path / "never")]) == 2
    assert "Dw" in capsys.readouterr().err and not (tmp_path / "never").exists()
