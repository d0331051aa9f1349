"""compare: C2ST, Wasserstein distances and MAP Dice between fit folders, read as `personalize fit` writes them.

The fit folders here are built directly (a Gaussian posterior, its summary, a blob on an 8³ grid), so no
simulation runs; C2ST uses 300 draws per run to stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from personalize.cli import EXIT_BAD_INPUT, main
from personalize.compare import IDENTIFIABLE, compare_runs
from personalize.posterior import Posterior

NAMES = ("D_w", "rho", "T", "x", "y", "z", "u_t1gd", "u_flair", "mu_1", "mu_2")
MEAN = np.array([0.2, 0.03, 200.0, -10.0, 5.0, 12.0, 0.7, 0.25, 6.0, 2.4])
SD = np.array([0.02, 0.003, 20.0, 2.0, 2.0, 2.0, 0.02, 0.02, 0.5, 0.2])
N = 1000
DRAWS = 300


def blob(centre: tuple[float, float, float], shape: tuple[int, int, int] = (8, 8, 8)) -> np.ndarray:
    """A Gaussian tumour density peaking at 1 in voxel ``centre``."""
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return np.exp(-np.sum((grid - np.array(centre)) ** 2, axis=-1) / (2 * 1.5**2)).astype(np.float32)


def write_run(folder: Path, *, seed: int, method: str = "tmcmc", shift: dict[str, float] | None = None,
              widen: float = 1.0, density: np.ndarray | None = None, affine: np.ndarray | None = None) -> Path:
    """A fit folder whose posterior is N(MEAN + shift, SD²) per parameter; with ``widen`` > 1 the samples
    come from a wider Gaussian and carry the importance weights that make them that posterior again."""
    mean = MEAN + np.array([(shift or {}).get(name, 0.0) for name in NAMES])
    z = np.random.default_rng(seed).normal(size=(N, len(NAMES))) * widen
    log_weights = np.sum(-0.5 * z**2 + 0.5 * (z / widen) ** 2, axis=1)
    posterior = Posterior(parameter_names=NAMES, samples=mean + z * SD, log_weights=log_weights,
                          log_evidence=None, n_simulations=5000 + seed, wall_s=60.0 + seed, method=method,
                          units={"x": "mm", "y": "mm", "z": "mm"}, log_density=-0.5 * np.sum(z**2, axis=1))
    folder.mkdir(parents=True)
    posterior.to_inference_data().to_netcdf(str(folder / "posterior.nc"))
    summary = {"method": method, "simulator": "fisher_kolmogorov", "n_simulations": posterior.n_simulations,
               "wall_s": posterior.wall_s, "log_evidence": None, "parameters": posterior.summary(),
               "map_fit": {}, "settings": {}}
    (folder / "summary.json").write_text(json.dumps(summary))
    density = blob((3.5, 3.5, 3.5)) if density is None else density
    nib.save(nib.Nifti1Image(density, np.eye(4) if affine is None else affine), folder / "map_density.nii.gz")
    return folder


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Run ``a``; ``b``, importance-weighted draws of the same posterior with the same MAP density; ``far``,
    whose x lies ten standard deviations away and whose MAP tumour sits two voxels over."""
    root = tmp_path_factory.mktemp("runs")
    runs = [write_run(root / "a", seed=1),
            write_run(root / "b", seed=2, method="npe", widen=1.3),
            write_run(root / "far", seed=3, shift={"x": 10 * SD[3]}, density=blob((5.5, 3.5, 3.5)))]
    out = root / "comparison"
    return compare_runs(runs, out, n_samples=DRAWS, seed=0), out


def pair(comparison, a: str, b: str):
    return next(p for p in comparison.pairs if (p.a, p.b) == (a, b))


def test_draws_of_one_posterior_are_indistinguishable_and_identical_maps_have_dice_one(compared, measured):
    comparison, _ = compared
    same = pair(comparison, "tmcmc:a", "npe:b")
    measured("C2ST of two draws of one posterior", f"{same.c2st:.3f}")
    assert same.c2st <= 0.6
    assert same.dice_flair == same.dice_t1gd == 1.0
    assert max(same.relative_wasserstein.values()) < 0.3


