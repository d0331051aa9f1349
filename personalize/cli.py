"""The ``personalize`` command: argument parsing only; the work lives in the modules it calls.

Exit codes: 0 success, 2 unusable input (one line on stderr naming the file or argument and the problem;
nothing written), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from likelihoods.imaging import MASK_MODELS
from personalize.embedding import EMBEDDINGS
from personalize.fit import ENGINES, METHODS, SIMULATORS, FitSettings
from personalize.npe import ESTIMATORS
from personalize.tmcmc import StageLimitReached
from personalize.virtual_patient import DEFAULT_TIME_STEP_DAYS, PARAMETER_FIELDS, VirtualPatientFitSettings
from simulators.fisher_kolmogorov import FisherKolmogorov
from simulators.nifti import NiftiError
from simulators.seed import PRESETS
from simulators.stencil import set_threads

EXIT_BAD_INPUT = 2
SIMULATE_MODELS = ("fisher-kolmogorov", "microenvironment")
_FK_ONLY = {"atlas": "--atlas", "wm": "--wm", "gm": "--gm", "csf": "--csf", "D_w": "--D_w", "rho": "--rho",
            "T": "--T", "x": "--x", "y": "--y", "z": "--z", "gm_ratio": "--gm-ratio", "seed_width": "--seed-width",
            "seed_amplitude": "--seed-amplitude", "device": "--device"}
_MAKE_ONLY = {"grid": "--grid", "spacing": "--spacing", "observed_days": "--observed-days",
              "patient_seed": "--patient-seed"}
_FIT_ONLY = {"observation": "--observation", "truth": "--truth", "candidate": "--candidate", "fit": "--fit"}
_FIT_FK_ONLY = {"t1gd": "--t1gd", "flair": "--flair", "pet": "--pet", "labels": "--labels", "wm": "--wm", "gm": "--gm",
                "csf": "--csf", "convention": "--convention", "embedding": "--embedding",
                "scan_masks": "--scan-masks", "pool": "--pool", "bound": "--bound", "priors": "--priors",
                "seed_margin": "--seed-margin", "spacing": "--spacing", "margin": "--margin", "device": "--device",
                "predictive": "--predictive", "threshold": "--threshold", "weights": "--weights", "refine": "--refine",
                "simulator": "--simulator", "surrogate_weights": "--surrogate-weights"}
_FIT_ENGINE_ONLY = {"pet": "--pet", "convention": "--convention", "samples": "--samples",
                    "chain_steps": "--chain-steps", "max_stages": "--max-stages", "estimator": "--estimator",
                    "rounds": "--rounds", "simulations": "--simulations", "npe_draws": "--npe-draws",
                    "max_epochs": "--max-epochs", "embedding": "--embedding", "scan_masks": "--scan-masks",
                    "pool": "--pool", "bound": "--bound", "priors": "--priors", "seed_margin": "--seed-margin",
                    "resume": "--resume", "spacing": "--spacing", "margin": "--margin", "workers": "--workers",
                    "chunk_size": "--chunk-size", "device": "--device", "predictive": "--predictive",
                    "threshold": "--threshold", "truth": "--truth"}
"""Options of the sampling engines (tmcmc, npe) that ``fit --method lmi`` refuses without ``--refine``: it samples
nothing."""
_FIT_MICROENVIRONMENT_ONLY = {"observation": "--observation", "schedule": "--schedule", "parameters": "--parameters",
                              "time_step": "--time-step"}
_PREDICT_FIT_OPTIONS = {"method": "--method", "parameters": "--parameters", "samples": "--samples",
                        "chain_steps": "--chain-steps", "rounds": "--rounds", "simulations": "--simulations",
                        "max_epochs": "--max-epochs"}
_MICROENVIRONMENT_ONLY = {"schedule": "--schedule", "days": "--days", "grid": "--grid",
                          "output_every": "--output-every", "start_day": "--start-day"}


def _days(text: str) -> float:
    """A number of days, or a fraction such as ``1/48`` (30 minutes) that divides a span exactly."""
    numerator, slash, denominator = text.partition("/")
    try:
        value = float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected days as a number or a fraction like 1/48, got {text!r}") from None
    return value


def _days_text(value: float) -> str:
    """``value`` as :func:`_days` reads it back exactly: ``1/12`` for a twelfth of a day, else Python's repr."""
    inverse = 1.0 / value if value > 0 else 0.0
    return f"1/{round(inverse)}" if inverse > 1 and 1.0 / round(inverse) == value else repr(value)


def _refuse_other_models_options(args: argparse.Namespace, options: dict[str, str], model: str) -> None:
    given = [flag for dest, flag in options.items() if getattr(args, dest) not in (None, False)]
    if given:
        other = next(name for name in SIMULATE_MODELS if name != model)
        raise ValueError(f"{', '.join(given)} apply to --model {other} only")


def _simulate(args: argparse.Namespace) -> None:
    if args.model == "microenvironment":
        _simulate_microenvironment(args)
    else:
        _simulate_fisher_kolmogorov(args)


