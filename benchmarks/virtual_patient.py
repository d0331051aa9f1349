"""Virtual-patient benchmark: does a fit of the micro-environment model cover the truth, and what does it predict?

Run as ``python benchmarks/virtual_patient.py [--patients 0 1] [--grid 41] [--samples 64] ...``. Each virtual
patient (vessel seed and noise seed ``p``, the default truth of :mod:`personalize.virtual_patient` unless
``--truth`` overrides it) is observed on ``--days`` under DENT's protocol from day 14 and fitted by ``--method``
with every parameter of ``--parameters`` free (plus σ); the posterior then predicts the response to three
candidate schedules from day 14 (no treatment, both agents at 1, at 2). Prints per patient the 90 % intervals;
the last line is one JSON object with ``coverage_90`` (the share of (patient, parameter) truths inside their
interval, σ included), per-parameter coverage, wall time and simulations per fit, the seconds per simulation,
and the predicted class probabilities of the first patient.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from personalize.npe import NPESettings
from personalize.predictive.schedules import predict_response
from personalize.virtual_patient import (
    DEFAULT_BOUNDS,
    DEFAULT_GRID,
    DEFAULT_SPACING_MM,
    DEFAULT_TIME_STEP_DAYS,
    DEFAULT_TRUTH,
    PARAMETER_FIELDS,
    VirtualPatientFitSettings,
    fit_virtual_patient,
    make_virtual_patient,
    protocol_schedule,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[0])
    parser.add_argument("--method", choices=("tmcmc", "npe"), default="tmcmc")
    parser.add_argument("--parameters", nargs="+", default=list(PARAMETER_FIELDS), choices=list(PARAMETER_FIELDS))
    parser.add_argument("--truth", nargs="*", default=[], help="name=value overrides of the default truth")
    parser.add_argument("--days", type=float, nargs="+", default=[7.0, 14.0, 21.0])
    parser.add_argument("--grid", type=int, default=DEFAULT_GRID)
    parser.add_argument("--spacing", type=float, default=DEFAULT_SPACING_MM)
    parser.add_argument("--step", type=float, default=DEFAULT_TIME_STEP_DAYS)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--chain-steps", type=int, default=1)
    parser.add_argument("--simulations", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--draws", type=int, default=32, help="posterior draws per candidate schedule")
    args = parser.parse_args()
    torch.set_num_threads(1)

    truth = dict(DEFAULT_TRUTH) | {k: float(v) for k, v in (item.split("=") for item in args.truth)}
    bounds = {name: DEFAULT_BOUNDS[name] for name in (*args.parameters, "sigma")}
    settings = VirtualPatientFitSettings(n_samples=args.samples, chain_steps=args.chain_steps, workers=args.workers,
                                         npe=NPESettings(rounds=args.rounds, simulations=args.simulations),
                                         max_time_step_days=args.step)
    grid = dict(grid=args.grid, spacing_mm=args.spacing, max_time_step_days=args.step)
    covered: dict[str, list[bool]] = {name: [] for name in bounds}
    fits, prediction = [], None
    for patient in args.patients:
        observation, full = make_virtual_patient(truth, days=args.days, seed=patient, noise_seed=patient, **grid)
        started = time.perf_counter()
        posterior = fit_virtual_patient(observation, args.method, settings, bounds=bounds)
        wall_s = time.perf_counter() - started
        summary = posterior.summary()
        fits.append({"patient": patient, "wall_s": wall_s, "n_simulations": posterior.n_simulations,
                     "s_per_simulation": wall_s / max(posterior.n_simulations, 1)})
        for name in bounds:
            inside = summary[name]["q05"] <= full[name] <= summary[name]["q95"]
            covered[name].append(inside)
            print(f"patient {patient} {name}: truth {full[name]:.4g}, 90 % interval [{summary[name]['q05']:.4g}, "
                  f"{summary[name]['q95']:.4g}]{'' if inside else '  NOT COVERED'}", flush=True)
        print(f"patient {patient}: {wall_s:.0f} s, {posterior.n_simulations} simulations", flush=True)
        if prediction is None:
            schedules = {"none": protocol_schedule(14.0, 0.0, 0.0), "level 1": protocol_schedule(14.0, 1.0, 1.0),
                         "level 2": protocol_schedule(14.0, 2.0, 2.0)}
            started = time.perf_counter()
            responses = predict_response(posterior, observation, schedules, n_draws=args.draws,
                                         max_time_step_days=args.step)
            prediction = {"wall_s": time.perf_counter() - started,
                          "recist": [response.to_dict() for response in responses]}
            for response in responses:
                print(f"{response.label}: {response.class_probabilities}, median area "
                      f"{[round(a, 2) for a in response.tumour_area_mm2[2]]} mm^2", flush=True)
    flat = [inside for values in covered.values() for inside in values]
    print(json.dumps({
        "coverage_90": sum(flat) / len(flat),
        "coverage_90_by_parameter": {name: sum(v) / len(v) for name, v in covered.items()},
        "fits": fits,
        "prediction": prediction,
        "settings": {**vars(args), "truth": truth},
    }))


if __name__ == "__main__":
    main()
