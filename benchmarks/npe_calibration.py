"""Is the amortized (round-1) NPE posterior of the tumour model calibrated? SBC ranks and TARP coverage.

Run as ``python benchmarks/npe_calibration.py [--spacing 8] [--simulations 2000] [--checks 200] [--out DIR]``.
The cheap configuration: the built-in synthetic patient on the default atlas at ``--spacing`` mm (8 mm: a
working box of about 12³ voxels), its prior (seed candidates around its abnormality, every parameter free),
and ``personalize fit --method npe``'s simulator of scans and default embedding. One round of
``--simulations`` draws from the prior trains an MDN; ``--checks`` fresh prior draws are then simulated
and the posterior is sampled at each (``personalize.calibration.calibrate``: sbi's SBC and TARP).
Parameters are in the fit's coordinates (log D_w, log ρ, log T; ranks do not change under monotone maps).

Prints the SBC Kolmogorov–Smirnov p-value per parameter, TARP's area-to-curve (ATC) and the verdict; writes
the rank histograms and the coverage curve to ``OUT/calibration.png``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from likelihoods.joint import JointLikelihood
from personalize.calibration import calibrate, plot_calibration
from personalize.embedding import EMBEDDINGS, EmbeddedSimulator, embedding_net, network_input
from personalize.fit import LOG_SCALED, FitSettings
from personalize.npe import NPESettings, sequential_npe
from personalize.priors import Prior
from personalize.reparameterize import FunctionInCoordinates, LogCoordinates, PriorInCoordinates
from personalize.scan_simulator import ScanSimulator, observed_scans
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
from personalize.working_grid import ImageLogLikelihood, build_working_problem
from personalize.io import load_observation
from simulators.atlas import default_atlas
from simulators.fisher_kolmogorov import FisherKolmogorov
from simulators.stencil import set_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=8.0, help="atlas and working grid spacing, mm")
    parser.add_argument("--simulations", type=int, default=2000, help="round-1 training simulations")
    parser.add_argument("--checks", type=int, default=200, help="SBC/TARP simulations")
    parser.add_argument("--draws", type=int, default=1000, help="posterior samples per check")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default=FitSettings.embedding)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", help="figure folder (default: a temporary folder)")
    args = parser.parse_args()
    set_threads(args.threads)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="npe-calibration-"))
    out.mkdir(parents=True, exist_ok=True)

    atlas = default_atlas(spacing_mm=args.spacing)
    patient = synthesize(BUILT_IN_CASE, atlas, seed=args.seed)
    paths = write_synthetic(patient, out / "patient")
    observation = load_observation(paths["t1gd"], paths["flair"], paths["pet"])
    problem = build_working_problem(observation, atlas, spacing_mm=args.spacing)
    prior = Prior.from_config(problem.anatomy, problem.scans)
    model = ImageLogLikelihood(FisherKolmogorov(), problem.anatomy, problem.scans, JointLikelihood(), prior.names)
    coordinates = LogCoordinates.of(prior.names, LOG_SCALED)
    features = FunctionInCoordinates(EmbeddedSimulator(ScanSimulator(model, seed=args.seed), args.embedding),
                                     coordinates)

    def simulate(z: torch.Tensor) -> torch.Tensor:
        return features(z.double()).float()

    x_o = observed_scans(problem.scans)
    started = time.perf_counter()
    npe = sequential_npe(PriorInCoordinates(prior, coordinates), simulate, network_input(args.embedding, x_o[None])[0],
                         NPESettings(rounds=1, simulations=args.simulations, n_posterior=100, seed=args.seed),
                         embedding=embedding_net(args.embedding, x_o.shape[0], seed=args.seed),
                         z_score_x="none" if args.embedding == "cnn" else "independent")
    names = tuple(f"log_{n}" if n in LOG_SCALED else n for n in prior.names)
    result = calibrate(npe.posterior, PriorInCoordinates(prior, coordinates), simulate, n_simulations=args.checks,
                       n_posterior_samples=args.draws, seed=args.seed, parameter_names=names, progress=True)
    figure = plot_calibration(result, out / "calibration.png",
                              title=f"round-1 NPE (MDN, {args.simulations} simulations), {args.spacing:g} mm")
    print(f"working grid {problem.anatomy.shape}, training {npe.wall_s:.0f} s, calibration {result.wall_s:.0f} s")
    for name, p in zip(result.parameter_names, result.sbc_ks_pvalues):
        print(f"{name:<12} SBC KS p = {p:.3g}")
    print(f"TARP ATC {result.tarp_atc:+.4f} (tolerance {result.atc_tolerance():.4f}); calibrated: {result.calibrated()}"
          + ("" if result.calibrated() else f" ({'; '.join(result.failures())})"))
    print(json.dumps({**result.to_dict(), "calibrated": result.calibrated(), "training_wall_s": npe.wall_s,
                      "wall_s": time.perf_counter() - started, "working_shape": list(problem.anatomy.shape),
                      "simulations": args.simulations, "spacing_mm": args.spacing, "embedding": args.embedding,
                      "figure": str(figure)}))


if __name__ == "__main__":
    main()