def _simulate_fisher_kolmogorov(args: argparse.Namespace) -> None:
    from personalize.simulate import TissueFiles, run_simulation

    _refuse_other_models_options(args, _MICROENVIRONMENT_ONLY, "fisher-kolmogorov")
    missing = [flag for flag in ("--D_w", "--rho", "--T", "--x", "--y", "--z") if getattr(args, flag[2:]) is None]
    if missing:
        raise ValueError(f"--model fisher-kolmogorov needs {', '.join(missing)}")
    if args.atlas == bool(args.wm or args.gm):
        raise ValueError("give either --atlas or both --wm and --gm")
    if bool(args.wm) != bool(args.gm):
        raise ValueError("--wm and --gm go together")
    if args.seed is not None and args.seed not in PRESETS:
        raise ValueError(f"--seed for --model fisher-kolmogorov is one of {', '.join(sorted(PRESETS))}, "
                         f"got {args.seed!r}")
    tissue = None if args.atlas else TissueFiles(Path(args.wm), Path(args.gm), Path(args.csf) if args.csf else None)
    spacing = args.spacing if args.spacing is not None else (2.0 if args.atlas else None)
    seed = PRESETS[args.seed or "tumorgrowthtoolkit"]
    if args.seed_width is not None or args.seed_amplitude is not None:
        seed = replace(seed, width_mm=args.seed_width or seed.width_mm,
                       amplitude=args.seed_amplitude or seed.amplitude)
    gm_ratio = FisherKolmogorov.gm_ratio if args.gm_ratio is None else args.gm_ratio
    simulator = FisherKolmogorov(gm_ratio=gm_ratio, seed=seed)
    parameters = {"D_w": args.D_w, "rho": args.rho, "T": args.T, "x": args.x, "y": args.y, "z": args.z}
    record = run_simulation(parameters, args.out, tissue=tissue, spacing_mm=spacing, simulator=simulator,
                            device=args.device or "cpu", progress=not args.quiet)
    print(f"wrote {record.density} and {record.figure}: {record.steps} steps in {record.wall_s:.2f} s; "
          + ", ".join(f"{v:.1f} mL above u={t}" for t, v in record.volume_ml_above.items()))


def _simulate_microenvironment(args: argparse.Namespace) -> None:
    from personalize.microenvironment_run import DEFAULT_OUTPUT_EVERY_DAYS, run_microenvironment
    from simulators.microenvironment import DEFAULT_SPACING_MM
    from simulators.treatment import Schedule

    _refuse_other_models_options(args, _FK_ONLY, "microenvironment")
    if args.schedule is None:
        raise ValueError("--model microenvironment needs --schedule FILE.toml ('dose = []' for no treatment)")
    try:
        seed = 0 if args.seed is None else int(args.seed)
    except ValueError:
        raise ValueError(f"--seed for --model microenvironment is a non-negative integer (the virtual patient), "
                         f"got {args.seed!r}") from None
    schedule = Schedule.from_toml(args.schedule)
    record = run_microenvironment(
        schedule, args.out, grid=151 if args.grid is None else args.grid,
        spacing_mm=DEFAULT_SPACING_MM if args.spacing is None else args.spacing, seed=seed,
        start_day=args.start_day, days=7.0 if args.days is None else args.days,
        output_every_days=DEFAULT_OUTPUT_EVERY_DAYS if args.output_every is None else args.output_every,
        progress=not args.quiet)
    print(f"wrote {record.trajectory}, {record.summary} and {record.figure}: {record.outputs} outputs from day "
          f"{record.start_day:g} to {record.end_day:g} in {record.wall_s:.1f} s; tumour burden "
          f"{record.burden_first_mm2:.3f} -> {record.burden_last_mm2:.3f} mm^2")


def _inspect(args: argparse.Namespace) -> None:
    from personalize.io import load_observation, summarize

    observation = load_observation(args.t1gd, args.flair, args.pet, labels=args.labels)
    print(json.dumps(summarize(observation), indent=2))


def _parameter_values(items: list[str], flag: str = "--param") -> dict[str, float]:
    """``["NAME=VALUE", ...]`` (given after ``flag``) as a dict; a malformed item or a repeated name is a
    ValueError."""
    values: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}")
        if name in values:
            raise ValueError(f"{flag} {name} given twice")
        try:
            values[name] = float(value)
        except ValueError:
            raise ValueError(f"{flag} {name}: {value!r} is not a number") from None
    return values


def _likelihood(args: argparse.Namespace) -> None:
    from personalize.evaluation import evaluate_likelihood, load_density, resolve_parameters
    from personalize.io import load_observation

    parameters = _parameter_values(args.param)
    resolve_parameters(args.convention, parameters, pet=args.pet is not None)  # bad names fail before reading
    observation = load_observation(args.t1gd, args.flair, args.pet, labels=args.labels)
    density = load_density(args.density, observation)
    result = evaluate_likelihood(density, observation, parameters, convention=args.convention, clamp=args.clamp)
    files = {"density": args.density, "t1gd": args.t1gd, "flair": args.flair, "pet": args.pet}
    print(json.dumps({**result, "labels": args.labels, "files": files}, indent=2))


def _synth(args: argparse.Namespace) -> None:
    from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
    from simulators.atlas import default_atlas

    truth = BUILT_IN_CASE | _parameter_values(args.param)
    known = (*BUILT_IN_CASE, "sigma_alpha")
    unknown = sorted(set(truth) - set(known))
    if unknown:
        raise ValueError(f"unknown parameters {', '.join(unknown)}; known: {', '.join(known)}")
    patient = synthesize(truth, default_atlas(spacing_mm=args.spacing), seed=args.seed, with_pet=not args.no_pet,
                         masks=args.masks)
    paths = write_synthetic(patient, args.out)
    volumes = patient.visible_volumes_ml
    print(f"wrote a synthetic patient to {args.out}: T1Gd {volumes['t1gd']:.1f} mL, FLAIR {volumes['flair']:.1f} mL; "
          f"truth in {paths['truth']}")


def _or(value, default):
    """``value``, or ``default`` where an option was not given (None)."""
    return default if value is None else value


def _given(args: argparse.Namespace, options: dict[str, str]) -> list[str]:
    """The flags of ``options`` (dest → flag) set to something other than the subcommand's default."""
    return [flag for dest, flag in options.items() if getattr(args, dest) != args.parser.get_default(dest)]


