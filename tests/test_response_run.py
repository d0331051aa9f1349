"""Specification of ``personalize predict-response``: a virtual patient made and fitted from the shell, its files
readable; bad observation files and bad candidates refused in one line with exit 2 and nothing written.

The end-to-end run is tiny (15 × 15 cells of 0.5 mm, a step of 2 hours, maps on days 4 and 8 around a treatment
from day 6, r_n and d_r free, TMCMC with 32 samples and one chain step, 6 draws per candidate): about 20 s on one
loaded core.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import arviz as az
import numpy as np
import pytest

from personalize.cli import EXIT_BAD_INPUT, main
from personalize.posterior import Posterior
from personalize.response_run import (
    candidate_start_day,
    default_candidates,
    fit_bounds,
    parse_candidate,
    parse_candidates,
    read_observation,
    schedule_toml,
    write_observation,
)
from personalize.virtual_patient import VirtualPatientObservation, make_virtual_patient, protocol_schedule
from simulators.treatment import Dose, Schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEDULE = """[[dose]]
day = 6.0
agent = "antiangiogenic"
amount = 1.0

[[dose]]
day = 7.0
agent = "chemotherapy"
amount = 1.0
"""
TINY_PATIENT = ["--grid", "15", "--spacing", "0.5", "--observed-days", "4", "8", "--time-step", "1/12"]
TINY_FIT = ["--time-step", "1/12", "--parameters", "r_n", "d_r", "--samples", "32", "--chain-steps", "1",
            "--draws", "6", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A virtual patient written by --make-virtual-patient."""
    folder = tmp_path_factory.mktemp("patient")
    (folder / "treatment.toml").write_text(SCHEDULE)
    assert main(["predict-response", "--make-virtual-patient", "sigma=0.1", "r_n=0.22", *TINY_PATIENT,
                 "--schedule", str(folder / "treatment.toml"), "--threads", "1", "--out", str(folder / "vp")]) == 0
    return folder / "vp"