def test_separated_posteriors_give_c2st_near_one_and_a_large_distance_on_the_shifted_parameter_only(compared,
                                                                                                 measured):
    comparison, _ = compared
    far = pair(comparison, "tmcmc:a", "tmcmc:far")
    measured("C2ST of posteriors 10 SD apart in x", f"{far.c2st:.3f}")
    assert far.c2st >= 0.9
    assert far.relative_wasserstein["x"] == pytest.approx(10, rel=0.15)
    assert far.wasserstein["x"] == pytest.approx(10 * SD[3], rel=0.15)
    assert max(v for name, v in far.relative_wasserstein.items() if name != "x") < 0.3
    assert far.dice_flair < 1 and far.dice_t1gd < 1


def test_every_pair_of_three_runs_is_compared_over_the_identifiable_parameters(compared):
    comparison, _ = compared
    assert [(p.a, p.b) for p in comparison.pairs] == [("tmcmc:a", "npe:b"), ("tmcmc:a", "tmcmc:far"),
                                                      ("npe:b", "tmcmc:far")]
    assert all(p.c2st_parameters == IDENTIFIABLE for p in comparison.pairs)
    assert comparison.n_samples == DRAWS


def test_comparison_json_and_figures_are_written_with_the_documented_keys(compared):
    _, out = compared
    assert (out / "figures" / "pairs.png").stat().st_size > 0
    assert (out / "figures" / "marginals.png").stat().st_size > 0
    written = json.loads((out / "comparison.json").read_text())
    assert set(written) == {"runs", "pairs", "c2st", "files"}
    assert written["c2st"] == {"function": "sbi.utils.metrics.c2st", "classifier": "mlp", "n_folds": 5,
                               "n_samples": DRAWS, "seed": 0}
    run = written["runs"][1]
    assert {"label", "method", "path", "n_simulations", "wall_s", "parameters"} <= set(run)
    assert (run["label"], run["method"], run["n_simulations"], run["wall_s"]) == ("npe:b", "npe", 5002, 62.0)
    assert set(run["parameters"]) == set(NAMES)
    assert set(run["parameters"]["mu_1"]) == {"map", "mean", "q05", "q95", "unit"}
    first = written["pairs"][0]
    assert {"a", "b", "c2st", "c2st_parameters", "wasserstein", "relative_wasserstein", "dice_flair",
            "dice_t1gd", "threshold_flair", "threshold_t1gd"} <= set(first)
    assert set(first["wasserstein"]) == set(first["relative_wasserstein"]) == set(NAMES)
    assert first["threshold_flair"] == pytest.approx(0.25, abs=0.05)


def test_one_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([write_run(tmp_path / "a", seed=1)], tmp_path / "out")


def test_a_folder_without_posterior_is_refused_naming_the_file(tmp_path):
    a, b = write_run(tmp_path / "a", seed=1), write_run(tmp_path / "b", seed=2)
    (b / "posterior.nc").unlink()
    with pytest.raises(FileNotFoundError, match="posterior.nc"):
        compare_runs([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_maps_on_different_grids_are_refused_naming_both_runs(tmp_path):
    a = write_run(tmp_path / "a", seed=1)
    b = write_run(tmp_path / "b", seed=2, density=blob((3.5, 3.5, 3.5), shape=(8, 8, 9)))
    with pytest.raises(ValueError, match="different grids") as error:
        compare_runs([a, b], tmp_path / "out")
    assert str(a) in str(error.value) and str(b) in str(error.value)
    c = write_run(tmp_path / "c", seed=3, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="affine"):
        compare_runs([a, c], tmp_path / "out")


def test_cli_compare_writes_comparison_json_and_prints_the_pairs(tmp_path, capsys):
    a, b = write_run(tmp_path / "a", seed=1), write_run(tmp_path / "b", seed=2, method="npe")
    out = tmp_path / "out"
    assert main(["compare", str(a), str(b), "--out", str(out), "--samples", "100", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "tmcmc:a" in printed and "npe:b" in printed and str(out / "comparison.json") in printed
    written = json.loads((out / "comparison.json").read_text())
    assert (written["c2st"]["n_samples"], written["c2st"]["seed"]) == (100, 3)
    assert main(["compare", str(a), "--out", str(out)]) == EXIT_BAD_INPUT
