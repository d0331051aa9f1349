"""Every tutorial runs to the end with its small settings, as a user would run it, and writes what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.py"))


def check_fit_synthetic_patient(out: Path, stdout: str) -> None:
    summaries = list(out.rglob("summary.json"))
    assert summaries, "the tutorial wrote no fit"
    summary = json.loads(summaries[0].read_text())
    assert summary["n_simulations"] > 0 and "mu_1" in summary["parameters"]


def check_lmi(out: Path, stdout: str) -> None:
    for name in ("data/manifest.json", "weights/lmi_network.pt", "patient/truth.json", "fit/summary.json",
                 "fit/map_density.nii.gz", "fit/figures/map_slices.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "fit" / "summary.json").read_text())
    truth = {name: entry["value"] for name, entry in json.loads((out / "patient" / "truth.json").read_text()).items()}
    assert summary["method"] == "lmi"
    for name in ("mu_1", "mu_2", "x", "y", "z"):  # the printed estimates are the written ones
        assert f"{name:<10}{truth[name]:>10.3f}{summary['parameters'][name]['map']:>10.3f}" in stdout, name
    quality = summary["map_fit"]
    assert f"T1Gd {quality['dice_t1gd']:.3f}, FLAIR {quality['dice_flair']:.3f}" in stdout
    assert "Dice u=0.01" in stdout and "trained 3 epochs" in stdout


def check_microenvironment_treatment(out: Path, stdout: str) -> None:
    record = json.loads((out / "comparison.json").read_text())
    final = {name: arm["measures"][-1] for name, arm in record["arms"].items()}
    assert set(final) == {"untreated", "anti-angiogenic", "combined"}
    for name, measures in final.items():
        assert f"{measures['tumour_burden_mm2']:.3f}" in stdout, name  # the printed numbers are the measured ones
    assert final["combined"]["tumour_burden_mm2"] < final["untreated"]["tumour_burden_mm2"]
    assert final["anti-angiogenic"]["core_vessel_density"] < final["untreated"]["core_vessel_density"]
    assert final["untreated"]["rim_drug"] == 0 and final["combined"]["rim_drug"] > final["combined"]["core_drug"]
    assert (out / "comparison.png").stat().st_size > 10_000


def check_tmcmc_vs_npe(out: Path, stdout: str) -> None:
    record = json.loads((out / "comparison" / "comparison.json").read_text())
    assert [run["method"] for run in record["runs"]] == ["tmcmc", "npe-mdn"]
    pair = record["pairs"][0]
    assert f"C2ST {pair['c2st']:.3f}" in stdout  # the printed figure is the measured one
    assert (out / "comparison" / "figures" / "pairs.png").is_file()


def check_treatment_response(out: Path, stdout: str) -> None:
    record = json.loads((out / "summary.json").read_text())
    for name, entry in record["parameters"].items():
        assert entry["covered"], (name, entry)  # the quick posterior covers the truth
    responses = {candidate["label"]: candidate for candidate in record["candidates"]}
    assert list(responses) == ["untreated", "dent", "chemo-3"]
    for label, response in responses.items():
        probabilities = response["class_probabilities"]
        assert sum(probabilities.values()) == pytest.approx(1.0), label
        printed = "".join(f"{probabilities[name]:>7.3f}" for name in ("CR", "PR", "SD", "PD", "NE"))
        assert f"{label:<11}{printed}" in stdout  # the printed probabilities are the measured ones
    responsive = {label: r["group_probabilities"]["responsive"] for label, r in responses.items()}
    assert responsive["chemo-3"] > responsive["untreated"]
    final = {label: r["tumour_area_mm2"]["q50"][-1] for label, r in responses.items()}
    assert final["chemo-3"] < final["dent"] < final["untreated"]
    assert (out / "patient" / "observation.npz").is_file() and (out / "figures" / "response.png").is_file()


def check_surrogate(out: Path, stdout: str) -> None:
    for name in ("data/manifest.json", "weights/surrogate.pt", "weights/surrogate.json", "fit/summary.json",
                 "fit/posterior.nc"):
        assert (out / name).is_file(), name
    record = json.loads((out / "weights" / "surrogate.json").read_text())
    assert "Dice u=0.2" in stdout and "trained 3 epochs" in stdout and record["test_metrics"]["samples"] > 0
    summary = json.loads((out / "fit" / "summary.json").read_text())
    assert summary["simulator"] == "geometry_aware_surrogate"
    assert summary["simulator_record"]["sha256"] == record["sha256"]
    assert f"{summary['n_simulations']} simulations" in stdout  # the printed figures are the written ones


CHECKS = {"fit_synthetic_patient": check_fit_synthetic_patient, "tmcmc_vs_npe": check_tmcmc_vs_npe, "lmi": check_lmi,
          "microenvironment_treatment": check_microenvironment_treatment,
          "treatment_response": check_treatment_response, "surrogate": check_surrogate}


@pytest.mark.parametrize("tutorial", TUTORIALS, ids=lambda path: path.stem)
def test_tutorial_runs_with_quick_settings(tutorial, tmp_path):
    assert tutorial.stem in CHECKS, f"add a check of what {tutorial.name} writes to CHECKS"
    completed = subprocess.run([sys.executable, str(tutorial), "--quick", "--out", str(tmp_path)],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    CHECKS[tutorial.stem](tmp_path, completed.stdout)
