"""Surrogate benchmark: is the geometry-aware surrogate faster than the solver, and how close does it come?

Run as ``python benchmarks/surrogate.py [--weights W.pt] [--fit] [--samples N] [--out DIR]``. It measures

1. speed (Ezhov et al., IEEE TMI 2022, report a 50-fold speed-up over their solver): simulations per second of
   the surrogate and of the numerical solver (:class:`simulators.fisher_kolmogorov.FisherKolmogorov`) on the
   same cubes of the default atlas, at the same batch sizes, on this CPU, for
   - the shipped weights' cube (32³ voxels of 4 mm), and
   - the paper's 64³ cube of 2 mm with the full-scale architecture of ``personalize.surrogate.train``'s GPU preset
     (untrained weights: the time of a forward pass does not depend on their values).
   The solver runs on the cube itself (an anatomy of the cube's size, the same tissue maps), with parameters from
   the training box restricted as the training set is (tumours that fit the cube). ``speedup_cpu`` is the
   surrogate's rate over the solver's at the shipped cube, ``speedup_cpu_64`` at the 64³ cube; ``speedup_gpu``
   is measured on a CUDA device when one is present, else null;
2. accuracy on held-out anatomies, from the weights' record (computed by ``python -m personalize.surrogate.train``
   on the test anatomies): ``dice_u02``, ``dice_u04``, ``dice_u08`` and the MAE within WM, GM and CSF, beside the
   paper's Table I (Dice 0.802 / 0.795 / 0.794);
3. with ``--fit``: TMCMC on the built-in synthetic patient (4 mm, T1Gd and FLAIR) with each simulator, their MAP
   parameters side by side as in the paper's Table II, with wall time and simulations.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from personalize.fit import FitSettings, fit
from personalize.io import load_observation
from personalize.surrogate.dataset import CPU_DATA, GPU_DATA, DataConfig
from personalize.surrogate.train import GPU_TRAINING
from personalize.surrogate.weights import SHIPPED_SURROGATE, load_surrogate
from personalize.synth import BUILT_IN_CASE, synthesize, write_synthetic
from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas
from simulators.fisher_kolmogorov import FisherKolmogorov, front_speed
from simulators.stencil import set_threads
from simulators.surrogates.geometry_aware import GeometryAwareSurrogate, build_network, cube_points, sample_volume

PAPER_DICE = {"dice_u02": 0.802, "dice_u04": 0.795, "dice_u08": 0.794}
TABLE_NAMES = ("D_w", "rho", "T", "x", "y", "z", "u_t1gd", "u_flair", "mu_1", "mu_2")


def cube_anatomy(atlas: Anatomy, centre_mm: np.ndarray, crop: int, spacing_mm: float) -> Anatomy:
    """The atlas's tissue maps on the cube of ``crop`` voxels of ``spacing_mm`` at ``centre_mm`` (an anatomy of the
    cube's own grid, RAS)."""
    points = cube_points(torch.tensor(centre_mm[None]), crop, spacing_mm)
    maps = sample_volume(torch.from_numpy(np.stack([atlas.wm, atlas.gm, atlas.csf]))[None].float(), atlas.affine,
                         points)[0].numpy()
    affine = np.diag([spacing_mm] * 3 + [1.0])
    affine[:3, 3] = centre_mm - (crop // 2) * spacing_mm
    return Anatomy(wm=maps[0], gm=maps[1], csf=maps[2], affine=affine)


def fitting_draws(config: DataConfig, centre_mm: np.ndarray, count: int, seed: int) -> torch.Tensor:
    """``count`` parameter rows at ``centre_mm`` from the box, kept where the front stays inside the cube (the
    training set's restriction, step 2 of :mod:`personalize.surrogate.dataset`)."""
    rng = np.random.default_rng(seed)
    low = np.array([config.d_w[0], config.rho[0], config.t[0]])
    high = np.array([config.d_w[1], config.rho[1], config.t[1]])
    rows = []
    while len(rows) < count:
        growth = low + rng.random(3) * (high - low)
        if front_speed(growth[0], growth[1]) * growth[2] <= (config.crop // 2 - 1) * config.spacing_mm:
            rows.append([*growth, *centre_mm])
    return torch.tensor(rows, dtype=torch.float64)


def rates(simulators: dict[str, object], anatomy: Anatomy, params: torch.Tensor, batch: int) -> dict[str, float]:
    """Simulations per second of each simulator over ``params`` in batches of ``batch`` (after one warm-up batch)."""
    out = {}
    for name, simulator in simulators.items():
        simulator.simulate(params[:batch], anatomy)
        started = time.perf_counter()
        for start in range(0, len(params), batch):
            simulator.simulate(params[start:start + batch], anatomy)
        out[name] = len(params) / (time.perf_counter() - started)
    return out


def speed(surrogate: GeometryAwareSurrogate, config: DataConfig, batch: int, count: int, device: str) -> dict:
    """Rates of the solver (CPU) and of ``surrogate`` (``device``) on the cube of ``config`` in the atlas."""
    atlas = default_atlas(config.spacing_mm)
    centre = np.array([30.0, -10.0, 20.0])  # right frontal white matter
    anatomy = cube_anatomy(atlas, centre, config.crop, config.spacing_mm)
    params = fitting_draws(config, centre, count, seed=0)
    solver = rates({"solver": FisherKolmogorov()}, anatomy, params, batch)["solver"]
    surrogate.network.to(device)
    learned = rates({"surrogate": surrogate}, anatomy, params.to(device), batch)["surrogate"]
    return {"cube": f"{config.crop}^3 x {config.spacing_mm:g} mm", "batch": batch, "simulations": count,
            "solver_per_s": solver, f"surrogate_per_s_{torch.device(device).type}": learned,
            "speedup": learned / solver}


def table_two(samples: int, out: Path, weights: Path) -> dict:
    """TMCMC MAP parameters on the built-in patient at 4 mm with each simulator (the paper's Table II)."""
    truth = dict(BUILT_IN_CASE)
    patient = synthesize(truth, default_atlas(4.0), seed=0, with_pet=False)
    paths = write_synthetic(patient, out / "patient")
    observation = load_observation(paths["t1gd"], paths["flair"], core=True)
    tissue = Anatomy.from_nifti(paths["wm"], paths["gm"], paths["csf"])
    rows = {"truth": {**truth, "mu_1": float(np.sqrt(truth["D_w"] * truth["T"])),
                      "mu_2": float(np.sqrt(truth["rho"] * truth["T"]))}}
    for simulator in ("fisher-kolmogorov", "surrogate"):
        settings = FitSettings(spacing_mm=4.0, n_samples=samples, chain_steps=1, n_predictive=16, coarse_levels=0,
                               simulator=simulator,
                               surrogate_weights=str(weights) if simulator == "surrogate" else None)
        summary = fit(observation, out / simulator, tissue=tissue, settings=settings, progress=False).summary
        rows[simulator] = {**{n: summary["parameters"][n]["map"] for n in TABLE_NAMES},
                           "wall_s": summary["wall_s"], "n_simulations": summary["n_simulations"],
                           "dice_t1gd": summary["map_fit"]["dice_t1gd"], "dice_flair": summary["map_fit"]["dice_flair"]}
    print(f"{'':<10}" + "".join(f"{name:>20}" for name in rows))
    for name in (*TABLE_NAMES, "wall_s", "n_simulations", "dice_t1gd", "dice_flair"):
        print(f"{name:<10}" + "".join(f"{row.get(name, float('nan')):>20.4g}" for row in rows.values()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHIPPED_SURROGATE)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--count", type=int, default=32, help="simulations timed per simulator and cube")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fit", action="store_true", help="also TMCMC with each simulator (Table II)")
    parser.add_argument("--samples", type=int, default=256, help="TMCMC population of --fit")
    parser.add_argument("--out", type=Path, help="keep the fits here (default: a temporary folder)")
    args = parser.parse_args()
    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    surrogate, record = load_surrogate(args.weights)
    config = CPU_DATA if record["network"]["crop"] == CPU_DATA.crop else GPU_DATA
    figures: dict[str, object] = {"weights": str(args.weights), "sha256": record["sha256"], "threads": args.threads}
    figures["cpu"] = speed(surrogate, config, args.batch, args.count, "cpu")
    full = GeometryAwareSurrogate(build_network(GPU_TRAINING.network(GPU_DATA), seed=0), batch_size=args.batch)
    figures["cpu_64"] = speed(full, GPU_DATA, args.batch, args.count, "cpu")
    figures["speedup_cpu"] = figures["cpu"]["speedup"]
    figures["speedup_cpu_64"] = figures["cpu_64"]["speedup"]
    figures["speedup_gpu"] = None
    if torch.cuda.is_available():
        figures["gpu"] = speed(surrogate, config, args.batch, args.count, "cuda")
        figures["gpu_64"] = speed(full, GPU_DATA, args.batch, args.count, "cuda")
        figures["speedup_gpu"] = figures["gpu"]["speedup"]
    for key in ("cpu", "cpu_64"):
        row = figures[key]
        print(f"{row['cube']}, batch {row['batch']}: solver {row['solver_per_s']:.2f}/s, surrogate "
              f"{row['surrogate_per_s_cpu']:.2f}/s on the CPU: {row['speedup']:.2f}x")
    test = record.get("test_metrics") or {}
    for level in ("0.2", "0.4", "0.8"):
        figures[f"dice_u0{level[-1]}"] = (test.get("dice") or {}).get(level)
    figures |= {f"mae_{t}": (test.get("mae") or {}).get(t) for t in ("wm", "gm", "csf")}
    figures["paper"] = PAPER_DICE
    print("held-out anatomies: " + ", ".join(f"{k} {figures[k]}" for k in ("dice_u02", "dice_u04", "dice_u08",
                                                                          "mae_wm", "mae_gm", "mae_csf"))
          + f" (paper: {PAPER_DICE})")
    if args.fit:
        with tempfile.TemporaryDirectory() as scratch:
            figures["table_ii"] = table_two(args.samples, args.out or Path(scratch), args.weights)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
