"""Treatment-response benchmark (issue 8): the learned classifier without and with synthetic balancing, and the
Bayesian route's coverage and class accuracy, on virtual patients drawn from the prior.

Run as ``python benchmarks/response.py [--quick] [--cases 400] [--patients 20] ...``. Two parts (``--skip-classifier``,
``--skip-bayes`` leave one out):

- classifier (:func:`personalize.response_classifier.balancing_experiment`): a cohort of ``--cases`` prior draws on
  ``--grid`` cells of ``--spacing`` mm under DENT's protocol from day 14 (both agents at level 1), labelled by
  ``--criteria`` 7 days after the first dose; trained on the natural imbalance, then with minority-class cases found
  among further draws (at most ``--max-extra``); per-class accuracy on the same held-out test set. The cohort is
  stored in ``--folder`` and reused by later runs of the same settings.
- Bayes: ``--patients`` virtual patients (vessel and noise seed p, truth drawn from the log-uniform prior with
  seed p, σ included), observed on ``--days`` under the same protocol on ``--fit-grid`` cells, fitted by TMCMC
  (``--samples``); ``coverage_90`` is the share of (patient, parameter) truths inside their 90 % intervals, and
  ``accuracy_bayes`` the share of evaluable patients whose most probable class from ``predict_response``
  (``--draws`` posterior draws) is the class of their simulated truth. With the default days (7, 14, 21) the last
  observation is the response horizon itself: the fit sees the outcome it then predicts.

The last line is one JSON object. The CEUS-CNN's published figures (Dimou et al.) are printed beside ours.

Measured (loaded 2-core machine). Classifier, default grid, 320 cases (RANO: 24 / 74 / 222 responsive / stable /
non-responsive), test 80 (3 / 22 / 55), width 16, 3 blocks, 60 epochs, patience 10, ``--max-extra 128`` (128 more
draws gave 10 responsive and 28 stable cases: far from balance): overall 0.725 → 0.688 (the majority baseline is
0.688), stable 0.18 → 0.00, responsive 0 → 0, non-responsive 0.98 → 1.00. The class is mostly the drug's kill rate,
invisible before treatment (:mod:`personalize.response_cohort`). Fully balanced on 21 × 21 cells of 0.5 mm, step
1/12 day (``--grid 21 --spacing 0.5 --step 0.0833 --max-extra 2000``): 400 cases (32 / 103 / 264, 1 not
evaluable), 1,664 extra draws giving 155 of each class in training, test 100: overall 0.66 → 0.64 (baseline 0.66),
responsive 0 → 0.125, stable 0 → 0, non-responsive 1.00 → 0.95; 942 s. Bayes, 20 patients on 21 × 21 cells of 0.5 mm, step
1/12 day (``--fit-grid 21 --fit-spacing 0.5 --fit-step 0.0833``), TMCMC with 64 samples and 2 chain steps, 2
workers (832 simulations and 103 s per fit on average): coverage_90 0.74 (r_n 0.70, D_n 0.85, d_r 0.80, α_mn 0.55,
σ 0.80: too narrow), accuracy_bayes 0.90 (18 of 20; days 7, 14, 21). The first 5 at ``--samples 256``: 25 of 25
covered, 5 of 5 classes (318–673 s per fit). Amortized NPE on the same grid, 2,000
simulations: coverage_90_npe 0.81 over 200 draws, TARP ATC −0.074 (too narrow), not calibrated.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from personalize.calibration import calibrate
from personalize.executors import local_executor
from personalize.npe import NPESettings, sequential_npe
from personalize.predictive.response import GROUPS
from personalize.predictive.schedules import NOT_EVALUABLE, predict_response
from personalize.response_classifier import ClassifierArchitecture, TrainingSettings, balancing_experiment
from personalize.response_cohort import COHORT_PARAMETERS, GROUP_NAMES, CohortDesign
from personalize.virtual_patient import (
    DEFAULT_BOUNDS,
    DEFAULT_GRID,
    DEFAULT_SPACING_MM,
    DEFAULT_TIME_STEP_DAYS,
    DEFAULT_TRUTH,
    NAMES,
    DensitySimulator,
    LogUniformPrior,
    NoisyMaps,
    SimulatedFeatures,
    VirtualPatientFitSettings,
    fit_virtual_patient,
    make_virtual_patient,
    map_features,
    protocol_schedule,
)

PUBLISHED = {"overall": (0.877, 0.930), "stable": (0.615, 0.769)}
"""Dimou et al.'s CEUS-CNN: accuracy without → with synthetic data."""


