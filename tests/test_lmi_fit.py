"""``personalize fit --method lmi``: register to the atlas, predict there, simulate, warp back, on the patient's grid.

The network is not trained: a tiny one whose head is set to answer one tumour whatever it is shown (the one the
patient's masks were drawn around, in the atlas), saved with a 6 mm atlas's record. So these tests check the
pipeline, not the estimate: the folder a fit writes, the patient's own grid and affine, the summary, that the seed
reaches the patient's world space through the registration, and that the tumour grown in the atlas lands back on
the patient's masks.
"""

from __future__ import annotations

import json
import os

import arviz
import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import world_mm
from personalize.cli import main
from personalize.fit import FitSettings
from personalize.io import load_observation
from personalize.lmi.dataset import DatasetConfig, dataset_anatomy, manifest, output_ranges
from personalize.lmi.network import InverseNetwork, NetworkConfig, build_network
from personalize.lmi.parameters import OutputRanges, mu_from_growth
from personalize.lmi.personalization import fit_lmi, reference_front_speed
from personalize.lmi.refine import RefineWidths, refined_bounds
from personalize.checked_weights import file_sha256, record_path
from personalize.lmi.weights import save_weights
from personalize.overlap import dice
from personalize.priors import DEFAULT_BOUNDS
from personalize.registration import points_to_moving, to_moving
from personalize.working_grid import flair_abnormality
from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas
from simulators.fisher_kolmogorov import front_speed
from simulators.nifti import read_volume, write_nifti

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_numba_thread")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # the warps run here; ITK reads it at its first use

CONFIG = DatasetConfig(spacing_mm=6.0)
"""The weights' atlas: MNI152 at 6 mm cropped to tissue (27 × 33 × 27 voxels)."""
PATIENT_AFFINE = np.array([[0.0, -4.0, 0.0, 94.0], [-4.0, 0.0, 0.0, 72.0], [0.0, 0.0, 4.0, -66.0], [0, 0, 0, 1]])
"""A 4 mm grid whose first axis points posterior and second left (LPS-like, permuted): not the atlas's."""
PATIENT_SHAPE = (50, 42, 42)
OFFSET_MM = np.array([12.0, -10.0, 8.0])
"""The patient is the atlas moved by this much: what lies at p in the atlas lies at p + OFFSET_MM in the patient."""
TUMOUR_MM = np.array([25.0, -10.0, 20.0])
"""Centre of the tumour in the atlas's world space (right frontal white matter)."""
GROWTH = {"D_w": 0.3, "rho": 0.03, "T": 200.0}
"""The growth the network answers: at TUMOUR_MM in the 6 mm atlas, u > 0.275 covers 111 voxels with Dice 0.84
against the 16 mm ball (82 voxels), u > 0.675 4 voxels with Dice 0.5 against the 8 mm one (12)."""
ATLAS_VOXEL_MM = CONFIG.spacing_mm
PATIENT_VOXEL_MM = 4.0


