"""Training data, training and weights of the geometry-aware surrogate, at toy size (8³ cubes of 8 mm).

These check what a user relies on: a shard holds what the solver grows for its parameters, in the window it
promises; anatomies keep their roles, so nothing of a held-out anatomy is trained on; generation and training
resume to the same result; the weights file refuses tampering and gives back a simulator.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import phantom
from personalize.checked_weights import record_path
from personalize.cli import main
from personalize.fit import FitSettings
from personalize.surrogate.anatomies import AnatomySpec, build_anatomy, default_anatomies
from personalize.surrogate.dataset import (
    SOLVER,
    CubeDataset,
    DataConfig,
    generate_data,
    open_data,
)
from personalize.surrogate.train import TrainingConfig, case_metrics, train
from personalize.surrogate.weights import load_surrogate
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
from simulators.atlas import default_atlas
from simulators.nifti import write_nifti
from simulators.protocol import Simulator
from simulators.surrogates.geometry_aware import cube_points, sample_volume

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_numba_thread")

SPACING = 8.0
ANATOMIES = (AnatomySpec("atlas", "train", "atlas"), AnatomySpec("mirrored", "validation", "mirrored"),
             AnatomySpec("deformed-0", "test", "deformed", index=0))
SMALL = DataConfig(crop=8, spacing_mm=SPACING, t=(50.0, 300.0), samples_per_shard=2, anatomies=ANATOMIES)
"""8³ cubes of 8 mm (64 mm a side), one shard per anatomy and role."""
TINY = TrainingConfig(channels=(4, 8), parameter_channels=2, batch_size=2, max_epochs=3, patience=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("surrogate_data")
    generate_data(directory, SMALL, data_seed=3, shards=3, progress=False)
    return directory


def test_a_shard_holds_the_solvers_density_on_the_cube_at_the_seed_inside_the_window(data_dir):
    anatomy = build_anatomy(ANATOMIES[0], SPACING)
    with np.load(data_dir / "shard_00000.npz") as shard:
        assert int(shard["anatomy_index"]) == 0 and shard["anatomy"].shape == (2, 3, 8, 8, 8)
        for params, cube, maps in zip(shard["parameters"], shard["density"], shard["anatomy"]):
            grown = SOLVER.simulate(torch.tensor(params[None]), anatomy)
            points = cube_points(torch.tensor(params[None, 3:6]), 8, SPACING)
            expected = sample_volume(grown[:, None], anatomy.affine, points)[0, 0].numpy()
            assert np.abs(cube[0].astype(np.float32) - expected).max() < 2e-3  # float16 storage
            assert cube.max() >= SMALL.visible_level
            assert max(np.abs(cube[0][[0, -1]]).max(), cube[0][:, [0, -1]].max(), cube[0][..., [0, -1]].max()) \
                <= SMALL.wall_level + 1e-3
            assert maps.shape == (3, 8, 8, 8) and maps[:2].sum(axis=0)[4, 4, 4] >= 0.5  # the seed is in tissue
            assert SMALL.d_w[0] <= params[0] <= SMALL.d_w[1] and SMALL.t[0] <= params[2] <= SMALL.t[1]


def test_shards_are_split_by_the_role_of_their_anatomy(data_dir):
    opened = open_data(data_dir)
    assert {role: [p.name for p in paths] for role, paths in opened.shards.items()} == {
        "train": ["shard_00000.npz"], "validation": ["shard_00001.npz"], "test": ["shard_00002.npz"]}
    assert [a["sha256"] for a in opened.manifest["anatomies"]] == [
        a["sha256"] for a in json.loads((data_dir / "manifest.json").read_text())["anatomies"]]


def test_generation_resumes_to_identical_shards_and_refuses_another_configuration(data_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in data_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "shard_00001.npz").unlink()
    result = generate_data(copy, SMALL, data_seed=3, shards=3, progress=False)
    assert [p.name for p in result.written] == ["shard_00001.npz"]
    with np.load(copy / "shard_00001.npz") as again, np.load(data_dir / "shard_00001.npz") as first:
        assert all(np.array_equal(again[k], first[k]) for k in first.files)
    with pytest.raises(ValueError, match="data_seed"):
        generate_data(copy, SMALL, data_seed=4, shards=3, progress=False)
    with pytest.raises(ValueError, match="config.crop"):
        generate_data(copy, replace(SMALL, crop=16), data_seed=3, shards=3, progress=False)


def test_deformed_anatomies_are_new_brains_of_about_the_same_size():
    atlas = build_anatomy(AnatomySpec("atlas", "train", "atlas"), SPACING)
    for spec in default_anatomies(2):
        if spec.source != "deformed":
            continue
        other = build_anatomy(spec, SPACING)
        assert 0.6 < other.tissue.sum() / atlas.tissue.sum() < 1.5
        if other.shape == atlas.shape:
            assert not np.allclose(other.wm, atlas.wm)


def test_a_patients_tissue_files_become_an_anatomy_and_bad_specs_are_refused(tmp_path):
    atlas = default_atlas(4.0)
    paths = [write_nifti(getattr(atlas, name), atlas.affine, tmp_path / f"{name}.nii.gz") for name in ("wm", "gm")]
    patient = build_anatomy(AnatomySpec("p", "test", "files", files=tuple(str(p) for p in paths)), SPACING)
    assert patient.spacing_mm == (SPACING,) * 3 and patient.tissue.sum() > 0
    with pytest.raises(ValueError, match="role"):
        AnatomySpec("x", "holdout", "atlas")
    with pytest.raises(ValueError, match="files"):
        AnatomySpec("x", "test", "files")
    with pytest.raises(ValueError, match="unique"):
        DataConfig(anatomies=(ANATOMIES[0], ANATOMIES[0], ANATOMIES[1]))
    with pytest.raises(ValueError, match="validation"):
        DataConfig(anatomies=(ANATOMIES[0],))


def test_metrics_of_a_perfect_and_of_an_empty_prediction():
    rng = np.random.default_rng(0)
    simulated = np.clip(rng.random((8, 8, 8)) * 1.2 - 0.1, 0, 1).astype(np.float32)
    anatomy = rng.random((3, 8, 8, 8)).astype(np.float32)
    perfect = case_metrics(simulated, simulated, anatomy)
    assert all(perfect[f"dice_{u:g}"] == 1 for u in (0.2, 0.4, 0.8))
    assert all(perfect[f"mae_{t}"] == 0 for t in ("wm", "gm", "csf"))
    empty = case_metrics(np.zeros_like(simulated), simulated, anatomy)
    assert empty["dice_0.4"] == 0 and empty["mae_wm"] > 0


def test_training_lowers_the_loss_resumes_to_the_same_weights_and_gives_a_simulator(data_dir, tmp_path):
    whole = train(data_dir, tmp_path / "whole", TINY, progress=False)
    assert len(whole.train_loss) == 3 and whole.train_loss[-1] < whole.train_loss[0]
    assert whole.test is not None and set(whole.test.dice) == {"0.2", "0.4", "0.8"}
    train(data_dir, tmp_path / "resumed", replace(TINY, max_epochs=1), progress=False)
    resumed = train(data_dir, tmp_path / "resumed", TINY, progress=False)
    for name, value in torch.load(whole.weights, weights_only=True).items():
        torch.testing.assert_close(torch.load(resumed.weights, weights_only=True)[name], value, rtol=0, atol=0)

    surrogate, record = load_surrogate(whole.weights)
    assert isinstance(surrogate, Simulator) and record["data_seed"] == 3
    assert record["network"]["crop"] == 8 and record["test_metrics"]["samples"] == 2
    atlas = default_atlas(SPACING)
    density = surrogate.simulate(torch.tensor([[0.3, 0.05, 200.0, 20.0, -10.0, 20.0]], dtype=torch.float64), atlas)
    assert density.shape == (1, *atlas.shape) and 0 <= density.min() and density.max() <= 1

    tampered = tmp_path / "tampered.pt"
    content = bytearray(whole.weights.read_bytes())
    content[len(content) // 2] ^= 0xFF
    tampered.write_bytes(bytes(content))
    record_path(tampered).write_text(record_path(whole.weights).read_text())
    with pytest.raises(ValueError, match="SHA-256"):
        load_surrogate(tampered)
    with pytest.raises(ValueError, match="another dataset or training configuration"):
        train(data_dir, tmp_path / "whole", replace(TINY, learning_rate=0.01), progress=False)


@pytest.fixture(scope="module")
def weights(data_dir, tmp_path_factory):
    return train(data_dir, tmp_path_factory.mktemp("weights"), TINY, progress=False).weights


def test_a_fit_with_the_surrogate_says_so_and_a_resume_with_the_solver_is_refused(weights, tmp_path, capsys):
    truth = BUILT_IN_CASE | {"x": -20.0, "y": 0.0, "z": 4.0, "D_w": 0.3, "rho": 0.05, "T": 200.0}
    case = write_synthetic(synthesize(truth, phantom(32, 4.0), seed=0, with_pet=False), tmp_path / "patient")
    command = ["fit", "--t1gd", str(case["t1gd"]), "--flair", str(case["flair"]), "--wm", str(case["wm"]),
               "--gm", str(case["gm"]), "--csf", str(case["csf"]), "--samples", "16", "--chain-steps", "1",
               "--spacing", "8", "--margin", "16", "--predictive", "2", "--threads", "1", "--quiet",
               "--out", str(tmp_path / "fit")]
    assert main([*command, "--simulator", "surrogate", "--surrogate-weights", str(weights), "--max-stages", "2"]) \
        in (0, 1)  # 1: stopped at the stage limit, resumable
    assert (tmp_path / "fit" / "checkpoint" / "fit.json").exists()
    capsys.readouterr()
    code = main([*command, "--resume"])
    error = capsys.readouterr().err
    assert code == 2 and "checkpoint of another fit" in error, error
    code = main([*command, "--simulator", "surrogate", "--surrogate-weights", str(weights)])
    assert code == 0
    summary = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert summary["simulator"] == "geometry_aware_surrogate"
    assert summary["simulator_record"]["sha256"] == json.loads(record_path(weights).read_text())["sha256"]


def test_the_surrogate_options_are_refused_where_they_do_not_apply(tmp_path, capsys):
    code = main(["fit", "--model", "microenvironment", "--simulator", "surrogate", "--out", str(tmp_path / "o")])
    assert code == 2 and "--simulator apply to --model fisher-kolmogorov only" in capsys.readouterr().err
    with pytest.raises(ValueError, match="surrogate_weights applies to simulator 'surrogate' only"):
        FitSettings(surrogate_weights="w.pt")
