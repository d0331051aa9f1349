"""Forward-solver benchmark: speed, time-step convergence and agreement with two peer solvers.

Run as ``python benchmarks/forward.py --data ../shared/data`` (the folder holding ``lipkova_patient/``
and ``reference_runs/``). Prints what it measures as it goes; the last line is one JSON object.

The case is the one of ``reference_runs/``: the Lipkova et al. (2019) patient anatomy (256³, 1 mm),
D_w = 0.13 mm²/day, D_g = D_w/10, ρ = 0.025/day, T = 300 days, seed at grid fractions
(0.64925073, 0.59093041, 0.37127833). Each peer is matched under its own input and seed convention:

- TumorGrowthToolkit (``FK.py``): true WM/GM; Gaussian seed u₀ = 0.50196·exp(−r²/20 mm²), zero where
  u₀ ≤ 0.1, centred on voxel ``int(fraction·256)``. This is also this toolkit's default seed.
- GliomaSolver (the fork that produced the reference file): its entry point passes the grey-matter map
  as both tissue maps, so every GM voxel is half white, half grey and there is no white matter; smooth
  bump seed (``lib_cpp.cpp``) of transition radius 1.28 mm and half-width 4 mm at ``fraction·256``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from personalize.fit import dice
from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas
from simulators.fisher_kolmogorov import FisherKolmogorov
from simulators.seed import PRESETS
from simulators.stencil import set_threads

CASE = {"D_w": 0.13, "rho": 0.025, "T": 300.0}
FRACTIONS = np.array([0.64925073, 0.59093041, 0.37127833])
PRIOR_LOW = np.array([0.02, 0.002, 50.0])
PRIOR_HIGH = np.array([1.5, 0.2, 1500.0])
TGT_SEED = PRESETS["tumorgrowthtoolkit"]
GLIOMASOLVER_SEED = PRESETS["gliomasolver"]


def dice_pair(u: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    return dice(u > 0.25, reference > 0.25), dice(u > 0.7, reference > 0.7)


def seed_params(anatomy: Anatomy, voxel: np.ndarray) -> torch.Tensor:
    world = anatomy.voxel_to_world(voxel)
    return torch.tensor([[CASE["D_w"], CASE["rho"], CASE["T"], *world]], dtype=torch.float32)


def timed(simulator: FisherKolmogorov, params: torch.Tensor, anatomy: Anatomy) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    u = simulator.simulate(params, anatomy)[0].numpy()
    return u, time.perf_counter() - start


def patient_figures(data: Path, repeats: int) -> dict[str, float]:
    import nibabel as nib

    patient = data / "lipkova_patient"
    anatomy = Anatomy.from_nifti(patient / "WM.nii.gz", patient / "GM.nii.gz")
    tgt_voxel = np.floor(FRACTIONS * np.asarray(anatomy.shape)).astype(float)
    params = seed_params(anatomy, tgt_voxel)
    solver = FisherKolmogorov(seed=TGT_SEED)
    first_s = timed(solver, params, anatomy)[1]  # loads the compiled kernel from numba's cache
    runs = [timed(solver, params, anatomy) for _ in range(repeats)]
    u, wall = runs[0][0], statistics.median(t for _, t in runs)
    plan = solver.plan(params, anatomy)
    print(f"patient: {plan.steps[0]} {plan.integrator[0]} steps of {plan.dt[0]:.3f} d; first call {first_s:.2f} s, "
          f"median of {repeats}: {wall:.3f} s; {int((u > 0.25).sum())} voxels > 0.25, {int((u > 0.7).sum())} > 0.7")

    fine, fine_s = timed(FisherKolmogorov(seed=TGT_SEED, time_step_factor=0.1), params, anatomy)
    converged = dice_pair(u, fine)
    print(f"  vs 10x smaller time step ({fine_s:.2f} s): Dice {converged[0]:.4f} / {converged[1]:.4f}, "
          f"max |du| {np.abs(u - fine).max():.2e}")

    whole, whole_s = timed(FisherKolmogorov(seed=TGT_SEED, box_tolerance=0.0), params, anatomy)
    print(f"  box grown at any density (≈ whole brain): {whole_s:.2f} s, max |du| {np.abs(u - whole).max():.2e}")
    euler, euler_s = timed(FisherKolmogorov(seed=TGT_SEED, integrator="heun"), params, anatomy)
    print(f"  forced Heun: {euler_s:.2f} s, Dice vs fine {dice_pair(euler, fine)}")

    reference = data / "reference_runs"
    tgt = np.asarray(nib.load(reference / "tumorgrowthtoolkit_Dw0.13_rho0.025_T300.nii.gz").dataobj, np.float32)
    dice_tgt = dice_pair(u, tgt)
    print(f"  vs TumorGrowthToolkit (true WM/GM, its Gaussian seed): Dice {dice_tgt[0]:.4f} / {dice_tgt[1]:.4f}; "
          f"voxels > 0.25 / 0.7: {int((tgt > 0.25).sum())} / {int((tgt > 0.7).sum())}")

    gm = anatomy.gm
    as_run = Anatomy(wm=0.5 * gm, gm=0.5 * gm, csf=np.zeros_like(gm), affine=anatomy.affine)
    gs_params = seed_params(as_run, FRACTIONS * np.asarray(anatomy.shape))
    u_gs = FisherKolmogorov(seed=GLIOMASOLVER_SEED).simulate(gs_params, as_run)[0].numpy()
    gs = np.asarray(nib.load(reference / "gliomasolver_Dw0.13_rho0.025_T300.nii.gz").dataobj, np.float32)
    dice_gs = dice_pair(u_gs, gs)
    inside = gm > 0
    dice_gs_gm = dice_pair(np.where(inside, u_gs, 0), np.where(inside, gs, 0))
    print(f"  vs GliomaSolver (GM as both maps, its bump seed): Dice {dice_gs[0]:.4f} / {dice_gs[1]:.4f} "
          f"(inside its GM domain: {dice_gs_gm[0]:.4f} / {dice_gs_gm[1]:.4f})")
    return {
        "patient_wall_s": wall,
        "patient_first_call_s": first_s,
        "patient_steps": int(plan.steps[0]),
        "dice_converged_u025": converged[0],
        "dice_converged_u07": converged[1],
        "dice_gliomasolver_u025": dice_gs[0],
        "dice_gliomasolver_u07": dice_gs[1],
        "dice_gliomasolver_in_gm_u025": dice_gs_gm[0],
        "dice_gliomasolver_in_gm_u07": dice_gs_gm[1],
        "dice_tgt_u025": dice_tgt[0],
        "dice_tgt_u07": dice_tgt[1],
    }


def atlas_figures(draws: int, seed: int, spacing_mm: float) -> dict[str, float]:
    atlas = default_atlas(spacing_mm=spacing_mm)
    rng = np.random.default_rng(seed)
    growth = PRIOR_LOW + (PRIOR_HIGH - PRIOR_LOW) * rng.random((draws, 3))
    tissue = np.argwhere(atlas.tissue > 0.5)
    voxels = tissue[rng.integers(len(tissue), size=draws)] + rng.random((draws, 3)) - 0.5
    params = torch.as_tensor(np.concatenate([growth, atlas.voxel_to_world(voxels)], axis=1), dtype=torch.float32)
    solver = FisherKolmogorov()
    solver.simulate(params[:1], atlas)  # load the compiled kernel
    plan = solver.plan(params, atlas)
    start = time.perf_counter()
    u = solver.simulate(params, atlas)
    wall = time.perf_counter() - start
    voxel_ml = spacing_mm**3 / 1000.0
    print(f"atlas {spacing_mm:g} mm {atlas.shape}: {draws} prior draws in {wall:.2f} s = {draws / wall:.2f} sims/s; "
          f"steps median {int(np.median(plan.steps))}, max {int(plan.steps.max())}; "
          f"Heun for {int((plan.integrator == 'heun').sum())}; mean tumour volume u>0.25 "
          f"{float((u > 0.25).sum()) * voxel_ml / draws:.1f} mL")
    name = f"atlas{spacing_mm:g}mm"
    return {f"{name}_sims_per_s": draws / wall, f"{name}_wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with lipkova_patient/ and reference_runs/")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--atlas-draws", type=int, default=64)
    parser.add_argument("--atlas-spacings", type=float, nargs="+", default=[2.0, 4.0],
                        help="atlas spacings (mm) to measure throughput at; 2 is the reference figure")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_threads(args.threads)
    figures = {"threads": args.threads}
    figures.update(patient_figures(args.data, args.repeats))
    for spacing in args.atlas_spacings:
        figures.update(atlas_figures(args.atlas_draws, args.seed, spacing))
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