def answering(ranges: OutputRanges) -> InverseNetwork:
    """A tiny network whose outputs are GROWTH's μ₁, μ₂ and TUMOUR_MM whatever its input: the head's weights are
    zero and its bias is the scaled answer through artanh (the head ends in tanh)."""
    network = build_network(NetworkConfig(channels=(4, 8)), seed=0)
    answer = ranges.scale(np.array([*mu_from_growth(GROWTH["D_w"], GROWTH["rho"], GROWTH["T"]), *TUMOUR_MM]))
    linear = network.head[2]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.atanh(torch.from_numpy(answer)))
    return network


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """:func:`answering` saved with the record :func:`personalize.lmi.train.train` writes."""
    atlas = dataset_anatomy(CONFIG)
    stored = manifest(CONFIG, 0, atlas)
    ranges = output_ranges(CONFIG, atlas)
    path = tmp_path_factory.mktemp("weights") / "lmi_network.pt"
    save_weights(answering(ranges), path, ranges=ranges,
                 provenance={"data_seed": 0, "dataset": stored["config"], "anatomy": stored["anatomy"]})
    return path


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    """The atlas moved by :data:`OFFSET_MM` on :data:`PATIENT_AFFINE`'s grid, with a ball-shaped T1Gd core (8 mm)
    and FLAIR abnormality (16 mm) around :data:`TUMOUR_MM` + :data:`OFFSET_MM`, written as NIfTI."""
    folder = tmp_path_factory.mktemp("patient")
    source = default_atlas(2.0)
    sampled_at = PATIENT_AFFINE.copy()
    sampled_at[:3, 3] -= OFFSET_MM  # patient voxel i shows the atlas at world(i) - offset
    blank = Anatomy(*(np.zeros(PATIENT_SHAPE, np.float32),) * 3, affine=sampled_at)
    paths = {}
    for name in ("wm", "gm", "csf"):
        paths[name] = write_nifti(source.resample_array_to(getattr(source, name), blank), PATIENT_AFFINE,
                                  folder / f"{name}.nii.gz")
    distance = np.linalg.norm(world_mm(PATIENT_SHAPE, PATIENT_AFFINE) - (TUMOUR_MM + OFFSET_MM), axis=-1)
    for name, radius in (("t1gd", 8.0), ("flair", 16.0)):
        paths[name] = write_nifti((distance <= radius).astype(np.uint8), PATIENT_AFFINE, folder / f"{name}.nii.gz")
    return paths


@pytest.fixture(scope="module")
def run(patient, weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("lmi_fit")
    observation = load_observation(patient["t1gd"], patient["flair"], core=True)
    tissue = Anatomy.from_nifti(patient["wm"], patient["gm"], patient["csf"])
    return out, fit_lmi(observation, out, weights=weights, tissue=tissue, progress=False)


def test_a_run_writes_the_summary_the_density_the_figure_and_the_transforms_but_no_posterior(run, measured):
    out, result = run
    for name in ("summary.json", "map_density.nii.gz", "figures/map_slices.png", "registration/registration.json",
                 "registration/affine.mat", "registration/warp.nii.gz", "registration/inverse_warp.nii.gz"):
        assert (out / name).is_file(), name
    assert not (out / "posterior.nc").exists()
    summary = result.summary
    for step in ("registration", "inference", "simulation", "warp_back"):
        measured(f"{step} (s), patient 50x42x42 at 4 mm, atlas 27x33x27 at 6 mm", f"{summary[f'wall_s_{step}']:.2f}")
    measured("fit_lmi wall time (s)", f"{summary['wall_s']:.1f}")


def test_the_density_lies_on_the_patients_grid_with_its_affine_over_the_tumour(run, patient, measured):
    """The tumour grown at TUMOUR_MM in the atlas lands on the masks drawn around TUMOUR_MM + OFFSET_MM in the
    patient; a slip of the offset (17.6 mm) or of the orientation would leave the 16 mm FLAIR ball mostly empty."""
    out, result = run
    written, scan = nib.load(out / "map_density.nii.gz"), nib.load(patient["t1gd"])
    assert written.shape == scan.shape == PATIENT_SHAPE
    np.testing.assert_allclose(written.affine, PATIENT_AFFINE, atol=1e-6)
    density = read_volume(out / "map_density.nii.gz").data
    assert density.min() >= 0 and 0 < density.max() <= 1
    observation = load_observation(patient["t1gd"], patient["flair"], core=True)
    fit = result.summary["map_fit"]
    assert fit["dice_t1gd"] == dice(density > fit["u_t1gd"], observation.t1gd > 0)
    assert fit["dice_flair"] == dice(density > fit["u_flair"], flair_abnormality(observation) > 0)
    measured("Dice FLAIR, T1Gd of the density warped back", f"{fit['dice_flair']:.3f}, {fit['dice_t1gd']:.3f}")
    assert fit["dice_flair"] > 0.6 and fit["dice_t1gd"] > 0


def test_the_summary_holds_the_estimate_in_both_spaces_with_units_and_the_weights_hash(run, weights):
    out, result = run
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["method"], summary["simulator"], summary["n_simulations"]) == ("lmi", "fisher_kolmogorov", 1)
    assert summary["wall_s"] >= summary["wall_s_registration"] + summary["wall_s_simulation"] > 0
    assert summary["log_evidence"] is None
    names = ("D_w", "rho", "T", "x", "y", "z", "mu_1", "mu_2")
    units = {"D_w": "mm^2/day", "rho": "1/day", "T": "day", "x": "mm", "y": "mm", "z": "mm", "mu_1": "mm", "mu_2": "1"}
    for space in ("parameters", "atlas_parameters"):
        assert tuple(summary[space]) == names
        for name in names:
            entry = summary[space][name]
            assert entry["unit"] == units[name] and np.isfinite(entry["map"])
            assert entry["mean"] is None and entry["q05"] is None and entry["q95"] is None
    value = {name: entry["map"] for name, entry in summary["parameters"].items()}
    assert value == pytest.approx(result.parameters)
    mu = mu_from_growth(GROWTH["D_w"], GROWTH["rho"], GROWTH["T"])
    assert (value["mu_1"], value["mu_2"]) == pytest.approx(mu, rel=1e-5)
    atlas_seed = [summary["atlas_parameters"][name]["map"] for name in "xyz"]
    np.testing.assert_allclose(atlas_seed, TUMOUR_MM, atol=1e-3)
    for name in ("D_w", "rho", "T", "mu_1", "mu_2"):
        assert summary["atlas_parameters"][name]["map"] == value[name]
    np.testing.assert_allclose([value["D_w"] * value["T"], value["rho"] * value["T"]],
                               [value["mu_1"] ** 2, value["mu_2"] ** 2], rtol=1e-9)
    velocity = reference_front_speed(CONFIG)
    assert summary["front_speed"]["value"] == velocity == pytest.approx(0.554, abs=1e-3)
    assert front_speed(value["D_w"], value["rho"]) == pytest.approx(velocity, rel=1e-9)
    assert summary["weights"]["sha256"] == file_sha256(weights)
    assert summary["atlas"]["shape"] == list(dataset_anatomy(CONFIG).shape)