def _fit(args: argparse.Namespace) -> None:
    own, other = (_FIT_MICROENVIRONMENT_ONLY, _FIT_FK_ONLY) if args.model == "fisher-kolmogorov" else \
        (_FIT_FK_ONLY, _FIT_MICROENVIRONMENT_ONLY)
    given = _given(args, own)
    if given:
        model = next(name for name in SIMULATE_MODELS if name != args.model)
        raise ValueError(f"{', '.join(given)} apply to --model {model} only")
    if args.model == "microenvironment":
        if args.method == "lmi":
            raise ValueError("--method lmi applies to --model fisher-kolmogorov only")
        _fit_microenvironment(args)
    else:
        _fit_fisher_kolmogorov(args)


def _fit_microenvironment(args: argparse.Namespace) -> None:
    from personalize.fit import summary_table
    from personalize.response_run import read_observation, read_truth, run_fit_virtual_patient

    if not args.observation or not args.schedule:
        raise ValueError("--model microenvironment needs --observation FILE.npz and --schedule FILE.toml (the "
                         "treatment the patient received)")
    defaults = VirtualPatientFitSettings()
    npe = replace(defaults.npe, estimator=args.estimator, rounds=_or(args.rounds, defaults.npe.rounds),
                  simulations=_or(args.simulations, defaults.npe.simulations),
                  n_posterior=_or(args.npe_draws, defaults.npe.n_posterior), max_epochs=args.max_epochs)
    settings = VirtualPatientFitSettings(
        n_samples=_or(args.samples, defaults.n_samples), chain_steps=_or(args.chain_steps, defaults.chain_steps),
        max_stages=args.max_stages, npe=npe, seed=args.seed, workers=args.workers,
        chunk_size=_or(args.chunk_size, defaults.chunk_size), max_time_step_days=_or(args.time_step,
                                                                                    DEFAULT_TIME_STEP_DAYS))
    observation = read_observation(args.observation, args.schedule)
    truth = read_truth(args.truth) if args.truth else None
    result = run_fit_virtual_patient(observation, args.out, method=args.method, settings=settings,
                                     parameters=tuple(args.parameters or PARAMETER_FIELDS), truth=truth,
                                     sources={"file": args.observation, "schedule_file": args.schedule},
                                     resume=args.resume, progress=not args.quiet)
    print(summary_table(result.summary))
    print(f"{result.summary['method']}: {result.summary['n_simulations']} simulations in {result.wall_s:.0f} s; "
          f"wrote {args.out}\npredict its response: personalize predict-response --fit {args.out} --observation "
          f"{args.observation} --schedule {args.schedule} --out FOLDER")


def _fit_fisher_kolmogorov(args: argparse.Namespace) -> None:
    from personalize.fit import fit, truth_from_json
    from personalize.io import load_observation
    from personalize.priors import parse_bound_overrides
    from simulators.anatomy import Anatomy

    if not args.t1gd or not args.flair:
        raise ValueError("--model fisher-kolmogorov needs --t1gd and --flair")
    if bool(args.wm) != bool(args.gm):
        raise ValueError("--wm and --gm go together (or give neither for the default atlas)")
    if args.method == "lmi":
        _fit_lmi(args)
        return
    if args.weights is not None:
        raise ValueError("--weights applies to --method lmi only")
    if args.refine is not None:
        raise ValueError("--refine applies to --method lmi only")
    settings = _fit_settings(args, args.method)
    bounds = parse_bound_overrides(args.bound)
    truth = truth_from_json(args.truth) if args.truth else None
    observation = load_observation(args.t1gd, args.flair, args.pet, labels=args.labels, core=True)
    tissue = Anatomy.from_nifti(args.wm, args.gm, args.csf) if args.wm else None
    result = fit(observation, args.out, tissue=tissue, settings=settings, bounds=bounds, bounds_toml=args.priors,
                 resume=args.resume, progress=not args.quiet, truth=truth)
    _print_fit(result.summary, settings, args.out)


def _fit_settings(args: argparse.Namespace, method: str) -> FitSettings:
    """The settings of a ``personalize fit`` of the growth model with ``method`` (an engine) from the options."""
    return FitSettings(
        method=method, convention=args.convention, spacing_mm=args.spacing, margin_mm=args.margin,
        seed_margin_mm=args.seed_margin, n_samples=_or(args.samples, FitSettings.n_samples),
        chain_steps=_or(args.chain_steps, FitSettings.chain_steps), max_stages=args.max_stages,
        n_predictive=args.predictive, thresholds=tuple(args.threshold or FitSettings.thresholds), seed=args.seed,
        workers=args.workers, chunk_size=_or(args.chunk_size, FitSettings.chunk_size), device=args.device,
        estimator=args.estimator, rounds=_or(args.rounds, FitSettings.rounds),
        simulations=_or(args.simulations, FitSettings.simulations), npe_draws=_or(args.npe_draws, FitSettings.npe_draws),
        npe_max_epochs=args.max_epochs, embedding=args.embedding, scan_masks=args.scan_masks, pool=args.pool,
        simulator=args.simulator, surrogate_weights=args.surrogate_weights)


def _print_fit(summary: dict, settings: FitSettings, out: str) -> None:
    """The summary table of an engine's fit, its MAP Dice, and a warning when the MAP tumour reaches the crop."""
    from personalize.fit import summary_table

    print(summary_table(summary))
    quality = summary["map_fit"]
    print(f"MAP Dice: T1Gd {quality['dice_t1gd']:.3f}, FLAIR {quality['dice_flair']:.3f} ({summary['method']}); "
          f"{summary['n_simulations']} simulations in {summary['wall_s']:.0f} s; wrote {out}")
    wall, lowest = quality["density_at_crop_wall"], min(settings.thresholds)
    if wall > lowest:
        print(f"warning: the MAP tumour reaches the working box's wall (density {wall:.3f} > {lowest:g}); "
              f"the crop, not the anatomy, bounds it there: refit with --margin above {settings.margin_mm:g}")