def classifier_part(args: argparse.Namespace) -> dict[str, object]:
    design = CohortDesign(seed=args.seed, criteria=args.criteria, grid=args.grid, spacing_mm=args.spacing,
                          max_time_step_days=args.step, chunk_size=args.chunk)
    settings = TrainingSettings(architecture=ClassifierArchitecture(width=args.width, blocks=args.blocks),
                                epochs=args.epochs, patience=args.patience, seed=args.seed)
    result = balancing_experiment(design, args.folder, args.cases, settings=settings, max_extra_cases=args.max_extra,
                                  workers=args.workers, progress=True)
    print(f"natural classes ({result.criteria}): {result.natural_counts}, NE {result.not_evaluable}; "
          f"test {result.test_counts}; minority {result.minority}, {result.extra_draws} extra draws", flush=True)
    out: dict[str, object] = {}
    for run in ("imbalanced", "balanced"):
        scores = getattr(result, run)
        print(f"{run}: trained on {scores.train_counts}, accuracy {scores.accuracy}", flush=True)
        for name, value in scores.accuracy.items():
            out[f"accuracy_{run}_{name}"] = value
    for name, (before, after) in PUBLISHED.items():
        print(f"{name}: ours {out[f'accuracy_imbalanced_{name}']} -> {out[f'accuracy_balanced_{name}']}, "
              f"CEUS-CNN {before} -> {after}", flush=True)
    return out | {"classifier": result.to_dict()}


def bayes_part(args: argparse.Namespace) -> dict[str, object]:
    prior = LogUniformPrior(DEFAULT_BOUNDS)
    settings = VirtualPatientFitSettings(n_samples=args.samples, chain_steps=args.chain_steps, workers=args.workers,
                                         max_time_step_days=args.fit_step)
    labeller = CohortDesign(criteria=args.criteria, grid=args.fit_grid, spacing_mm=args.fit_spacing,
                            max_time_step_days=args.fit_step)
    schedule = protocol_schedule()
    covered, correct, patients = [], [], []
    for p in range(args.patients):
        z = prior.sample_with(1, torch.Generator().manual_seed(args.seed + p))
        truth = dict(zip(prior.names, prior.to_physical(z)[0].tolist()))
        observation, full = make_virtual_patient(truth, days=args.days, schedule=schedule, seed=p, noise_seed=p,
                                                 grid=args.fit_grid, spacing_mm=args.fit_spacing,
                                                 max_time_step_days=args.fit_step)
        started = time.perf_counter()
        posterior = fit_virtual_patient(observation, "tmcmc", settings)
        fit_s = time.perf_counter() - started
        summary = posterior.summary()
        inside = {name: bool(summary[name]["q05"] <= full[name] <= summary[name]["q95"]) for name in NAMES}
        covered += inside.values()
        _, _, truth_class = labeller.simulate(p, {name: full[name] for name in COHORT_PARAMETERS})
        truth_group = GROUPS.get(truth_class, NOT_EVALUABLE)
        response = predict_response(posterior, observation, {"protocol": schedule}, n_draws=args.draws, seed=p,
                                    criteria=args.criteria, measurable_mm=labeller.measurable,
                                    max_time_step_days=args.fit_step)[0]
        predicted = max(response.group_probabilities, key=response.group_probabilities.get)
        if truth_group != NOT_EVALUABLE:
            correct.append(predicted == truth_group)
        patients.append({"patient": p, "truth": full, "covered": inside, "truth_class": truth_group,
                         "predicted": predicted, "group_probabilities": response.group_probabilities,
                         "fit_s": fit_s, "n_simulations": posterior.n_simulations})
        print(f"patient {p}: covered {sum(inside.values())}/{len(inside)} "
              f"(missed: {', '.join(n for n, ok in inside.items() if not ok) or 'none'}), truth {truth_group}, "
              f"predicted {predicted} {response.group_probabilities}, fit {fit_s:.0f} s "
              f"({posterior.n_simulations} simulations)", flush=True)
    return {"coverage_90": float(np.mean(covered)) if covered else None,
            "coverage_90_by_parameter": {name: float(np.mean([pt["covered"][name] for pt in patients]))
                                         for name in NAMES} if patients else {},
            "accuracy_bayes": float(np.mean(correct)) if correct else None,
            "bayes_evaluable_patients": len(correct), "bayes_patients": patients}