def test_the_seed_in_the_patients_space_is_the_atlas_seed_moved_by_the_patients_offset(run, measured):
    """The patient is the atlas moved by OFFSET_MM (17.6 mm), so a sign or LPS/RAS slip would miss by more than
    the tolerance of one atlas voxel (the grid the seed is predicted on; the registration, between a 4 mm and a
    6 mm grid, recovered the offset to 2-3 mm in development)."""
    _, result = run
    atlas_seed = np.array([result.atlas_parameters[name] for name in "xyz"])
    patient_seed = np.array([result.parameters[name] for name in "xyz"])
    error = np.linalg.norm(patient_seed - (atlas_seed + OFFSET_MM))
    measured("|patient seed - (atlas seed + offset)| (mm)", f"{error:.2f}")
    assert error < ATLAS_VOXEL_MM < np.linalg.norm(OFFSET_MM)
    np.testing.assert_allclose(points_to_moving(result.registration, atlas_seed[None])[0], patient_seed)


def test_the_seed_lands_where_the_warp_back_carries_a_blob_at_it(run):
    _, result = run
    atlas = dataset_anatomy(CONFIG)
    atlas_seed = np.array([result.atlas_parameters[name] for name in "xyz"])
    distance2 = ((world_mm(atlas.shape, atlas.affine) - atlas_seed) ** 2).sum(axis=-1)
    blob = to_moving(result.registration, np.exp(-distance2 / (2 * 6.0**2)).astype(np.float32), "density")
    moving = result.registration.moving
    centroid = (blob[..., None] * world_mm(moving.shape, moving.affine)).sum(axis=(0, 1, 2)) / blob.sum()
    assert np.linalg.norm(centroid - [result.parameters[name] for name in "xyz"]) < PATIENT_VOXEL_MM


