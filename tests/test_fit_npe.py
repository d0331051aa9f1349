"""Specification of ``personalize fit --method npe``: the same folder as a TMCMC fit, from simulated scans,
readable by ``personalize compare`` beside a TMCMC fit of the same patient."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import phantom
from personalize.cli import main
from personalize.compare import compare_runs
from personalize.fit import FitSettings, fit, truth_from_json
from personalize.io import load_observation
from personalize.posterior import Posterior
from personalize.scan_simulator import ScanSimulator, observed_scans
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
from personalize.working_grid import ImageLogLikelihood, build_working_problem
from likelihoods.joint import JointLikelihood
from personalize.priors import Prior
from simulators.anatomy import Anatomy
from simulators.fisher_kolmogorov import FisherKolmogorov

TRUTH = BUILT_IN_CASE | {"x": -20.0, "y": 0.0, "z": 4.0, "D_w": 0.3, "rho": 0.05, "T": 200.0}
SMALL = FitSettings(method="npe", spacing_mm=4.0, margin_mm=12.0, rounds=2, simulations=150, npe_draws=400,
                    npe_max_epochs=30, embedding="moments", n_predictive=6, chunk_size=50, thresholds=(0.05, 0.5))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("patient")
    return write_synthetic(synthesize(TRUTH, phantom(32, 4.0), seed=0), folder)


@pytest.fixture(scope="module")
def inputs(case):
    return (load_observation(case["t1gd"], case["flair"], case["pet"]),
            Anatomy.from_nifti(case["wm"], case["gm"], case["csf"]))


@pytest.fixture(scope="module")
def npe_run(inputs, case, tmp_path_factory):
    out = tmp_path_factory.mktemp("npe")
    observation, tissue = inputs
    return out, fit(observation, out, tissue=tissue, settings=SMALL, progress=False,
                    truth=truth_from_json(case["truth"]))


def test_simulated_scans_of_the_truth_reproduce_the_patients_scans(inputs):
    observation, tissue = inputs
    problem = build_working_problem(observation, tissue, spacing_mm=4.0, margin_mm=12.0)
    prior = Prior.from_config(problem.anatomy, problem.scans)
    model = ImageLogLikelihood(FisherKolmogorov(), problem.anatomy, problem.scans, JointLikelihood(), prior.names)
    theta = torch.tensor([[TRUTH.get(name, 0.05) for name in prior.names]], dtype=torch.float64)
    simulated = ScanSimulator(model)(theta)[0]
    observed = observed_scans(problem.scans)
    assert simulated.shape == observed.shape == (3, *problem.anatomy.shape)
    # the masks are the truth's thresholded density on the same grid; PET differs by its noise only
    assert (simulated[:2] == observed[:2]).float().mean() > 0.99
    assert abs(float((simulated[2] - observed[2]).std()) - TRUTH["pet_sigma"]) < 0.03
    again = ScanSimulator(model)(theta.repeat(2, 1))
    torch.testing.assert_close(again[0], again[1])  # a simulation is a function of θ


def test_an_npe_fit_writes_what_every_fit_writes(npe_run):
    out, result = npe_run
    for name in ("summary.json", "posterior.nc", "map_density.nii.gz", "mean_density.nii.gz",
                 "p_u_above_0.05.nii.gz", "figures/pair.png", "figures/map_slices.png", "figures/predictive.png",
                 "checkpoint/npe_round.pkl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "npe-mdn"
    assert summary["n_simulations_inference"] == 2 * SMALL.simulations
    assert [r["n_simulations"] for r in summary["rounds"]] == [SMALL.simulations] * 2
    for entry in summary["parameters"].values():
        assert entry["q05"] <= entry["mean"] <= entry["q95"]
    again = Posterior.from_netcdf(out / "posterior.nc")
    np.testing.assert_array_equal(again.samples, result.posterior.samples)
    assert not again.is_weighted and len(again.samples) == SMALL.npe_draws


def test_npe_samples_lie_in_the_prior_and_near_the_tumour(npe_run):
    _, result = npe_run
    parameters = result.summary["parameters"]
    for name in ("x", "y", "z"):
        assert abs(parameters[name]["mean"] - TRUTH[name]) < 12.0  # mm: three working voxels
    assert parameters["u_flair"]["q95"] <= parameters["u_t1gd"]["q95"] + 0.5


def test_compare_reads_an_npe_fit_beside_a_tmcmc_fit(npe_run, inputs, tmp_path):
    observation, tissue = inputs
    tmcmc_out = tmp_path / "tmcmc"
    fit(observation, tmcmc_out, tissue=tissue, progress=False,
        settings=FitSettings(spacing_mm=4.0, margin_mm=12.0, n_samples=48, chain_steps=1, n_predictive=6,
                             chunk_size=16, thresholds=(0.05, 0.5)))
    comparison = compare_runs([tmcmc_out, npe_run[0]], tmp_path / "compare", n_samples=200)
    pair = comparison.pairs[0]
    assert 0.0 <= pair.c2st <= 1.0 and 0.0 <= pair.dice_flair <= 1.0
    assert (tmp_path / "compare" / "comparison.json").is_file()


def test_the_cli_runs_npe_with_the_estimator_named(case, tmp_path):
    out = tmp_path / "cli"
    code = main(["fit", "--t1gd", str(case["t1gd"]), "--flair", str(case["flair"]), "--wm", str(case["wm"]),
                 "--gm", str(case["gm"]), "--method", "npe", "--estimator", "mdn", "--rounds", "1",
                 "--simulations", "100", "--npe-draws", "100", "--max-epochs", "10", "--embedding", "pooled", "--spacing", "4",
                 "--margin", "12", "--predictive", "4", "--quiet", "--out", str(out)])
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["rounds"][0]["n_simulations"] == 100
