"""Specification of the `personalize` command: outputs overlay the inputs; bad input gives one line, exit 2,
and no output."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import phantom
from personalize.cli import EXIT_BAD_INPUT, main

LPS_AFFINE = np.array([[-3.0, 0, 0, 48.0], [0, -3.0, 0, 40.0], [0, 0, 3.0, -45.0], [0, 0, 0, 1]])


@pytest.fixture
def patient(tmp_path: Path) -> dict[str, Path]:
    """A phantom patient's tissue maps and masks, stored in LPS orientation with 3 mm voxels."""
    anatomy = phantom(32, 3.0)
    files = {}
    for name, array in (("wm", anatomy.wm), ("gm", anatomy.gm), ("csf", anatomy.csf)):
        files[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array[::-1, ::-1, :].copy(), LPS_AFFINE), files[name])
    tumour = np.zeros((32, 32, 32), np.float32)
    tumour[14:18, 14:18, 14:18] = 1
    for name in ("t1gd", "flair"):
        files[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(tumour, LPS_AFFINE), files[name])
    return files


def simulate_args(files: dict[str, Path], out: Path, **overrides: str) -> list[str]:
    values = {"D_w": "0.3", "rho": "0.05", "T": "150", "x": "0", "y": "0", "z": "0"} | overrides
    args = ["simulate", "--wm", str(files["wm"]), "--gm", str(files["gm"]), "--out", str(out), "--quiet"]
    for name, value in values.items():
        args += [f"--{name}", value]
    return args


def test_simulate_writes_density_on_the_input_grid_with_the_input_affine(patient, tmp_path):
    out = tmp_path / "run"
    assert main(simulate_args(patient, out)) == 0
    density = nib.load(out / "density.nii.gz")
    assert density.shape == (32, 32, 32)
    np.testing.assert_allclose(density.affine, LPS_AFFINE)
    values = np.asarray(density.dataobj)
    seed_voxel = np.round(np.linalg.inv(LPS_AFFINE) @ [0, 0, 0, 1]).astype(int)[:3]
    assert values[tuple(seed_voxel)] > 0.5
    assert values.min() >= 0 and values.max() <= 1
    assert (out / "density.png").stat().st_size > 10_000
    record = json.loads((out / "simulation.json").read_text())
    assert record["parameters"]["D_w"] == pytest.approx(0.3) and record["units"]["D_w"] == "mm^2/day"


def test_simulate_at_another_spacing_still_writes_on_the_input_grid(patient, tmp_path):
    out = tmp_path / "coarse"
    assert main(simulate_args(patient, out) + ["--spacing", "6"]) == 0
    density = nib.load(out / "density.nii.gz")
    assert density.shape == (32, 32, 32)
    np.testing.assert_allclose(density.affine, LPS_AFFINE)
    assert float(np.asarray(density.dataobj).max()) > 0.5


def truncated(path: Path, tmp_path: Path) -> Path:
    data = path.read_bytes()
    broken = tmp_path / "truncated.nii.gz"
    broken.write_bytes(data[: int(len(data) * 0.6)])
    return broken


def four_d(path: Path, tmp_path: Path) -> Path:
    image = nib.load(path)
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([np.asarray(image.dataobj)] * 3, axis=-1), image.affine), series)
    return series


def other_shape(path: Path, tmp_path: Path) -> Path:
    image = nib.load(path)
    smaller = tmp_path / "smaller.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:-2], image.affine), smaller)
    return smaller


def other_affine(path: Path, tmp_path: Path) -> Path:
    image = nib.load(path)
    moved = tmp_path / "moved.nii.gz"
    affine = image.affine.copy()
    affine[0, 3] += 5
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), moved)
    return moved


def negative_spacing(path: Path, tmp_path: Path) -> Path:
    source = nib.load(path)
    image = nib.Nifti1Image(np.asarray(source.dataobj), source.affine)
    image.header["pixdim"][1] = -3.0
    bad = tmp_path / "negative.nii.gz"
    nib.save(image, bad)
    with gzip.open(bad) as stream:  # nibabel may rewrite pixdim on save: make sure the file is bad
        header = nib.Nifti1Header.from_fileobj(stream, check=False)
    assert header["pixdim"][1] < 0
    return bad