def test_without_tissue_maps_the_scans_are_taken_to_be_in_the_atlas_space(patient, weights, tmp_path, measured):
    """With no tissue maps the default atlas on the scans' grid is the anatomy (as ``personalize fit`` takes it):
    the registration is then near the identity, and the seed stays where the network put it."""
    observation = load_observation(patient["t1gd"], patient["flair"], core=True)
    result = fit_lmi(observation, tmp_path, weights=weights, progress=False)
    error = np.linalg.norm(np.array([result.parameters[name] for name in "xyz"]) - TUMOUR_MM)
    measured("|patient seed - atlas seed| without tissue maps (mm)", f"{error:.2f}")
    assert error < ATLAS_VOXEL_MM
    assert nib.load(tmp_path / "map_density.nii.gz").shape == PATIENT_SHAPE


def test_weights_without_their_atlas_are_refused_naming_the_file(patient, tmp_path):
    path = tmp_path / "bare.pt"
    save_weights(build_network(NetworkConfig(channels=(4, 8)), seed=0), path,
                 ranges=output_ranges(CONFIG, dataset_anatomy(CONFIG)), provenance={})
    observation = load_observation(patient["t1gd"], patient["flair"], core=True)
    with pytest.raises(ValueError, match="bare.pt: its record holds no training dataset"):
        fit_lmi(observation, tmp_path / "out", weights=path, progress=False)
    assert not (tmp_path / "out").exists()