def _fit_lmi(args: argparse.Namespace) -> None:
    from personalize.fit import growth_simulator, summary_table, truth_from_json
    from personalize.io import load_observation
    from personalize.lmi.personalization import fit_lmi
    from personalize.lmi.refine import REFINE_DIR, refine_lmi
    from personalize.lmi.weights import SHIPPED_WEIGHTS
    from personalize.priors import parse_bound_overrides
    from simulators.anatomy import Anatomy

    given = _given(args, _FIT_ENGINE_ONLY)
    if given and args.refine is None:
        raise ValueError(f"{', '.join(given)} do not apply to --method lmi (a network's point estimate from T1Gd and "
                         "FLAIR, nothing sampled) unless --refine tmcmc|npe samples after it")
    settings = _fit_settings(args, args.refine) if args.refine else None
    growth = FitSettings(simulator=args.simulator, surrogate_weights=args.surrogate_weights, device=args.device)
    simulator, simulator_record = growth_simulator(growth) if args.simulator != "fisher-kolmogorov" else (None, None)
    observation = load_observation(args.t1gd, args.flair, args.pet, labels=args.labels, core=True)
    tissue = Anatomy.from_nifti(args.wm, args.gm, args.csf) if args.wm else None
    result = fit_lmi(observation, args.out, weights=args.weights or SHIPPED_WEIGHTS, tissue=tissue, seed=args.seed,
                     progress=not args.quiet, simulator=simulator, simulator_record=simulator_record)
    summary = result.summary
    print(summary_table(summary))
    quality = summary["map_fit"]
    print(f"Dice at u_t1gd={quality['u_t1gd']:g}, u_flair={quality['u_flair']:g}: T1Gd {quality['dice_t1gd']:.3f}, "
          f"FLAIR {quality['dice_flair']:.3f} (lmi); registration {summary['wall_s_registration']:.1f} s, network "
          f"{summary['wall_s_inference']:.1f} s, simulation {summary['wall_s_simulation']:.1f} s, "
          f"{summary['wall_s']:.0f} s in all; wrote {args.out}")
    if settings is None:
        return
    refined_out = os.path.join(args.out, REFINE_DIR)
    refined = refine_lmi(observation, result, refined_out, bounds=parse_bound_overrides(args.bound),
                         bounds_toml=args.priors, tissue=tissue, settings=settings, resume=args.resume,
                         progress=not args.quiet, truth=truth_from_json(args.truth) if args.truth else None)
    print(f"refined with {args.refine} around the LMI estimate (prior narrowed by personalize.lmi.refine):")
    _print_fit(refined.summary, settings, refined_out)


def _compare(args: argparse.Namespace) -> None:
    from personalize.compare import compare_runs

    comparison = compare_runs(args.runs, args.out, n_samples=args.samples, seed=args.seed)
    print(f"{'run a':<28}{'run b':<28}{'C2ST':>7}{'Dice FLAIR':>12}{'Dice T1Gd':>11}")
    for pair in comparison.pairs:
        print(f"{pair.a:<28}{pair.b:<28}{pair.c2st:>7.3f}{pair.dice_flair:>12.3f}{pair.dice_t1gd:>11.3f}")
    print(f"C2ST over {', '.join(comparison.pairs[0].c2st_parameters)} ({comparison.n_samples} draws per run); "
          f"wrote {comparison.files['comparison']}")


def _make_virtual_patient(args: argparse.Namespace) -> None:
    from personalize.response_run import write_virtual_patient
    from personalize.virtual_patient import DEFAULT_DAYS, DEFAULT_GRID, DEFAULT_SPACING_MM, DEFAULT_TRUTH, \
        make_virtual_patient
    from simulators.treatment import Schedule

    given = [flag for dest, flag in _FIT_ONLY.items() if getattr(args, dest) not in (None, [])]
    if given:
        raise ValueError(f"{', '.join(given)} apply to a fit, not to --make-virtual-patient")
    truth = DEFAULT_TRUTH | _parameter_values(args.make_virtual_patient, "--make-virtual-patient")
    observation, full = make_virtual_patient(
        truth, days=args.observed_days or DEFAULT_DAYS,
        schedule=Schedule.from_toml(args.schedule) if args.schedule else None,
        seed=0 if args.patient_seed is None else args.patient_seed, noise_seed=args.seed,
        grid=DEFAULT_GRID if args.grid is None else args.grid,
        spacing_mm=DEFAULT_SPACING_MM if args.spacing is None else args.spacing,
        max_time_step_days=_or(args.time_step, DEFAULT_TIME_STEP_DAYS))
    files = write_virtual_patient(observation, full, args.out)
    print(f"wrote a virtual patient to {args.out}: {len(observation.days)} maps of {observation.shape[0]} x "
          f"{observation.shape[1]} cells on days {', '.join(f'{day:g}' for day in observation.days)}; truth "
          + ", ".join(f"{name}={value:g}" for name, value in full.items())
          + f"\nfit it: personalize predict-response --observation {files['observation']} --schedule "
          f"{files['schedule']} --truth {files['truth']} --time-step {_days_text(_or(args.time_step, DEFAULT_TIME_STEP_DAYS))} --out FOLDER")