@pytest.fixture(scope="module")
def run(made, tmp_path_factory) -> tuple[Path, str]:
    """The patient fitted and two candidates predicted (one from a schedule file)."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "strong.toml").write_text(schedule_toml(protocol_schedule(6.0, 1.0, 3.0)))
    out = folder / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["predict-response", "--observation", str(made / "observation.npz"), "--schedule",
                     str(made / "schedule.toml"), "--truth", str(made / "truth.json"), *TINY_FIT,
                     "--candidate", "none=6:0:0", "--candidate", f"strong={folder / 'strong.toml'}", "--out", str(out)])
    assert code == 0
    return out, printed.getvalue()


def test_made_patient_reads_back_as_it_was_made(made):
    observation = read_observation(made / "observation.npz", made / "schedule.toml")
    expected, truth = make_virtual_patient({"sigma": 0.1, "r_n": 0.22}, days=(4.0, 8.0),
                                           schedule=Schedule.from_toml(made / "schedule.toml"), grid=15,
                                           spacing_mm=0.5, max_time_step_days=1 / 12)
    assert np.array_equal(observation.maps, expected.maps) and observation.days == (4.0, 8.0)
    assert observation.spacing_mm == 0.5 and observation.seed == 0
    assert observation.schedule.doses == (Dose(6.0, "antiangiogenic", 1.0), Dose(7.0, "chemotherapy", 1.0))
    assert {name: entry["value"] for name, entry in json.loads((made / "truth.json").read_text()).items()} == truth


def test_predict_response_writes_a_readable_posterior_summary_and_figures(run, made):
    out, printed = run
    summary = json.loads((out / "summary.json").read_text())
    assert {"method", "simulator", "n_simulations", "wall_s", "log_evidence", "parameters", "observation",
            "settings", "candidates"} <= set(summary)
    assert summary["method"] == "tmcmc" and summary["n_simulations"] > 0
    assert list(summary["parameters"]) == ["r_n", "d_r", "sigma"]
    for name, entry in summary["parameters"].items():
        assert entry["q05"] <= entry["mean"] <= entry["q95"] and entry["unit"], name
        assert entry["truth"] == {"r_n": 0.22, "d_r": 0.5, "sigma": 0.1}[name]
        assert entry["covered"] == (entry["q05"] <= entry["truth"] <= entry["q95"])
    assert summary["observation"]["days"] == [4.0, 8.0] and summary["observation"]["grid"] == [15, 15]
    assert [c["label"] for c in summary["candidates"]] == ["none", "strong"]
    for candidate in summary["candidates"]:
        assert sum(candidate["class_probabilities"].values()) == pytest.approx(1.0)
        assert sum(candidate["group_probabilities"].values()) == pytest.approx(1.0)
        assert candidate["days"][0] == 6.0 and len(candidate["days"]) == 8 and candidate["n_draws"] == 6
        assert f"{candidate['class_probabilities']['SD']:.3f}" in printed
    assert summary["candidates"][1]["schedule"][-1] == {"day": 12.0, "agent": "chemotherapy", "amount": 3.0}
    data = az.from_netcdf(str(out / "posterior.nc"))
    assert data.posterior["d_r"].shape == (1, 32)
    posterior = Posterior.from_netcdf(out / "posterior.nc")
    assert posterior.parameter_names == ("r_n", "d_r", "sigma")
    assert posterior.summary()["r_n"]["q95"] == pytest.approx(summary["parameters"]["r_n"]["q95"])
    for figure in ("observation", "pairs", "response"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 10_000, figure
    assert not list(out.rglob(".partial-*"))


@pytest.fixture(scope="module")
def fitted(made, tmp_path_factory) -> Path:
    """The patient fitted alone, by ``personalize fit --model microenvironment``."""
    out = tmp_path_factory.mktemp("fit") / "fit"
    fit_args = [arg for arg in TINY_FIT if arg not in ("--draws", "6")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["fit", "--model", "microenvironment", "--observation", str(made / "observation.npz"),
                     "--schedule", str(made / "schedule.toml"), "--truth", str(made / "truth.json"), *fit_args,
                     "--out", str(out)]) == 0
    return out


def test_fit_by_model_name_writes_the_fit_and_a_checkpoint_per_stage(fitted, run):
    summary = json.loads((fitted / "summary.json").read_text())
    assert summary["simulator"] == "microenvironment" and summary["method"] == "tmcmc"
    assert "candidates" not in summary and list(summary["parameters"]) == ["r_n", "d_r", "sigma"]
    posterior = Posterior.from_netcdf(fitted / "posterior.nc")
    assert posterior.n_simulations == summary["n_simulations"] > 0
    assert len(list((fitted / "checkpoint").glob("stage_*.pt"))) == len(posterior.stages)
    for figure in ("observation", "pairs"):
        assert (fitted / "figures" / f"{figure}.png").stat().st_size > 10_000, figure
    # the same observation, engine, seed and settings as predict-response's own fit: the same posterior
    predicted = json.loads((run[0] / "summary.json").read_text())
    assert summary["parameters"] == predicted["parameters"]


def test_predictions_from_a_fit_folder_reuse_its_posterior_without_fitting_again(fitted, made, tmp_path):
    out = tmp_path / "predicted"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["predict-response", "--fit", str(fitted), "--observation", str(made / "observation.npz"),
                     "--schedule", str(made / "schedule.toml"), "--candidate", "none=6:0:0", "--draws", "4",
                     "--threads", "1", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    fit_summary = json.loads((fitted / "summary.json").read_text())
    assert summary["settings"]["fitted_before"] and summary["n_simulations"] == fit_summary["n_simulations"]
    assert summary["settings"]["fit"]["max_time_step_days"] == pytest.approx(1 / 12)  # the fit's, not the default
    assert Posterior.from_netcdf(out / "posterior.nc").samples.tolist() == \
        Posterior.from_netcdf(fitted / "posterior.nc").samples.tolist()
    assert [c["n_draws"] for c in summary["candidates"]] == [4]


def test_a_fit_of_other_maps_or_another_schedule_or_model_is_refused(fitted, made, tmp_path, capsys):
    other, _ = make_virtual_patient({"sigma": 0.1, "r_n": 0.3}, days=(4.0, 8.0),
                                    schedule=Schedule.from_toml(made / "schedule.toml"), grid=15, spacing_mm=0.5,
                                    max_time_step_days=1 / 12)
    write_observation(other, tmp_path / "other.npz")
    (tmp_path / "stronger.toml").write_text(schedule_toml(protocol_schedule(6.0, 2.0, 2.0)))
    out = tmp_path / "never"
    observation, schedule = str(made / "observation.npz"), str(made / "schedule.toml")
    for args, problem in (
            (["predict-response", "--fit", str(fitted), "--observation", str(tmp_path / "other.npz"), "--schedule",
              schedule], "fitted another observation (maps_sha256 differ)"),
            (["predict-response", "--fit", str(fitted), "--observation", observation, "--schedule",
              str(tmp_path / "stronger.toml")], "fitted another observation (schedule differ)"),
            (["predict-response", "--fit", str(fitted), "--observation", observation, "--schedule", schedule,
              "--time-step", "1/24"], "differs from the fit's 1/12"),
            (["predict-response", "--fit", str(fitted), "--observation", observation, "--schedule", schedule,
              "--samples", "8"], "--samples apply to a fit, not to predictions from --fit"),
            (["predict-response", "--fit", str(tmp_path), "--observation", observation, "--schedule", schedule],
             "not a fit folder (summary.json missing)"),
            (["fit", "--model", "microenvironment", "--observation", observation, "--schedule", schedule,
              "--spacing", "3.5"], "--spacing apply to --model fisher-kolmogorov only"),
            (["fit", "--t1gd", "t1gd.nii.gz", "--flair", "flair.nii.gz", "--observation", observation],
             "--observation apply to --model microenvironment only"),
            (["fit", "--model", "microenvironment"], "needs --observation FILE.npz and --schedule FILE.toml"),
            (["fit"], "--model fisher-kolmogorov needs --t1gd and --flair")):
        assert main([*args, "--threads", "1", "--quiet", "--out", str(out)]) == EXIT_BAD_INPUT, args
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and problem in error, (args, error)
        assert not out.exists()


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


GOOD = {"days": np.array([4.0, 8.0]), "maps": np.zeros((2, 5, 5)), "spacing_mm": np.float64(0.5),
        "seed": np.int64(0)}


@pytest.mark.parametrize(
    "arrays, problem",
    [({k: v for k, v in GOOD.items() if k != "seed"}, "missing seed"),
     ({**GOOD, "maps": np.zeros((5, 5))}, "maps must be numbers of shape [days, X, Y]"),
     ({**GOOD, "maps": np.zeros((3, 5, 5))}, "one map per day (2)"),
     ({**GOOD, "maps": np.full((2, 5, 5), 2.0)}, "densities in [0, 1]"),
     ({**GOOD, "days": np.array([8.0, 4.0])}, "strictly increasing"),
     ({**GOOD, "seed": np.float64(1.5)}, "seed must be an integer"),
     ({**GOOD, "spacing_mm": np.array([0.5, 0.5])}, "spacing_mm must be a number"),
     ("not an archive", "not a readable .npz"),
     (None, "file not found")],
    ids=["missing-key", "2d-maps", "days-mismatch", "out-of-range", "days-order", "float-seed", "vector-spacing",
         "not-npz", "missing-file"],
)
def test_a_bad_observation_file_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, arrays, problem):
    path = tmp_path / "observation.npz"
    if isinstance(arrays, dict):
        write_npz(path, **arrays)
    elif arrays is not None:
        path.write_text(arrays)
    (tmp_path / "schedule.toml").write_text(SCHEDULE)
    out = tmp_path / "never"
    code = main(["predict-response", "--observation", str(path), "--schedule", str(tmp_path / "schedule.toml"),
                 *TINY_FIT, "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT
    assert len(error.splitlines()) == 1 and str(path) in error and problem in error, error
    assert not out.exists()


def test_candidates_parse_as_dent_protocols_or_schedule_files(tmp_path):
    label, schedule = parse_candidate("high dose=14:2:3")
    assert label == "high dose" and schedule == protocol_schedule(14.0, 2.0, 3.0)
    assert [dose.day for dose in schedule.doses] == [14.0, 16.0, 16.0, 18.0, 18.0, 20.0, 20.0]
    (tmp_path / "plan.toml").write_text(SCHEDULE)
    assert parse_candidate(f"plan={tmp_path / 'plan.toml'}") == ("plan", Schedule.from_toml(tmp_path / "plan.toml"))
    assert list(parse_candidates(["a=1:0:0", "b=2:1:1"])) == ["a", "b"]


@pytest.mark.parametrize(
    "item, problem",
    [("high", "must read LABEL=START_DAY:ANTIANGIOGENIC:CHEMOTHERAPY"),
     ("=14:1:1", "must read LABEL="),
     ("high=14:2", "must read LABEL="),
     ("high=a:b:c", "must be numbers"),
     ("high=14:-1:1", "finite and non-negative"),
     ("high=14:inf:1", "finite and non-negative")],
)
def test_a_bad_candidate_is_refused_with_its_syntax(item, problem):
    with pytest.raises(ValueError, match=problem.replace("[", r"\[")):
        parse_candidate(item)


def test_bad_candidates_and_misplaced_options_are_one_line_errors_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    for args, problem in (
            (["--observation", "missing.npz", "--schedule", "missing.toml", "--candidate", "bad=1:2"],
             "--candidate 'bad=1:2' must read LABEL=START_DAY:ANTIANGIOGENIC:CHEMOTHERAPY"),
            (["--observation", "o.npz", "--schedule", "s.toml", "--candidate", "a=1:1:1", "--candidate", "a=2:1:1"],
             "given twice"),
            (["--observation", "o.npz", "--schedule", "s.toml", "--grid", "15"], "--grid apply to "
                                                                                  "--make-virtual-patient only"),
            (["--make-virtual-patient", "--candidate", "a=1:1:1"], "--candidate apply to a fit"),
            (["--make-virtual-patient", "rho=0.1"], "parameter names must be distinct, among r_n"),
            (["--make-virtual-patient", "sigma"], "--make-virtual-patient expects NAME=VALUE"),
            (["--schedule", "s.toml"], "give --observation FILE.npz and --schedule FILE.toml")):
        assert main(["predict-response", *args, "--threads", "1", "--quiet", "--out", str(out)]) == EXIT_BAD_INPUT
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and problem in error, (args, error)
        assert not out.exists()


def test_default_candidates_start_at_the_first_dose_or_after_the_last_scan():
    maps = np.zeros((2, 5, 5))
    treated = VirtualPatientObservation((4.0, 8.0), maps, 0.5, 0, protocol_schedule(6.0))
    untreated = VirtualPatientObservation((4.0, 8.0), maps, 0.5, 0, Schedule())
    assert candidate_start_day(treated) == 6.0 and candidate_start_day(untreated) == 8.0
    candidates = default_candidates(untreated)
    assert list(candidates) == ["untreated", "level-1", "level-2"]
    assert candidates["level-2"] == protocol_schedule(8.0, 2.0, 2.0)
    assert all(dose.amount == 0 for dose in candidates["untreated"].doses) and candidates["untreated"].doses


def test_schedule_toml_reads_back_unchanged(tmp_path):
    for schedule in (Schedule(), protocol_schedule(14.0, 1.5, 1e-5)):
        (tmp_path / "s.toml").write_text(schedule_toml(schedule))
        assert Schedule.from_toml(tmp_path / "s.toml") == schedule


def test_fit_bounds_always_infer_the_noise():
    assert list(fit_bounds(["d_r"])) == ["d_r", "sigma"]
    with pytest.raises(ValueError, match="at least one"):
        fit_bounds(["sigma"])
