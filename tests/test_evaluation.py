"""Specification of `personalize likelihood` (personalize.evaluation): one JSON object with the joint
log-likelihood and its terms, equal to the published formulas evaluated independently here in float64;
bad input gives one line on stderr and exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.stats
import pytest

from personalize.cli import EXIT_BAD_INPUT, main

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), affine), path)
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, Path | np.ndarray]:
    """A 4×4×4 case: a density ramp, T1Gd labels 0/1/2/4 (gliomasolver labels), a binary FLAIR, a PET map."""
    rng = np.random.default_rng(7)
    density = rng.uniform(0.0, 1.0, (4, 4, 4)).astype(np.float32)
    density[0, 0, 0], density[0, 0, 1], density[0, 0, 2] = 0.7, 0.25, 0.0  # 0.25 is exactly u_flair (α = 0.5); u = 0
    t1gd = np.where(density > 0.6, 1, 0).astype(np.float32)
    t1gd[1, 1, 1], t1gd[2, 2, 2], t1gd[3, 3, 3] = 2, 4, 1  # 2 and 4 are negative for T1Gd under gliomasolver
    flair = (density > 0.3).astype(np.float32)
    flair[0, 1, 0] = 1 - flair[0, 1, 0]
    pet = np.clip(density * 0.9 + rng.normal(0, 0.05, density.shape), 0, None).astype(np.float32)
    pet[:, :, 3] = 0.0  # PET = 0: not counted under gliomasolver
    files = {
        name: save(array, tmp_path / f"{name}.nii.gz")
        for name, array in (("density", density), ("t1gd", t1gd), ("flair", flair), ("pet", pet))
    }
    return {**files, "arrays": {"density": density, "t1gd": t1gd, "flair": flair, "pet": pet}}


def run(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["likelihood", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def files_args(case: dict, pet: bool = True) -> list[str]:
    args = ["--density", str(case["density"]), "--t1gd", str(case["t1gd"]), "--flair", str(case["flair"])]
    return args + (["--pet", str(case["pet"])] if pet else [])


# --- the published formulas, written out here from their text (not from the package) ----------------------

def gliomasolver_alpha(u: np.ndarray, u_c: float, slope: float) -> np.ndarray:
    """GliomaSolver (Lipkova et al. 2019, lib_c.c): ω² = 1 where u > u_c else (u − u_c)²;
    α = 0.5 + 0.5·sign(u − u_c)·(1 − exp(−ω²/slope))."""
    d = u - u_c
    omega2 = np.where(d > 0, 1.0, d * d)
    return 0.5 + 0.5 * np.sign(d) * (1.0 - np.exp(-omega2 / slope))


def thesis_alpha(u: np.ndarray, u_c: float, sigma_alpha: float) -> np.ndarray:
    """Lipkova thesis Eq. 6: α = 0.5 + 0.5·sign(u − u_c)·(1 − exp(−(u − u_c)²/σ_α²))."""
    d = u - u_c
    return 0.5 + 0.5 * np.sign(d) * (1.0 - np.exp(-d * d / sigma_alpha**2))


def bernoulli(alpha: np.ndarray, positive: np.ndarray) -> float:
    """Σ log α over positive voxels + Σ log(1 − α) elsewhere."""
    return float(np.sum(np.log(alpha[positive])) + np.sum(np.log(1.0 - alpha[~positive])))


def gaussian(residual: np.ndarray, sigma2: float) -> float:
    """−N/2·log(2πσ²) − Σ r²/(2σ²)."""
    return float(-0.5 * residual.size * np.log(2 * np.pi * sigma2) - 0.5 * np.sum(residual**2) / sigma2)


def gliomasolver_reference(u, t1gd, flair, pet, *, u_t1=0.7, u_fl=0.25, slope=2.0, scale=0.85, sigma2=0.000361):
    """GliomaSolver's log L = PET + T1Gd + FLAIR terms: T1Gd positive only where the label is 1, FLAIR where
    it is 1, PET over the voxels with PET > 0 with r = u − scale·PET."""
    u = np.asarray(u, np.float64)
    counted = pet > 0
    return {
        "t1gd": bernoulli(gliomasolver_alpha(u, u_t1, slope), t1gd == 1),
        "flair": bernoulli(gliomasolver_alpha(u, u_fl, slope), flair == 1),
        "pet": gaussian(u[counted] - scale * np.asarray(pet, np.float64)[counted], sigma2),
    }


# --- the command -------------------------------------------------------------------------------------------

def test_gliomasolver_defaults_match_the_published_formula_on_a_tiny_case(tiny, capsys):
    code, result, err = run(capsys, *files_args(tiny), "--labels", "gliomasolver")
    assert code == 0, err
    a = tiny["arrays"]
    expected = gliomasolver_reference(a["density"], a["t1gd"], a["flair"], a["pet"])
    assert set(result["terms"]) == {"t1gd", "flair", "pet"}
    for name, value in expected.items():
        assert result["terms"][name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
    assert result["log_likelihood"] == pytest.approx(sum(expected.values()), rel=1e-12)
    assert result["log_likelihood"] == pytest.approx(sum(result["terms"].values()), rel=1e-14)
    assert result["negative_log_likelihood"] == -result["log_likelihood"]
    assert result["convention"] == "gliomasolver" and result["labels"] == "gliomasolver"
    assert result["parameters"] == pytest.approx(
        {"u_t1gd": 0.7, "u_flair": 0.25, "sigma_alpha": math.sqrt(2), "pet_scale": 0.85, "pet_sigma": 0.019,
         "slope": 2.0})
    assert result["voxels"] == {
        "grid": 64,
        "t1gd_positive": int(np.count_nonzero(a["t1gd"] == 1)),
        "flair_positive": int(np.count_nonzero(a["flair"])),
        "pet_counted": int(np.count_nonzero(a["pet"] > 0)),
    }


def test_slope_and_overrides_under_gliomasolver(tiny, capsys):
    args = [*files_args(tiny), "--labels", "gliomasolver", "--param", "slope=0.5", "u_t1gd=0.6",
            "--param", "pet_sigma=0.05"]
    code, result, err = run(capsys, *args)
    assert code == 0, err
    a = tiny["arrays"]
    expected = gliomasolver_reference(a["density"], a["t1gd"], a["flair"], a["pet"], u_t1=0.6, slope=0.5,
                                      sigma2=0.05**2)
    for name, value in expected.items():
        assert result["terms"][name] == pytest.approx(value, rel=1e-12), name
    assert result["parameters"]["slope"] == 0.5
    assert result["parameters"]["sigma_alpha"] == pytest.approx(math.sqrt(0.5))


def test_thesis_convention_matches_eq6_and_needs_every_parameter(tiny, capsys):
    a = tiny["arrays"]
    binary_t1 = (a["t1gd"] == 1).astype(np.float32)
    save(binary_t1, tiny["t1gd"])
    # σ_α = 0.3 keeps (u − u_c)²/σ_α² ≤ 4, where the naive α here still has 1e-14 relative accuracy in
    # log(1 − α) (for σ_α = 0.1, 1 − α ≈ 1e-16 rounds; the package's log1p form does not)
    params = ["u_t1gd=0.6", "u_flair=0.3", "sigma_alpha=0.3", "pet_scale=0.9", "pet_sigma=0.05"]
    code, result, err = run(capsys, *files_args(tiny), "--convention", "thesis", "--param", *params)
    assert code == 0, err
    u = a["density"].astype(np.float64)
    read = a["pet"] > 0
    assert (~read).sum() >= 16
    expected = {
        "t1gd": bernoulli(thesis_alpha(u, 0.6, 0.3), binary_t1 == 1),
        "flair": bernoulli(thesis_alpha(u, 0.3, 0.3), a["flair"] == 1),
        # y ~ N(b·u, σ²) over every voxel, a reading of 0 censored: P(y ≤ 0) = Φ(−b·u/σ)
        "pet": gaussian(a["pet"][read].astype(np.float64) - 0.9 * u[read], 0.05**2)
        + float(scipy.stats.norm.logcdf(-0.9 * u[~read] / 0.05).sum()),
    }
    for name, value in expected.items():
        assert result["terms"][name] == pytest.approx(value, rel=1e-12), name
    assert result["voxels"]["pet_counted"] == 64
    code, _, err = run(capsys, *files_args(tiny), "--convention", "thesis", "--param", *params[:4])
    assert code == EXIT_BAD_INPUT and "pet_sigma" in err and len(err.strip().splitlines()) == 1


def test_without_pet_the_pet_term_is_null(tiny, capsys):
    code, result, err = run(capsys, *files_args(tiny, pet=False), "--labels", "gliomasolver")
    assert code == 0, err
    assert result["terms"]["pet"] is None and result["voxels"]["pet_counted"] is None
    assert result["log_likelihood"] == pytest.approx(result["terms"]["t1gd"] + result["terms"]["flair"])


@pytest.mark.parametrize("problem", ["grid", "affine", "range", "unknown", "both", "thesis_slope", "malformed"])
def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, capsys, problem):
    args = [*files_args(tiny), "--labels", "gliomasolver"]
    expected = {"grid": "shape", "affine": "affine", "range": "[0, 1]", "unknown": "unknown parameter",
                "both": "not both", "thesis_slope": "slope", "malformed": "NAME=VALUE"}[problem]
    density = tiny["arrays"]["density"]
    if problem == "grid":
        args[1] = str(save(np.zeros((4, 4, 5)), tmp_path / "other_grid.nii.gz"))
    elif problem == "affine":
        args[1] = str(save(density, tmp_path / "shifted.nii.gz", AFFINE + _shift(5.0)))
    elif problem == "range":
        args[1] = str(save(density * 1.5, tmp_path / "above_one.nii.gz"))
    elif problem == "unknown":
        args += ["--param", "u_t2=0.3"]
    elif problem == "both":
        args += ["--param", "slope=2", "sigma_alpha=1.4"]
    elif problem == "thesis_slope":
        args += ["--convention", "thesis", "--param", "slope=2"]
    elif problem == "malformed":
        args += ["--param", "u_t1gd"]
    code, result, err = run(capsys, *args)
    assert code == EXIT_BAD_INPUT
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("personalize likelihood: error:") and expected in lines[0], err


def _shift(mm: float) -> np.ndarray:
    shift = np.zeros((4, 4))
    shift[0, 3] = mm
    return shift


# --- the real patient against GliomaSolver ------------------------------------------------------------------

@pytest.mark.skipif(not (SHARED_DATA / "lipkova_patient").is_dir(), reason="shared data not present")
def test_lipkova_patient_with_the_gliomasolver_reference_density(capsys, measured):
    """GliomaSolver's own `likelihood` program (slitvinov/GliomaSolver at 6c690b44, likelihood/main.c, built
    with its Makefile: `cc main.c -O2 -g -lm`) prints −log L = 2.3475835715578407e+07 on these files (inputs
    converted to its .dat format; the commands are in docs/likelihood.md). Here the command is checked
    against an independent float64 NumPy evaluation of the published formula, and against that value."""
    patient = SHARED_DATA / "lipkova_patient"
    reference = SHARED_DATA / "reference_runs" / "gliomasolver_Dw0.13_rho0.025_T300.nii.gz"
    args = ["--convention", "gliomasolver", "--labels", "gliomasolver", "--density", str(reference),
            "--t1gd", str(patient / "tumT1c.nii.gz"), "--flair", str(patient / "tumFLAIR.nii.gz"),
            "--pet", str(patient / "tumPET.nii.gz")]
    code, result, err = run(capsys, *args)
    assert code == 0, err

    def load(path: Path) -> np.ndarray:
        return np.asarray(nib.load(path).dataobj, dtype=np.float32)  # identity affine: no reorientation

    expected = gliomasolver_reference(load(reference), load(patient / "tumT1c.nii.gz"),
                                      load(patient / "tumFLAIR.nii.gz"), load(patient / "tumPET.nii.gz"))
    for name, value in expected.items():
        assert result["terms"][name] == pytest.approx(value, rel=1e-11), name
    assert result["voxels"]["t1gd_positive"] == 19_696 and result["voxels"]["pet_counted"] == 25_603
    gliomasolver_printed = 2.3475835715578407e07
    relative = abs(result["negative_log_likelihood"] - gliomasolver_printed) / gliomasolver_printed
    measured("-log L (ours, GliomaSolver's printed 2.3475835715578407e+07)", result["negative_log_likelihood"])
    measured("relative difference to GliomaSolver", f"{relative:.2e}")
    assert relative < 1e-9