def npe_part(args: argparse.Namespace) -> dict[str, object]:
    """Amortized NPE (one round of sbi's MDN on prior draws, the maps' image moments) of one virtual patient's
    vessels (seed ``--npe-vessel-seed``) under the protocol, checked on ``--npe-checks`` fresh prior draws of θ
    and noise: the share of truths inside the 90 % intervals and SBC/TARP (:func:`personalize.calibration.calibrate`)."""
    prior = LogUniformPrior(DEFAULT_BOUNDS)
    observation, _ = make_virtual_patient(DEFAULT_TRUTH, days=args.days, schedule=protocol_schedule(),
                                          seed=args.npe_vessel_seed, grid=args.fit_grid, spacing_mm=args.fit_spacing,
                                          max_time_step_days=args.fit_step)
    simulator = DensitySimulator(observation.initial_state(), observation.schedule, observation.days, prior.names,
                                 max_time_step_days=args.fit_step)
    executor = local_executor(args.workers)
    try:
        features = SimulatedFeatures(NoisyMaps(simulator, args.seed), prior.coordinates, "moments", executor,
                                     args.chunk, progress=True)
        x_o = map_features("moments", torch.from_numpy(np.array(observation.maps))[None]).float()[0]
        started = time.perf_counter()
        npe = sequential_npe(prior, features, x_o, NPESettings(rounds=1, simulations=args.npe_simulations,
                                                               n_posterior=100, seed=args.seed), progress=True)
        train_s = time.perf_counter() - started
        calibration = calibrate(npe.posterior, prior, features, n_simulations=args.npe_checks,
                                n_posterior_samples=1000, seed=args.seed + 1, parameter_names=prior.names, c2st=False)
    finally:
        if executor is not None:
            executor.shutdown()
    n = calibration.n_posterior_samples
    inside = (calibration.ranks >= 0.05 * n) & (calibration.ranks <= 0.95 * n)
    by_parameter = dict(zip(prior.names, inside.mean(axis=0).tolist()))
    print(f"amortized NPE, {args.npe_simulations} simulations ({train_s:.0f} s): coverage_90 {inside.mean():.3f} over "
          f"{inside.shape[0]} draws {by_parameter}; SBC KS p {calibration.sbc_ks_pvalues.round(4).tolist()}, "
          f"TARP ATC {calibration.tarp_atc:+.4f}, calibrated {calibration.calibrated()}", flush=True)
    return {"coverage_90_npe": float(inside.mean()), "coverage_90_npe_by_parameter": by_parameter,
            "npe_sbc_ks_pvalues": dict(zip(prior.names, calibration.sbc_ks_pvalues.tolist())),
            "npe_tarp_atc": calibration.tarp_atc, "npe_calibrated": bool(calibration.calibrated()),
            "npe_checks": int(inside.shape[0]), "npe_simulations": int(npe.n_simulations), "npe_train_s": train_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings: 21 x 21 cells of 0.5 mm, step 1/12 "
                        "day, 96 cases, 2 patients of 32 samples, 30 epochs")
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--skip-bayes", action="store_true")
    parser.add_argument("--skip-npe", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--criteria", choices=("rano", "recist"), default="rano")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--folder", default="response-cohort", help="cohort folder (reused across runs)")
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--grid", type=int, default=DEFAULT_GRID)
    parser.add_argument("--spacing", type=float, default=DEFAULT_SPACING_MM)
    parser.add_argument("--step", type=float, default=DEFAULT_TIME_STEP_DAYS)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--max-extra", type=int, default=2000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--days", type=float, nargs="+", default=[7.0, 14.0, 21.0])
    parser.add_argument("--fit-grid", type=int, default=DEFAULT_GRID)
    parser.add_argument("--fit-spacing", type=float, default=DEFAULT_SPACING_MM)
    parser.add_argument("--fit-step", type=float, default=DEFAULT_TIME_STEP_DAYS)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--chain-steps", type=int, default=1)
    parser.add_argument("--draws", type=int, default=32, help="posterior draws for the class prediction")
    parser.add_argument("--npe-simulations", type=int, default=2000, help="amortized NPE's prior simulations")
    parser.add_argument("--npe-checks", type=int, default=200, help="fresh prior draws checking amortized NPE")
    parser.add_argument("--npe-vessel-seed", type=int, default=0, help="the vessels amortized NPE is trained on")
    args = parser.parse_args()
    if args.quick:
        for name, value in {"grid": 21, "spacing": 0.5, "step": 1 / 12, "fit_grid": 21, "fit_spacing": 0.5,
                            "fit_step": 1 / 12, "cases": 96, "max_extra": 96, "patients": 2, "samples": 32,
                            "epochs": 30, "draws": 16, "chunk": 8, "npe_simulations": 300,
                            "npe_checks": 40}.items():
            setattr(args, name, value)
    torch.set_num_threads(1)
    started = time.perf_counter()
    out: dict[str, object] = {"published_ceus_cnn": {f"accuracy_{run}_{name}": values[k] for name, values in
                                                     PUBLISHED.items() for k, run in enumerate(("imbalanced",
                                                                                                "balanced"))}}
    if not args.skip_classifier:
        out |= classifier_part(args)
    if not args.skip_bayes:
        out |= bayes_part(args)
    if not args.skip_npe:
        out |= npe_part(args)
    out["classes"] = list(GROUP_NAMES)
    out["wall_s"] = time.perf_counter() - started
    out["settings"] = vars(args)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