def _predict_response(args: argparse.Namespace) -> None:
    from personalize.fit import summary_table
    from personalize.predictive.response import CLASSES
    from personalize.predictive.schedules import NOT_EVALUABLE
    from personalize.response_run import parse_candidates, read_fit, read_observation, read_truth, \
        run_predict_response

    if args.make_virtual_patient is not None:
        _make_virtual_patient(args)
        return
    given = [flag for dest, flag in _MAKE_ONLY.items() if getattr(args, dest) is not None]
    if given:
        raise ValueError(f"{', '.join(given)} apply to --make-virtual-patient only")
    if not args.observation or not args.schedule:
        raise ValueError("give --observation FILE.npz and --schedule FILE.toml (the treatment the patient received), "
                         "or --make-virtual-patient to write a synthetic one")
    if args.fit:
        given = _given(args, _PREDICT_FIT_OPTIONS)
        if given:
            raise ValueError(f"{', '.join(given)} apply to a fit, not to predictions from --fit {args.fit}")
    candidates = parse_candidates(args.candidate) if args.candidate else None  # bad syntax fails before reading
    observation = read_observation(args.observation, args.schedule)
    truth = read_truth(args.truth) if args.truth else None
    fitted, time_step = None, _or(args.time_step, DEFAULT_TIME_STEP_DAYS)
    if args.fit:
        fitted, fitted_step = read_fit(args.fit, observation)
        if args.time_step is not None and args.time_step != fitted_step:
            raise ValueError(f"--time-step {_days_text(args.time_step)} differs from the fit's "
                             f"{_days_text(fitted_step)} ({args.fit}): predict with the model that was fitted")
        time_step = fitted_step
    npe = replace(VirtualPatientFitSettings.npe, rounds=args.rounds, simulations=args.simulations,
                  max_epochs=args.max_epochs)
    settings = VirtualPatientFitSettings(n_samples=args.samples, chain_steps=args.chain_steps, npe=npe, seed=args.seed,
                                         workers=args.workers, max_time_step_days=time_step)
    result = run_predict_response(
        observation, args.out, candidates=candidates, method=args.method, settings=settings,
        parameters=tuple(args.parameters or PARAMETER_FIELDS), criteria=args.criteria, horizon_days=args.horizon,
        n_draws=args.draws, truth=truth, progress=not args.quiet, fitted=fitted,
        sources={"file": args.observation, "schedule_file": args.schedule})
    summary = result.summary
    print(summary_table(summary))
    classes = (*CLASSES, NOT_EVALUABLE)
    print(f"{'candidate':<16}" + "".join(f"{name:>7}" for name in classes) + "   median area (mm^2), baseline -> end")
    for response in result.responses:
        median = response.tumour_area_mm2[len(response.quantile_levels) // 2]
        print(f"{response.label:<16}" + "".join(f"{response.class_probabilities[name]:>7.3f}" for name in classes)
              + f"   {median[0]:.2f} -> {median[-1]:.2f}")
    print(f"{summary['method']}: {summary['n_simulations']} simulations, {result.wall_s:.0f} s; "
          f"{args.criteria.upper()} classes at {args.horizon:g} days after each candidate's first dose "
          f"({args.draws} posterior draws); wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``personalize`` command."""
    parser = argparse.ArgumentParser(prog="personalize", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser(
        "simulate", help="simulate one tumour: Fisher-Kolmogorov growth for one parameter set (default), or the "
                         "2D micro-environment model under a dose schedule")
    simulate.add_argument("--model", choices=SIMULATE_MODELS, default="fisher-kolmogorov",
                          help="forward model (default fisher-kolmogorov)")
    simulate.add_argument("--spacing", type=float,
                          help="fisher-kolmogorov: simulate at this spacing in mm (atlas default 2; patient "
                               "default: the files' own grid); microenvironment: cell size in mm (default 1/15)")
    simulate.add_argument("--seed", help="fisher-kolmogorov: initial condition convention, "
                                         f"{' or '.join(sorted(PRESETS))} (default tumorgrowthtoolkit: "
                                         "TumorGrowthToolkit's Gaussian, variance 10 mm^2, peak 0.5, zero below "
                                         "0.1); microenvironment: the virtual patient, an integer (default 0)")
    anatomy = simulate.add_argument_group("fisher-kolmogorov: anatomy (default atlas, or a patient's tissue maps)")
    anatomy.add_argument("--atlas", action="store_true", help="the default MNI152 2009a atlas")
    anatomy.add_argument("--wm", help="white-matter map (NIfTI, probabilities or binary)")
    anatomy.add_argument("--gm", help="grey-matter map (NIfTI, probabilities or binary)")
    anatomy.add_argument("--csf", help="CSF map (NIfTI, optional)")
    model = simulate.add_argument_group("fisher-kolmogorov: model (mm, days; D_w, rho, T, x, y, z required)")
    model.add_argument("--D_w", type=float, help="white-matter diffusivity, mm^2/day")
    model.add_argument("--rho", type=float, help="proliferation rate, 1/day")
    model.add_argument("--T", type=float, help="time since the seed, days")
    for axis in "xyz":
        model.add_argument(f"--{axis}", type=float, help=f"seed {axis}, mm in world space")
    model.add_argument("--gm-ratio", type=float, help="D_g / D_w (default 0.1)")
    model.add_argument("--seed-width", type=float, help="override the seed's width in mm")
    model.add_argument("--seed-amplitude", type=float, help="override the seed's peak density")
    model.add_argument("--device", help="torch device, e.g. cpu (default) or cuda")
    micro = simulate.add_argument_group("microenvironment (mm, days)")
    micro.add_argument("--schedule", metavar="FILE.toml",
                       help="dated doses, [[dose]] tables of day, agent (antiangiogenic or chemotherapy), amount; "
                            "required ('dose = []' for no treatment)")
    micro.add_argument("--grid", type=int, metavar="N", help="cells per side of the square grid (default 151)")
    micro.add_argument("--start-day", type=_days, metavar="DAY",
                       help="first recorded day; the patient grows under the schedule from day 0 to it without "
                            "output (default: the schedule's first dose)")
    micro.add_argument("--days", type=_days, metavar="D", help="recorded span in days (default 7)")
    micro.add_argument("--output-every", type=_days, metavar="DAYS",
                       help="output interval, days or a fraction (default 1/48: 30 minutes)")
    simulate.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.add_argument("--out", required=True, help="output folder")
    simulate.set_defaults(handler=_simulate)

    inspect = commands.add_parser("inspect", help="check a patient's segmentations and PET, print a summary")
    inspect.add_argument("--t1gd", required=True, help="T1Gd segmentation (binary mask or label map)")
    inspect.add_argument("--flair", required=True, help="FLAIR segmentation (binary mask or label map)")
    inspect.add_argument("--pet", help="FET-PET map (optional)")
    inspect.add_argument("--labels", help="label convention: brats, gliodil, predictgbm or gliomasolver")
    inspect.set_defaults(handler=_inspect)

    likelihood = commands.add_parser(
        "likelihood", help="log-likelihood of one density given a patient's scans (float64), printed as JSON")
    likelihood.add_argument("--density", required=True, help="tumour cell density in [0, 1] on the scans' grid")
    likelihood.add_argument("--t1gd", required=True, help="T1Gd segmentation (binary mask or label map)")
    likelihood.add_argument("--flair", required=True, help="FLAIR segmentation (binary mask or label map)")
    likelihood.add_argument("--pet", help="FET-PET map (optional)")
    likelihood.add_argument("--labels", help="label convention: brats, gliodil, predictgbm or gliomasolver")
    likelihood.add_argument("--convention", choices=("thesis", "gliomasolver"), default="gliomasolver",
                            help="likelihood form (default gliomasolver, whose defaults are GliomaSolver's: "
                                 "u_t1gd 0.7, u_flair 0.25, slope 2, pet_scale 0.85, pet_sigma 0.019; "
                                 "thesis has no defaults)")
    likelihood.add_argument("--param", action="extend", nargs="+", default=[], metavar="NAME=VALUE",
                            help="imaging parameter: u_t1gd, u_flair, sigma_alpha, pet_scale, pet_sigma, "
                                 "or (gliomasolver) slope = sigma_alpha^2")
    likelihood.add_argument("--clamp", type=float, default=0.0,
                            help="keep alpha in [clamp, 1 - clamp] (default 0: the published formula)")
    likelihood.set_defaults(handler=_likelihood)

    synth = commands.add_parser("synth", help="a synthetic patient on the default atlas, with its truth beside it")
    synth.add_argument("--param", action="extend", nargs="+", default=[], metavar="NAME=VALUE",
                       help="override the built-in case: D_w, rho, T, x, y, z, u_t1gd, u_flair, pet_scale, "
                            "pet_sigma; sigma_alpha for --masks detection")
    synth.add_argument("--spacing", type=float, default=2.0, help="atlas spacing in mm (default 2)")
    synth.add_argument("--seed", type=int, default=0, help="seed of the PET noise and of drawn masks")
    synth.add_argument("--masks", choices=MASK_MODELS, default="threshold",
                       help="threshold the density (default), or draw each voxel with the detection probability "
                            "of Eq. 6 at --param sigma_alpha=VALUE (the model the likelihood assumes)")
    synth.add_argument("--no-pet", action="store_true", help="no PET scan")
    synth.add_argument("--out", required=True, help="output folder")
    synth.set_defaults(handler=_synth)

    fit = commands.add_parser("fit", help="posterior over a model's parameters: the growth model given a patient's "
                                          "scans, or the micro-environment model given a virtual patient's maps")
    fit.add_argument("--model", choices=SIMULATE_MODELS, default="fisher-kolmogorov",
                     help="fisher-kolmogorov (default: a glioma from T1Gd/FLAIR masks and PET) or microenvironment "
                          "(a virtual patient's tumour maps; --observation, --schedule)")
    scans = fit.add_argument_group("scans (fisher-kolmogorov)")
    scans.add_argument("--t1gd", help="T1Gd segmentation (binary mask or label map)")
    scans.add_argument("--flair", help="FLAIR segmentation (binary mask or label map)")
    scans.add_argument("--pet", help="FET-PET map (optional)")
    scans.add_argument("--labels", help="label convention: brats, gliodil, predictgbm or gliomasolver")
    tissue = fit.add_argument_group("anatomy (the patient's tissue maps on the scans' grid, or the default "
                                    "atlas for scans in MNI152 space)")
    tissue.add_argument("--wm", help="white-matter map (NIfTI, probabilities or binary)")
    tissue.add_argument("--gm", help="grey-matter map (NIfTI, probabilities or binary)")
    tissue.add_argument("--csf", help="CSF map (NIfTI, optional)")
    engine = fit.add_argument_group("inference")
    engine.add_argument("--method", choices=METHODS, default="tmcmc",
                        help="inference engine: tmcmc (likelihood-based), npe (sequential neural posterior "
                             "estimation, likelihood learned from simulated scans) or lmi (Learn-Morph-Infer: a "
                             "trained network's point estimate in the atlas, through a registration); "
                             "default tmcmc")
    engine.add_argument("--weights", metavar="FILE.pt",
                        help="--method lmi: network weights with their .json record beside them (python -m "
                             "personalize.lmi.train); default: the weights shipped in the package (4 mm atlas)")
    engine.add_argument("--refine", choices=ENGINES,
                        help="--method lmi: then fit with this engine in patient space, the prior narrowed around "
                             "the network's estimate (personalize.lmi.refine), into OUT/refine; the engine options "
                             "apply to it")
    engine.add_argument("--simulator", choices=SIMULATORS, default="fisher-kolmogorov",
                        help="growth model of every simulation: the numerical solver (default) or its geometry-aware "
                             "neural surrogate (simulators.surrogates.geometry_aware; docs/surrogate.md says where it "
                             "pays off)")
    engine.add_argument("--surrogate-weights", metavar="FILE.pt",
                        help="--simulator surrogate: weights with their .json record (python -m "
                             "personalize.surrogate.train); default: the weights shipped in the package")
    engine.add_argument("--convention", choices=("thesis", "gliomasolver"), default="thesis",
                        help="likelihood form (default thesis: Lipkova's Eq. 6 and PET ~ N(b u, sigma^2))")
    engine.add_argument("--samples", type=int, help=f"TMCMC population size (default {FitSettings.n_samples}; "
                                                   f"microenvironment {VirtualPatientFitSettings.n_samples})")
    engine.add_argument("--chain-steps", type=int, help=f"Metropolis steps per chain and stage (default "
                                                        f"{FitSettings.chain_steps})")
    engine.add_argument("--max-stages", type=int, default=FitSettings.max_stages, help="TMCMC stage limit")
    engine.add_argument("--seed", type=int, default=0, help="random seed (the fit is reproducible)")
    npe = fit.add_argument_group("sequential NPE (--method npe)")
    npe.add_argument("--estimator", choices=ESTIMATORS, default=FitSettings.estimator,
                     help="mdn (mixture density network, default), nsf (spline flow), npse (score-based "
                          "diffusion) or fmpe (flow matching)")
    npe.add_argument("--rounds", type=int, help=f"simulation rounds (default {FitSettings.rounds}; microenvironment "
                                                f"{VirtualPatientFitSettings.npe.rounds})")
    npe.add_argument("--simulations", type=int, help=f"simulations per round (default {FitSettings.simulations}; "
                                                     f"microenvironment {VirtualPatientFitSettings.npe.simulations})")
    npe.add_argument("--npe-draws", type=int, help=f"samples drawn from the final estimate (default "
                                                   f"{FitSettings.npe_draws}; microenvironment "
                                                   f"{VirtualPatientFitSettings.npe.n_posterior})")
    npe.add_argument("--max-epochs", type=int, help="cap on training epochs per round (default: early stopping)")
    npe.add_argument("--embedding", choices=EMBEDDINGS, default=FitSettings.embedding,
                     help="how the network sees the scans: moments (each scan's mass, centroid and spread, default), "
                          "pooled (block averages of each scan) or cnn (a 3D CNN trained jointly; slow on a CPU)")
    npe.add_argument("--scan-masks", choices=MASK_MODELS, default=FitSettings.scan_masks,
                     help="simulated masks: threshold (u > u_c, default) or detection (Eq. 6's Bernoulli)")
    npe.add_argument("--pool", type=int, default=FitSettings.pool,
                     help="average the scans over pool^3 working voxels before the network (default 1)")
    engine.add_argument("--bound", action="extend", nargs="+", default=[], metavar="NAME=LOW:HIGH",
                        help="override a prior bound, e.g. D_w=0.05:1.0")
    engine.add_argument("--priors", help="TOML file with a [bounds] table of prior bounds")
    engine.add_argument("--seed-margin", type=float, default=FitSettings.seed_margin_mm,
                        help="the seed lies in tissue within this many mm of the abnormality (default 5)")
    engine.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    grid = fit.add_argument_group("working grid and compute")
    grid.add_argument("--spacing", type=float, default=FitSettings.spacing_mm, help="working grid spacing, mm")
    grid.add_argument("--margin", type=float, default=FitSettings.margin_mm,
                      help="crop margin around the abnormality, mm (default 30)")
    grid.add_argument("--workers", type=int, default=FitSettings.workers,
                      help="local processes evaluating each population (default 1: threads in one process)")
    grid.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    grid.add_argument("--chunk-size", type=int, help=f"simulations per batch (default {FitSettings.chunk_size}; "
                                                     f"microenvironment {VirtualPatientFitSettings.chunk_size})")
    grid.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    output = fit.add_argument_group("output")
    output.add_argument("--predictive", type=int, default=FitSettings.n_predictive,
                        help="posterior draws simulated for the mean and exceedance maps")
    output.add_argument("--threshold", type=float, action="append",
                        help="exceedance level c of a p_u_above_<c> map (repeatable; default 0.01, 0.25, 0.7)")
    output.add_argument("--truth", help="truth.json of a synthetic case, marked in the pair plot")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    output.add_argument("--out", required=True, help="output folder")
    micro = fit.add_argument_group("virtual patient (microenvironment)")
    micro.add_argument("--observation", metavar="FILE.npz",
                       help="days [D], maps [D, X, Y] of tumour cell density in [0, 1], spacing_mm, seed (the vessel "
                            "seed), as predict-response --make-virtual-patient writes")
    micro.add_argument("--schedule", metavar="FILE.toml", help="the treatment the patient received, [[dose]] tables "
                                                               "('dose = []' for none)")
    micro.add_argument("--parameters", nargs="+", choices=tuple(PARAMETER_FIELDS), metavar="NAME",
                       help="model parameters inferred, among r_n D_n d_r alpha_mn (default all; the noise sigma "
                            "always is)")
    micro.add_argument("--time-step", type=_days, metavar="DAYS",
                       help="the simulations' largest step, days or a fraction (default 1/24)")
    fit.set_defaults(handler=_fit, parser=fit)

    predict = commands.add_parser(
        "predict-response", help="personalize the micro-environment model to a virtual patient's tumour maps and "
                                 "predict its response (RECIST or RANO classes) to candidate schedules")
    patient = predict.add_argument_group("virtual patient")
    patient.add_argument("--observation", metavar="FILE.npz",
                         help="days [D], maps [D, X, Y] of tumour cell density in [0, 1], spacing_mm, seed (the "
                              "vessel seed)")
    patient.add_argument("--schedule", metavar="FILE.toml",
                         help="the treatment the patient received, [[dose]] tables ('dose = []' for none); with "
                              "--make-virtual-patient the treatment to give (default DENT's protocol from day 14 at "
                              "level 1)")
    patient.add_argument("--truth", metavar="FILE.json", help="truth.json of a synthetic patient, marked in the "
                                                              "summary and the pair plot")
    patient.add_argument("--make-virtual-patient", nargs="*", metavar="NAME=VALUE",
                         help="write a synthetic patient (observation.npz, schedule.toml, truth.json) into --out "
                              "and stop; NAME=VALUE overrides the truth (r_n=0.2 D_n=0.01 d_r=0.5 alpha_mn=0.1 "
                              "sigma=0.05)")
    make = predict.add_argument_group("--make-virtual-patient only")
    make.add_argument("--grid", type=int, metavar="N", help="cells per side (default 41)")
    make.add_argument("--spacing", type=float, metavar="MM", help="cell size in mm (default 0.25)")
    make.add_argument("--observed-days", type=_days, nargs="+", metavar="DAY", help="observed days (default 7 14 21)")
    make.add_argument("--patient-seed", type=int, metavar="N", help="the vessel seed: the patient (default 0)")
    inference = predict.add_argument_group("inference")
    inference.add_argument("--method", choices=("tmcmc", "npe"), default="tmcmc",
                           help="tmcmc (clipped-Gaussian likelihood, default) or npe (sequential NPE on the maps' "
                                "image moments)")
    inference.add_argument("--parameters", nargs="+", choices=tuple(PARAMETER_FIELDS), metavar="NAME",
                           help="model parameters inferred, among r_n D_n d_r alpha_mn (default all; the noise sigma "
                                "always is; the others stay at the model's defaults)")
    inference.add_argument("--samples", type=int, default=VirtualPatientFitSettings.n_samples,
                           help="TMCMC population (default 256)")
    inference.add_argument("--chain-steps", type=int, default=VirtualPatientFitSettings.chain_steps,
                           help="TMCMC Metropolis steps per stage (default 2)")
    inference.add_argument("--rounds", type=int, default=VirtualPatientFitSettings.npe.rounds,
                           help="NPE rounds (default 2)")
    inference.add_argument("--simulations", type=int, default=VirtualPatientFitSettings.npe.simulations,
                           help="NPE simulations per round (default 500)")
    inference.add_argument("--max-epochs", type=int, help="NPE: cap on training epochs per round")
    inference.add_argument("--seed", type=int, default=0,
                           help="random seed of the fit and the draws (with --make-virtual-patient: of the noise)")
    inference.add_argument("--time-step", type=_days, metavar="DAYS",
                           help="the simulations' largest step, days or a fraction (default 1/24, or the --fit's; fit "
                                "with the step a synthetic patient was made with)")
    inference.add_argument("--fit", metavar="FOLDER",
                           help="predict from a fit written before (personalize fit --model microenvironment, or "
                                "another predict-response run) of the same observation, instead of fitting")
    inference.add_argument("--workers", type=int, default=VirtualPatientFitSettings.workers,
                           help="local processes simulating (default 1)")
    prediction = predict.add_argument_group("prediction")
    prediction.add_argument("--candidate", action="append", metavar="LABEL=START_DAY:ANTIANGIOGENIC:CHEMO",
                            help="DENT's protocol from START_DAY at these dose levels, or LABEL=FILE.toml "
                                 "(repeatable; default: untreated, level-1 and level-2 of both agents from the "
                                 "patient's first dose day, or its last observed day when untreated)")
    prediction.add_argument("--criteria", choices=("recist", "rano"), default="recist",
                            help="response criteria (default recist)")
    prediction.add_argument("--horizon", type=int, default=7,
                            help="days from a candidate's first dose to the response (default 7)")
    prediction.add_argument("--draws", type=int, default=64, help="posterior draws simulated per candidate "
                                                                  "(default 64)")
    predict.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    predict.add_argument("--out", required=True, help="output folder")
    predict.set_defaults(handler=_predict_response, parser=predict)

    compare = commands.add_parser("compare", help="compare fits of one patient: C2ST, Wasserstein distances, "
                                                  "Dice of the MAP densities, simulations and wall time")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="fit folders written by personalize fit (two or more)")
    compare.add_argument("--samples", type=int, default=2000,
                         help="equally weighted draws per run for C2ST (default 2000; fewer when a run has fewer)")
    compare.add_argument("--seed", type=int, default=0, help="random seed of the draws and the classifier")
    compare.add_argument("--out", required=True, help="output folder")
    compare.set_defaults(handler=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``personalize`` console script."""
    args = build_parser().parse_args(argv)
    set_threads(getattr(args, "threads", None))
    try:
        args.handler(args)
    except (NiftiError, ValueError, FileNotFoundError) as error:
        message = " ".join(str(error).split())
        print(f"personalize {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StageLimitReached as error:
        print(f"personalize {args.command}: stopped: {error}; continue with --resume and a larger --max-stages",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