def test_the_command_fits_with_lmi_end_to_end(patient, weights, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["fit", "--method", "lmi", "--weights", str(weights), "--t1gd", str(patient["t1gd"]),
                 "--flair", str(patient["flair"]), "--wm", str(patient["wm"]), "--gm", str(patient["gm"]),
                 "--csf", str(patient["csf"]), "--threads", "1", "--quiet", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["method"] == "lmi"
    assert nib.load(out / "map_density.nii.gz").shape == PATIENT_SHAPE
    assert "D_w" in printed and "(lmi)" in printed


def test_a_tampered_weights_file_is_one_line_exit_2_naming_it(patient, weights, tmp_path, capsys):
    tampered = tmp_path / "tampered.pt"
    data = bytearray(weights.read_bytes())
    data[-20] ^= 0xFF
    tampered.write_bytes(bytes(data))
    record_path(tampered).write_text(record_path(weights).read_text())
    for path in (tampered, tmp_path / "missing.pt"):
        code = main(["fit", "--method", "lmi", "--weights", str(path), "--t1gd", str(patient["t1gd"]),
                     "--flair", str(patient["flair"]), "--quiet", "--out", str(tmp_path / "out")])
        error = capsys.readouterr().err
        assert code == 2 and str(path) in error and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, problem", [
    (["--method", "tmcmc", "--weights", "w.pt"], "--weights applies to --method lmi only"),
    (["--method", "npe", "--weights", "w.pt"], "--weights applies to --method lmi only"),
    (["--method", "lmi", "--weights", "w.pt", "--samples", "10", "--rounds", "2"],
     "--samples, --rounds do not apply to --method lmi"),
    (["--method", "lmi", "--weights", "w.pt", "--pet", "pet.nii.gz"], "--pet do not apply to --method lmi"),
    (["--method", "tmcmc", "--refine", "tmcmc"], "--refine applies to --method lmi only"),
])
def test_options_that_do_not_fit_the_method_are_refused_in_one_line(patient, tmp_path, capsys, extra, problem):
    code = main(["fit", "--t1gd", str(patient["t1gd"]), "--flair", str(patient["flair"]), *extra,
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and problem in error and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


def test_lmi_is_no_engine_of_fit_nor_a_method_of_the_microenvironment_model(tmp_path, capsys):
    with pytest.raises(ValueError, match="lmi runs through personalize.lmi.personalization.fit_lmi"):
        FitSettings(method="lmi")
    code = main(["fit", "--model", "microenvironment", "--method", "lmi", "--out", str(tmp_path / "out")])
    assert code == 2 and "--method lmi applies to --model fisher-kolmogorov only" in capsys.readouterr().err
    code = main(["fit", "--model", "microenvironment", "--weights", "w.pt", "--out", str(tmp_path / "out")])
    assert code == 2 and "--weights apply to --model fisher-kolmogorov only" in capsys.readouterr().err


def test_refined_bounds_narrow_around_the_estimate_and_stay_inside_the_prior_box():
    widths = RefineWidths(growth_factor=3.0, seed_radius_mm=12.0)
    estimate = {"D_w": 0.3, "rho": 0.19, "T": 3000.0, "x": 10.0, "y": -20.0, "z": 5.0}
    narrowed = refined_bounds(estimate, DEFAULT_BOUNDS, widths)
    assert narrowed.bounds["D_w"] == pytest.approx((0.1, 0.9))
    assert narrowed.bounds["rho"] == pytest.approx((0.19 / 3, DEFAULT_BOUNDS["rho"][1]))  # cut at the box
    assert narrowed.bounds["T"] == pytest.approx((1500.0 / 3, 1500.0))  # an estimate outside: at the nearest edge
    for name, (low, high) in narrowed.bounds.items():
        prior_low, prior_high = DEFAULT_BOUNDS[name]
        assert prior_low <= low < high <= prior_high
        assert high - low < prior_high - prior_low
    assert narrowed.seed_box == {"x": (-2.0, 22.0), "y": (-32.0, -8.0), "z": (-7.0, 17.0)}
    with pytest.raises(ValueError, match="growth_factor"):
        RefineWidths(growth_factor=1.0)


ENGINE_OPTIONS = {"tmcmc": ["--samples", "16", "--chain-steps", "1"],
                  "npe": ["--rounds", "1", "--simulations", "64", "--npe-draws", "64", "--max-epochs", "5"]}
"""The smallest settings of each refining engine that still sample a posterior."""


@pytest.mark.parametrize("engine", sorted(ENGINE_OPTIONS))
def test_the_command_refines_in_the_narrowed_prior(patient, weights, tmp_path, capsys, measured, engine):
    """``--refine tmcmc|npe`` after the network: a posterior in patient space whose seeds lie in the box around the
    LMI seed (up to half a working voxel: the box cuts voxel centres, a seed lies anywhere in its voxel) and whose
    D_w, rho, T lie in the narrowed bounds; the LMI folder is left as it was, the refined fit in OUT/refine."""
    out = tmp_path / "run"
    spacing = 8.0
    code = main(["fit", "--method", "lmi", "--refine", engine, "--weights", str(weights),
                 "--t1gd", str(patient["t1gd"]), "--flair", str(patient["flair"]), "--wm", str(patient["wm"]),
                 "--gm", str(patient["gm"]), "--csf", str(patient["csf"]), *ENGINE_OPTIONS[engine],
                 "--spacing", str(spacing), "--margin", "16", "--predictive", "2", "--threads", "1", "--quiet",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["method"] == "lmi"
    summary = json.loads((out / "refine" / "summary.json").read_text())
    assert summary["method"].split("-")[0] == engine and f"refined with {engine}" in printed
    lmi_seed = {name: summary["lmi_estimate"]["parameters"][name]["map"] for name in "xyz"}
    assert summary["refine"]["seed_box_mm"] == {name: [lmi_seed[name] - 12.0, lmi_seed[name] + 12.0]
                                                for name in "xyz"}
    posterior = arviz.from_netcdf(out / "refine" / "posterior.nc").posterior
    half_voxel = spacing / 2 + 1e-6
    for name in "xyz":
        samples = posterior[name].values.ravel()
        low, high = summary["refine"]["seed_box_mm"][name]
        assert low - half_voxel <= samples.min() and samples.max() <= high + half_voxel, name
    for name, (low, high) in summary["refine"]["bounds"].items():
        samples = posterior[name].values.ravel()
        assert low <= samples.min() and samples.max() <= high, name
    measured(f"lmi --refine {engine} ({' '.join(ENGINE_OPTIONS[engine])}, 8 mm) wall time of the refined fit (s)",
             f"{summary['wall_s']:.1f}")