@pytest.mark.parametrize(
    "corrupt, problem",
    [
        (lambda path, tmp: tmp / "missing.nii.gz", "not found"),
        (truncated, "truncated"),
        (four_d, "4D"),
        (other_shape, "shape"),
        (other_affine, "affine"),
        (negative_spacing, "spacing"),
    ],
    ids=["missing", "truncated-gzip", "4d-series", "shape-mismatch", "affine-mismatch", "negative-spacing"],
)
def test_simulate_refuses_a_bad_tissue_file_in_one_line_without_output(patient, tmp_path, capsys, corrupt, problem):
    bad = corrupt(patient["gm"], tmp_path)
    files = patient | {"gm": bad}
    out = tmp_path / "never"
    assert main(simulate_args(files, out)) == EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert str(bad) in error and problem.lower() in error.lower(), error
    assert not out.exists()


@pytest.mark.parametrize(
    "overrides, problem",
    [({"D_w": "-0.1"}, "D_w"), ({"x": "500"}, "no tissue")],
    ids=["negative-diffusivity", "seed-outside-tissue"],
)
def test_simulate_refuses_bad_parameters_in_one_line_without_output(patient, tmp_path, capsys, overrides, problem):
    out = tmp_path / "never"
    assert main(simulate_args(patient, out, **overrides)) == EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and problem in error, error
    assert not out.exists()


def test_inspect_summarises_a_valid_observation(patient, capsys):
    assert main(["inspect", "--t1gd", str(patient["t1gd"]), "--flair", str(patient["flair"])]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["t1gd"]["voxels"] == 64


def write_like_mask(reference: Path, array: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array.astype(np.float32), nib.load(reference).affine), path)
    return path


@pytest.mark.parametrize("case", ["empty-mask", "labels-without-convention", "nan-in-pet"])
def test_inspect_refuses_bad_segmentations_in_one_line(patient, tmp_path, capsys, case):
    t1gd, flair, pet = patient["t1gd"], patient["flair"], None
    if case == "empty-mask":
        t1gd = write_like_mask(t1gd, np.zeros((32, 32, 32)), tmp_path / "empty.nii.gz")
        expected = t1gd
    elif case == "labels-without-convention":
        labels = np.asarray(nib.load(flair).dataobj) * 2
        flair = write_like_mask(flair, labels, tmp_path / "labels.nii.gz")
        expected = flair
    else:
        values = np.asarray(nib.load(flair).dataobj).copy()
        values[0, 0, 0] = np.nan
        pet = write_like_mask(flair, values, tmp_path / "pet.nii.gz")
        expected = pet
    args = ["inspect", "--t1gd", str(t1gd), "--flair", str(flair)] + (["--pet", str(pet)] if pet else [])
    assert main(args) == EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(expected) in error, error


def test_outputs_are_readable_by_others_as_the_umask_allows(patient, tmp_path):
    out = tmp_path / "shared"
    previous = os.umask(0o022)
    try:
        assert main(simulate_args(patient, out)) == 0
    finally:
        os.umask(previous)
    for name in ("density.nii.gz", "density.png", "simulation.json"):
        assert (out / name).stat().st_mode & 0o044 == 0o044, name


SCHEDULE = ('[[dose]]\nday = 8.0\nagent = "antiangiogenic"\namount = 1.0\n\n'
            '[[dose]]\nday = 8.5\nagent = "chemotherapy"\namount = 1.0\n')


def microenvironment_args(schedule: Path, out: Path, *extra: str) -> list[str]:
    """A small, short run: 31 x 31 cells of 0.2 mm, grown to day 8 (the first dose), recorded to day 9."""
    return ["simulate", "--model", "microenvironment", "--schedule", str(schedule), "--grid", "31", "--spacing",
            "0.2", "--days", "1", "--output-every", "1/2", "--seed", "3", "--quiet", "--out", str(out), *extra]


