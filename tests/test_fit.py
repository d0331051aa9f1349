"""Specification of ``personalize fit``: the folder every fit writes, on the scans' own grid, resumable."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import phantom
from personalize.cli import main
from personalize.fit import FitSettings, dice, fit, truth_from_json
from personalize.io import load_observation
from personalize.posterior import Posterior
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
from simulators.anatomy import Anatomy

TRUTH = BUILT_IN_CASE | {"x": -20.0, "y": 0.0, "z": 4.0, "D_w": 0.3, "rho": 0.05, "T": 200.0}
SMALL = FitSettings(spacing_mm=4.0, margin_mm=12.0, n_samples=48, chain_steps=1, n_predictive=6,
                    chunk_size=16, thresholds=(0.05, 0.5))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A synthetic patient on a 4 mm phantom written as NIfTI, with its truth."""
    folder = tmp_path_factory.mktemp("patient")
    paths = write_synthetic(synthesize(TRUTH, phantom(32, 4.0), seed=0), folder)
    return paths


@pytest.fixture(scope="module")
def result(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    observation = load_observation(case["t1gd"], case["flair"], case["pet"])
    tissue = Anatomy.from_nifti(case["wm"], case["gm"], case["csf"])
    return out, fit(observation, out, tissue=tissue, settings=SMALL, progress=False,
                    truth=truth_from_json(case["truth"]))


def test_a_fit_writes_every_file_the_architecture_names(result):
    out, _ = result
    for name in ("summary.json", "posterior.nc", "map_density.nii.gz", "mean_density.nii.gz",
                 "p_u_above_0.05.nii.gz", "p_u_above_0.5.nii.gz", "figures/pair.png", "figures/map_slices.png",
                 "figures/predictive.png", "figures/tempering.png", "checkpoint/fit.json"):
        assert (out / name).is_file(), name
    assert any((out / "checkpoint").glob("stage_*.pt"))


def test_the_summary_holds_every_parameter_with_the_derived_growth_scales(result, measured):
    out, fitted = result
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "tmcmc" and summary["simulator"] == "fisher_kolmogorov"
    names = ("D_w", "rho", "T", "x", "y", "z", "u_t1gd", "u_flair", "sigma_alpha", "pet_scale", "pet_sigma",
             "mu_1", "mu_2")
    assert tuple(summary["parameters"]) == names
    for name in names:
        entry = summary["parameters"][name]
        assert set(entry) == {"map", "mean", "q05", "q95", "unit"}
        assert entry["q05"] <= entry["mean"] <= entry["q95"]
    assert summary["parameters"]["mu_1"]["unit"] == "mm" and summary["parameters"]["D_w"]["unit"] == "mm^2/day"
    assert np.isfinite(summary["log_evidence"]) and summary["n_simulations"] > SMALL.n_samples
    # μ₁, μ₂ are the posterior's own derived columns
    samples = fitted.posterior.samples
    index = fitted.posterior.parameter_names.index
    np.testing.assert_allclose(samples[:, index("mu_1")], np.sqrt(samples[:, index("D_w")] * samples[:, index("T")]))
    measured("small fit: stages", summary["stages"])
    measured("small fit: MAP Dice FLAIR", round(summary["map_fit"]["dice_flair"], 3))


def test_the_posterior_reads_back_from_netcdf_with_its_stages(result):
    out, fitted = result
    again = Posterior.from_netcdf(out / "posterior.nc")
    np.testing.assert_array_equal(again.samples, fitted.posterior.samples)
    assert again.parameter_names == fitted.posterior.parameter_names
    assert len(again.stages) == fitted.summary["stages"] + 1
    assert again.stages[-1]["exponent"] == 1.0


def test_density_maps_lie_on_the_input_grid_and_agree_with_the_summary(result, case):
    out, fitted = result
    reference = nib.load(case["t1gd"])
    for name in ("map_density", "mean_density", "p_u_above_0.05"):
        image = nib.load(out / f"{name}.nii.gz")
        assert image.shape == reference.shape
        np.testing.assert_allclose(image.affine, reference.affine)
        data = np.asarray(image.dataobj)
        assert data.min() >= 0 and data.max() <= 1
    low = np.asarray(nib.load(out / "p_u_above_0.05.nii.gz").dataobj)
    high = np.asarray(nib.load(out / "p_u_above_0.5.nii.gz").dataobj)
    assert np.all(low >= high - 1e-6)
    # the Dice the summary reports is that of the written MAP density
    observation = load_observation(case["t1gd"], case["flair"])
    map_density = np.asarray(nib.load(out / "map_density.nii.gz").dataobj)
    u_flair = fitted.summary["parameters"]["u_flair"]["map"]
    assert fitted.summary["map_fit"]["dice_flair"] == pytest.approx(dice(map_density > u_flair, observation.flair))


def test_the_seed_posterior_lies_near_the_true_seed(result):
    _, fitted = result
    for axis in "xyz":
        entry = fitted.summary["parameters"][axis]
        assert abs(entry["map"] - TRUTH[axis]) <= 12.0, axis  # three 4 mm voxels


def test_a_killed_fit_resumes_to_the_same_samples(case, tmp_path):
    observation = load_observation(case["t1gd"], case["flair"], case["pet"])
    tissue = Anatomy.from_nifti(case["wm"], case["gm"], case["csf"])
    settings = FitSettings(**{**SMALL.__dict__, "n_samples": 24, "seed": 5})
    whole = fit(observation, tmp_path / "whole", tissue=tissue, settings=settings, progress=False)
    stopped = FitSettings(**{**settings.__dict__, "max_stages": 2})
    with pytest.raises(RuntimeError, match="2 stages"):
        fit(observation, tmp_path / "killed", tissue=tissue, settings=stopped, progress=False)
    resumed = fit(observation, tmp_path / "killed", tissue=tissue, settings=settings, progress=False, resume=True)
    np.testing.assert_array_equal(resumed.posterior.samples, whole.posterior.samples)


def test_resuming_with_other_inputs_is_refused(case, tmp_path):
    observation = load_observation(case["t1gd"], case["flair"], case["pet"])
    tissue = Anatomy.from_nifti(case["wm"], case["gm"], case["csf"])
    stopped = FitSettings(**{**SMALL.__dict__, "n_samples": 16, "max_stages": 1})
    with pytest.raises(RuntimeError):
        fit(observation, tmp_path, tissue=tissue, settings=stopped, progress=False)
    other = FitSettings(**{**stopped.__dict__, "seed": 9, "max_stages": 60})
    with pytest.raises(ValueError, match="another fit"):
        fit(observation, tmp_path, tissue=tissue, settings=other, progress=False, resume=True)


def test_the_command_refuses_bad_input_in_one_line_and_writes_nothing(case, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["fit", "--t1gd", str(case["t1gd"]), "--flair", str(case["flair"]), "--wm", str(case["wm"]),
                 "--out", str(out), "--quiet"])
    assert code == 2 and "--wm and --gm go together" in capsys.readouterr().err
    code = main(["fit", "--t1gd", str(case["t1gd"]), "--flair", str(tmp_path / "missing.nii.gz"),
                 "--out", str(out), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and "missing.nii.gz" in error and len(error.strip().splitlines()) == 1
    code = main(["fit", "--t1gd", str(case["t1gd"]), "--flair", str(case["flair"]), "--wm", str(case["wm"]),
                 "--gm", str(case["gm"]), "--bound", "D_w=2:1", "--out", str(out), "--quiet"])
    assert code == 2 and "D_w" in capsys.readouterr().err
    assert not out.exists()


def test_the_command_stopped_at_its_stage_limit_says_how_to_continue_in_one_line(case, tmp_path, capsys):
    code = main(["fit", "--t1gd", str(case["t1gd"]), "--flair", str(case["flair"]), "--wm", str(case["wm"]),
                 "--gm", str(case["gm"]), "--spacing", "4", "--samples", "16", "--max-stages", "1",
                 "--out", str(tmp_path / "out"), "--quiet"])
    error = capsys.readouterr().err
    assert code == 1 and len(error.strip().splitlines()) == 1 and "--resume" in error
    assert any((tmp_path / "out" / "checkpoint").glob("stage_001.pt"))


def test_the_command_fits_and_prints_the_table(case, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["fit", "--t1gd", str(case["t1gd"]), "--flair", str(case["flair"]), "--wm", str(case["wm"]),
                 "--gm", str(case["gm"]), "--spacing", "4", "--margin", "12", "--samples", "24", "--chain-steps", "1",
                 "--predictive", "4", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "mu_1" in printed and "MAP Dice" in printed
    assert json.loads((out / "summary.json").read_text())["settings"]["n_samples"] == 24


def test_a_tumour_held_by_the_crop_rather_than_the_anatomy_is_reported(case, tmp_path, capsys):
    """With no margin the crop is the abnormality's bounding box, which the visible tumour touches: the
    summary says how dense the MAP is at the box's walls and the command warns to refit with a larger margin."""
    out = tmp_path / "out"
    code = main(["fit", "--t1gd", str(case["t1gd"]), "--flair", str(case["flair"]), "--wm", str(case["wm"]),
                 "--gm", str(case["gm"]), "--spacing", "4", "--margin", "0", "--samples", "24", "--chain-steps", "1",
                 "--predictive", "4", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    wall = json.loads((out / "summary.json").read_text())["map_fit"]["density_at_crop_wall"]
    assert code == 0 and wall > 0.01
    assert "warning: the MAP tumour reaches the working box's wall" in printed and "--margin above 0" in printed
