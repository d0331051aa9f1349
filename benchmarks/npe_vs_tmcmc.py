"""Sequential NPE beside TMCMC on the synthetic patient: do they agree, and what does each cost?

Run as ``python benchmarks/npe_vs_tmcmc.py [--out DIR] [--tmcmc-run DIR] [--estimators mdn fmpe] ...``.
The synthetic patient of ``benchmarks/fit_synthetic.py`` (the built-in case on the default atlas at 2 mm,
T1Gd, FLAIR and PET) is fitted by TMCMC with its default settings (or read from ``--tmcmc-run``, a folder
that benchmark wrote for the same patient) and by sequential NPE with each estimator, as a user would run
``personalize fit --method npe --estimator E``. Each NPE run is compared with TMCMC by
``personalize compare`` (C2ST with sbi's MLP classifier over μ₁, μ₂, x, y, z and the thresholds; Dice of
the MAP densities). Prints a table; the last line is one JSON object with, per estimator ``E``:

- ``c2st_npe_vs_tmcmc`` (for ``mdn``; ``c2st_<E>_vs_tmcmc`` for every estimator): goal ≤ 0.6;
- ``sims_npe`` / ``sims_<E>``, ``sims_tmcmc`` and ``sims_ratio`` / ``sims_ratio_<E>`` (TMCMC's over NPE's):
  goal ≥ 10;
- ``coverage_<E>``: the fraction of the truths (μ₁, μ₂, x, y, z, u_t1gd, u_flair) inside NPE's 90 % intervals,
  and ``covered_<E>`` the per-parameter flags;
- ``wall_s_npe`` / ``wall_s_<E>``, ``wall_s_tmcmc``: whole fits, outputs included.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fit_synthetic import COVERED, covered_truths, synthetic_patient  # noqa: E402

from personalize.cli import _parameter_values  # noqa: E402
from personalize.compare import compare_runs  # noqa: E402
from personalize.fit import FitSettings, fit  # noqa: E402
from personalize.npe import ESTIMATORS  # noqa: E402
from personalize.synth import BUILT_IN_CASE  # noqa: E402
from simulators.stencil import set_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="keep the patient and the fits here (default: a temporary folder)")
    parser.add_argument("--tmcmc-run", help="a TMCMC fit of the same patient to reuse instead of fitting again")
    parser.add_argument("--param", nargs="+", default=[], metavar="NAME=VALUE", help="override the built-in case")
    parser.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=["mdn", "fmpe"])
    parser.add_argument("--rounds", type=int, default=FitSettings.rounds)
    parser.add_argument("--simulations", type=int, default=FitSettings.simulations)
    parser.add_argument("--embedding", default=FitSettings.embedding)
    parser.add_argument("--pool", type=int, default=FitSettings.pool)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    set_threads(args.threads)

    truth = BUILT_IN_CASE | _parameter_values(args.param)
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="npe-vs-tmcmc-"))
    observation, tissue = synthetic_patient(truth, folder / "patient", seed=args.seed, masks="threshold")

    if args.tmcmc_run:
        tmcmc_run = Path(args.tmcmc_run)
        tmcmc_summary = json.loads((tmcmc_run / "summary.json").read_text())
    else:
        tmcmc_run = folder / "tmcmc"
        tmcmc_summary = fit(observation, tmcmc_run, tissue=tissue, settings=FitSettings(seed=args.seed),
                            truth=truth).summary
    report: dict[str, object] = {"sims_tmcmc": tmcmc_summary["n_simulations"], "wall_s_tmcmc": tmcmc_summary["wall_s"],
                                 "tmcmc_run": str(tmcmc_run)}
    print(f"TMCMC: {tmcmc_summary['n_simulations']} simulations, {tmcmc_summary['wall_s']:.0f} s ({tmcmc_run})")

    for estimator in args.estimators:
        settings = FitSettings(method="npe", estimator=estimator, rounds=args.rounds, simulations=args.simulations,
                               embedding=args.embedding, pool=args.pool, seed=args.seed)
        started = time.perf_counter()
        run = folder / f"npe-{estimator}"
        summary = fit(observation, run, tissue=tissue, settings=settings, truth=truth).summary
        wall_s = time.perf_counter() - started
        comparison = compare_runs([tmcmc_run, run], folder / f"compare-{estimator}", seed=args.seed)
        pair = comparison.pairs[0]
        covered = covered_truths(summary["parameters"], truth)
        sims = summary["n_simulations"]
        figures = {
            f"c2st_{estimator}_vs_tmcmc": pair.c2st,
            f"sims_{estimator}": sims,
            f"sims_ratio_{estimator}": tmcmc_summary["n_simulations"] / sims,
            f"coverage_{estimator}": sum(covered.values()) / len(covered),
            f"covered_{estimator}": covered,
            f"wall_s_{estimator}": wall_s,
            f"dice_map_flair_{estimator}_vs_tmcmc": pair.dice_flair,
            f"dice_map_t1gd_{estimator}_vs_tmcmc": pair.dice_t1gd,
        }
        if estimator == "mdn":
            figures |= {"c2st_npe_vs_tmcmc": pair.c2st, "sims_npe": sims, "wall_s_npe": wall_s,
                        "sims_ratio": tmcmc_summary["n_simulations"] / sims}
        report |= figures
        print(f"NPE {estimator}: C2ST vs TMCMC {pair.c2st:.3f}, {sims} simulations "
              f"({tmcmc_summary['n_simulations'] / sims:.1f}x fewer), {sum(covered.values())}/{len(covered)} truths "
              f"covered, MAP Dice vs TMCMC FLAIR {pair.dice_flair:.3f} T1Gd {pair.dice_t1gd:.3f}, {wall_s:.0f} s")
    report |= {"covered_names": list(COVERED.values()), "rounds": args.rounds, "simulations": args.simulations,
               "embedding": args.embedding, "pool": args.pool, "cpus": os.cpu_count(), "out": str(folder)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