def test_simulate_microenvironment_writes_the_trajectory_its_summary_and_a_figure(tmp_path, capsys):
    schedule = tmp_path / "schedule.toml"
    schedule.write_text(SCHEDULE)
    out = tmp_path / "run"
    assert main(microenvironment_args(schedule, out)) == 0
    assert "trajectory.npz" in capsys.readouterr().out
    with np.load(out / "trajectory.npz") as stored:
        np.testing.assert_allclose(stored["times"], [8.0, 8.5, 9.0])
        for name in ("n", "m", "P", "A", "d"):
            assert stored[name].shape == (3, 31, 31) and stored[name].dtype == np.float32, name
        assert float(stored["spacing_mm"]) == 0.2 and int(stored["seed"]) == 3
        doses = json.loads(str(stored["schedule"]))["doses"]
        n, A, d = stored["n"], stored["A"], stored["d"]
    assert doses == [{"day": 8.0, "agent": "antiangiogenic", "amount": 1.0},
                     {"day": 8.5, "agent": "chemotherapy", "amount": 1.0}]
    assert A[0].max() > 0 and d[0].max() == 0 and d[1].max() > 0  # the recording starts at the first dose
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grid"] == [31, 31] and summary["seed"] == 3 and summary["start_day"] == 8.0
    assert summary["schedule"] == doses and len(summary["outputs"]) == 3
    burden = [entry["tumour_burden_mm2"] for entry in summary["outputs"]]
    np.testing.assert_allclose(burden, n.sum(axis=(1, 2), dtype=np.float64) * 0.2**2, rtol=1e-5)
    last = summary["outputs"][-1]
    assert last["day"] == 9.0 and last["max_drug"] == pytest.approx(float(d[-1].max()), rel=1e-5)
    assert 0.5 < last["tumour_cell_density"] <= 1 and last["core_pressure"] > 0
    assert (out / "figures" / "microenvironment.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "text, problem",
    [("day = = 1\n", "not valid TOML"),
     ('[[dose]]\nday = 1\nagent = "radiotherapy"\namount = 1\n', "unknown agent"),
     ('[[dose]]\nday = 1\nagent = "chemotherapy"\n', "missing amount"),
     (None, "not found")],
    ids=["not-toml", "unknown-agent", "missing-amount", "missing-file"],
)
def test_simulate_microenvironment_refuses_a_bad_schedule_in_one_line_without_output(tmp_path, capsys, text, problem):
    schedule = tmp_path / "bad.toml"
    if text is not None:
        schedule.write_text(text)
    out = tmp_path / "never"
    assert main(microenvironment_args(schedule, out)) == EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(schedule) in error and problem in error, error
    assert not out.exists()


@pytest.mark.parametrize(
    "args, problem",
    [(["--model", "microenvironment"], "needs --schedule"),
     (["--model", "microenvironment", "--schedule", "s.toml", "--D_w", "0.1"], "--D_w apply to --model "
                                                                              "fisher-kolmogorov only"),
     (["--atlas", "--D_w", "0.1", "--rho", "0.02"], "needs --T, --x, --y, --z"),
     (["--atlas", "--D_w", "0.1", "--rho", "0.02", "--T", "100", "--x", "0", "--y", "0", "--z", "0",
       "--schedule", "s.toml"], "--schedule apply to --model microenvironment only"),
     (["--atlas", "--D_w", "0.1", "--rho", "0.02", "--T", "100", "--x", "0", "--y", "0", "--z", "0",
       "--seed", "7"], "one of gliomasolver, tumorgrowthtoolkit")],
    ids=["no-schedule", "fk-option-for-microenvironment", "fk-parameters-missing", "schedule-for-fk", "fk-seed"],
)
def test_simulate_options_of_the_other_model_or_missing_ones_are_one_line_errors(tmp_path, capsys, args, problem):
    out = tmp_path / "never"
    assert main(["simulate", *args, "--quiet", "--out", str(out)]) == EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and problem in error, error
    assert not out.exists()
