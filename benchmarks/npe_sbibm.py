"""Sequential NPE (personalize.npe) on three sbibm tasks, scored like sbibm, beside sbibm's published SNPE-C.

Run as ``.venv/bin/python benchmarks/npe_sbibm.py`` after ``make bench-deps`` (sbibm 1.1.0 into the
project's venv without its dependencies; ``sbibm.algorithms`` does not run with sbi 0.27, so this script
drives :func:`personalize.npe.sequential_npe` itself). ``--quick`` is a smoke run of under a minute
(gaussian_linear, 200 simulations in 2 rounds, MDN); the full grid (3 tasks × 2 budgets × 2 estimators)
takes hours on 2 cores. Prints a table as it goes; the last line is one JSON object.

For each task (gaussian_linear, two_moons, slcp), simulation budget (10³, 10⁴), estimator (``mdn``, the
sequential MDN of Ezhov et al. 2022; ``nsf``, sbi's neural spline flow, for contrast) and observation
(sbibm's 1..10; default 1): the budget is spent in ``--rounds`` equal rounds (10, as sbibm's SNPE), the
estimate at x_o is sampled 10,000 times, and C2ST is the accuracy of sbibm's MLP classifier
(``sbibm.metrics.c2st``, 5 folds) telling these samples from sbibm's 10,000 reference posterior samples:
0.5 is indistinguishable, 1.0 fully separated. sbi's own ``sbi.utils.metrics.c2st`` uses a random forest
and gives other numbers; only sbibm's is comparable with the published figures. The wall time is that of
NPE (simulation, training, sampling); the C2ST's own (minutes per score at 10,000 samples) is beside it.

With an MDN, sbi's SNPE-C uses its closed-form (non-atomic) loss after round 1 and then trains each round
on that round's simulations only (sbi 0.27's ``_get_start_index``), continuing from the previous network.
That loss can meet a proposal-posterior precision that is not positive definite in float32 (the family of sbi
issues #328/#669); such a run is printed as failed and run again with APT's atomic loss
(``NPESettings.atomic_loss``), its row marked ``atomic_loss``.

Published reference (Lueckmann et al., AISTATS 2021, sbibm, mean over observations 1..10): SNPE-C with a
neural spline flow, 10 rounds — gaussian_linear 0.65 (10³) / 0.54 (10⁴), two_moons 0.64 / 0.55,
slcp 0.97 / 0.84. sbibm trained with batches of min(10,000, simulations per round) (here
``--training-batch-size``, default the engine's 100) and no epoch cap.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    import sbibm
    from sbibm.metrics import c2st  # noqa: F401  (tmcmc_sbibm.score uses it)
except ImportError:  # pragma: no cover - the benchmark needs sbibm
    print("sbibm is not installed: run `make bench-deps` (sbibm 1.1.0 into .venv without its dependencies)",
          file=sys.stderr)
    sys.exit(2)

from threadpoolctl import threadpool_limits  # noqa: E402  (scikit-learn's dependency)
from tmcmc_sbibm import score  # noqa: E402  (C2ST of subsampled samples vs reference, sbibm's MLP)

from personalize.npe import ESTIMATORS, NPESettings, sequential_npe  # noqa: E402

warnings.filterwarnings("ignore", message="torch.triangular_solve is deprecated")  # nflows, inside NSF

TASKS = ("gaussian_linear", "two_moons", "slcp")
PUBLISHED = {  # sbibm SNPE-C (NSF, 10 rounds), C2ST averaged over observations 1..10
    ("gaussian_linear", 1000): 0.65, ("gaussian_linear", 10000): 0.54,
    ("two_moons", 1000): 0.64, ("two_moons", 10000): 0.55,
    ("slcp", 1000): 0.97, ("slcp", 10000): 0.84,
}
FAILURE = ("failed: sbi's closed-form MoG loss met a precision matrix that is not positive definite (Cholesky); "
           "run again with APT's atomic loss")
N_POSTERIOR = 10_000
QUICK = {"tasks": ["gaussian_linear"], "budgets": [200], "rounds": 2, "estimators": ["mdn"], "c2st_samples": 500}
FULL = {"tasks": list(TASKS), "budgets": [1000, 10000], "rounds": 10, "estimators": ["mdn", "nsf"],
        "c2st_samples": N_POSTERIOR}


def run_one(task, name: str, budget: int, estimator: str, observation: int, args, atomic_loss: bool = False) -> dict:
    """Sequential NPE on one task / budget / estimator / observation, scored against the reference."""
    per_round = budget // args.rounds
    simulator = task.get_simulator(max_calls=per_round * args.rounds)  # raises past the budget
    x_o = task.get_observation(num_observation=observation)[0]  # [1, D] → one row of x
    reference = task.get_reference_posterior_samples(num_observation=observation)
    settings = NPESettings(estimator=estimator, rounds=args.rounds, simulations=per_round,
                           n_posterior=N_POSTERIOR, training_batch_size=args.training_batch_size,
                           atomic_loss=atomic_loss, seed=args.seed)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # sbi prints convergence and loss notes regardless
        result = sequential_npe(task.get_prior_dist(), simulator, x_o, settings, progress=False)
    wall = time.perf_counter() - started
    assert simulator.num_simulations == result.n_simulations == per_round * args.rounds
    started = time.perf_counter()
    with threadpool_limits(1):  # the MLP's matrices are small: more BLAS threads ran 8× slower on 2 busy cores
        value = score(result.samples.detach().numpy(), reference, args.c2st_samples, args.seed)
    return {"task": name, "budget": budget, "estimator": estimator, "observation": observation,
            "rounds": args.rounds, "simulations": result.n_simulations, "c2st": value,
            "published": PUBLISHED.get((name, budget)), "wall_s": wall, "atomic_loss": atomic_loss,
            "c2st_wall_s": time.perf_counter() - started,
            "epochs": [r.epochs for r in result.rounds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, help=f"default: all ({', '.join(TASKS)})")
    parser.add_argument("--budgets", nargs="+", type=int, help="simulations in all (default: 1000 10000)")
    parser.add_argument("--estimators", nargs="+", choices=ESTIMATORS, help="default: mdn nsf")
    parser.add_argument("--rounds", type=int, help="rounds the budget is split into (default: 10, as sbibm)")
    parser.add_argument("--observations", nargs="+", type=int, default=[1],
                        help="sbibm observation numbers, 1..10 (sbibm's figures average all ten)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on 2 shared cores, 2 threads trained 8x slower); "
                             "C2ST always runs on one")
    parser.add_argument("--training-batch-size", type=int, default=NPESettings.training_batch_size,
                        help="sbi training batch (sbibm: min(10000, simulations per round))")
    parser.add_argument("--c2st-samples", type=int,
                        help=f"samples per side for C2ST (default: sbibm's {N_POSTERIOR}; --quick: 500)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: gaussian_linear, budget 200, 2 rounds, mdn, C2ST on 500 vs 500 "
                             "(flags given still apply)")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for budget in args.budgets:
        if budget < args.rounds:
            parser.error(f"budget {budget} is smaller than --rounds {args.rounds}")
    torch.set_num_threads(args.threads)

    print(f"sbibm {sbibm.__version__}; {args.rounds} rounds; {N_POSTERIOR} posterior samples; "
          f"C2ST (sbibm MLP) on {args.c2st_samples} vs {args.c2st_samples}; seed {args.seed}; "
          f"torch threads {args.threads}", flush=True)
    header = (f"{'task':16s} {'budget':>6s} {'estimator':9s} {'obs':>3s} {'C2ST':>6s} {'published':>9s} "
              f"{'wall s':>8s} {'C2ST s':>7s}")
    print(header, flush=True)
    print("-" * len(header), flush=True)
    rows = []
    for name in args.tasks:
        task = sbibm.get_task(name)
        for budget in args.budgets:
            for estimator in args.estimators:
                for observation in args.observations:
                    try:
                        row = run_one(task, name, budget, estimator, observation, args)
                    except torch.linalg.LinAlgError as error:  # sbi's closed-form MoG loss (MDN, later rounds)
                        print(f"{name:16s} {budget:6d} {estimator:9s} {observation:3d} {FAILURE}", flush=True)
                        row = run_one(task, name, budget, estimator, observation, args, atomic_loss=True)
                        row["closed_form_failure"] = str(error)
                    rows.append(row)
                    published = "" if row["published"] is None else f"{row['published']:.2f}"
                    print(f"{name:16s} {budget:6d} {estimator:9s} {observation:3d} {row['c2st']:6.3f} "
                          f"{published:>9s} {row['wall_s']:8.1f} {row['c2st_wall_s']:7.1f}"
                          + ("  (atomic loss)" if row["atomic_loss"] else ""), flush=True)

    summary: dict = {"benchmark": "npe_sbibm", "sbibm": sbibm.__version__, "rounds": args.rounds,
                     "n_posterior": N_POSTERIOR, "c2st_samples": args.c2st_samples, "seed": args.seed,
                     "training_batch_size": args.training_batch_size, "observations": args.observations}
    for name in args.tasks:
        for budget in args.budgets:
            for estimator in args.estimators:
                group = [r for r in rows if (r["task"], r["budget"], r["estimator"]) == (name, budget, estimator)]
                key = f"{name}_{budget}_{estimator}"
                summary[f"c2st_{key}"] = sum(r["c2st"] for r in group) / len(group)
                summary[f"wall_s_{key}"] = sum(r["wall_s"] for r in group) / len(group)
            summary[f"published_{name}_{budget}"] = PUBLISHED.get((name, budget))
    summary["results"] = rows
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
