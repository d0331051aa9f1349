"""Learn-Morph-Infer end to end: wall time on a real patient, and Dice against the truth with and without refinement.

Run as ``python benchmarks/lmi_end_to_end.py --data ../shared/data [--weights W.pt] [--synthetic N]`` (default:
the weights shipped in the package).
``fit_lmi`` (Ezhov et al., Learn-Morph-Infer, Med Image Anal 2023, arXiv:2111.04090) is timed end to end,
registration included, on the Lipkova et al. (2019) patient (``DATA/lipkova_patient``: WM, GM, T1Gd and FLAIR
segmentations in GliomaSolver's label convention, 256³ at 1 mm; skipped with a message when absent). With
``--synthetic N``, N tumours are grown in that patient's anatomy (resampled to ``--synthetic-spacing``), their
parameters drawn from the weights' training box with the seed in tissue, and each is fitted with ``fit_lmi`` and
then refined (:func:`personalize.lmi.refine.refine_lmi`, ``--refine``); Dice is that of the density thresholded at
the true u_flair and u_t1gd against the true density thresholded there (the masks). Prints what it measures; the
last line is one JSON object: ``patient`` (``wall_s`` and its steps, Dice against the masks), ``synthetic`` (per
case: truth, ``dice_flair``/``dice_t1gd`` of LMI and of the refined MAP, wall times), their means and the
settings. The figures mean something only with trained weights.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # the warps; read once, at ITK's first use

import numpy as np  # noqa: E402
import torch  # noqa: E402

from personalize.fit import ENGINES, FitSettings  # noqa: E402
from personalize.io import load_observation  # noqa: E402
from personalize.lmi.dataset import sample_prior  # noqa: E402
from personalize.lmi.personalization import fit_lmi, weights_atlas  # noqa: E402
from personalize.lmi.refine import refine_lmi  # noqa: E402
from personalize.lmi.weights import SHIPPED_WEIGHTS, load_weights  # noqa: E402
from personalize.overlap import dice  # noqa: E402
from personalize.synth import synthesize, write_synthetic  # noqa: E402
from simulators.anatomy import Anatomy  # noqa: E402
from simulators.nifti import read_volume  # noqa: E402
from simulators.stencil import set_threads  # noqa: E402


def patient_figures(patient: Path, weights: Path, out: Path) -> dict[str, float]:
    """``fit_lmi`` on the Lipkova patient: wall time of the whole and of each step, Dice against its masks."""
    observation = load_observation(patient / "tumT1c.nii.gz", patient / "tumFLAIR.nii.gz", labels="gliomasolver",
                                   core=True)
    tissue = Anatomy.from_nifti(patient / "WM.nii.gz", patient / "GM.nii.gz")
    summary = fit_lmi(observation, out, weights=weights, tissue=tissue, progress=False).summary
    figures = {key: summary[key] for key in summary if key.startswith("wall_s")}
    figures |= {key: summary["map_fit"][key] for key in ("dice_t1gd", "dice_flair")}
    print(f"patient: fit_lmi {figures['wall_s']:.1f} s (registration {figures['wall_s_registration']:.1f} s, network "
          f"{figures['wall_s_inference']:.2f} s, simulation {figures['wall_s_simulation']:.1f} s, warp back "
          f"{figures['wall_s_warp_back']:.1f} s); Dice against the masks T1Gd {figures['dice_t1gd']:.3f}, FLAIR "
          f"{figures['dice_flair']:.3f}")
    return figures


def truth_dice(density_file: Path, true_density_file: Path, truth: dict[str, float]) -> dict[str, float]:
    """Dice of a written density against the true one (both files on the patient's grid), both thresholded at the
    true u_flair and u_t1gd."""
    density, true_density = read_volume(density_file).data, read_volume(true_density_file).data
    return {f"dice_{name[2:]}": dice(density > truth[name], true_density > truth[name])
            for name in ("u_flair", "u_t1gd")}


def synthetic_case(anatomy: Anatomy, truth: dict[str, float], weights: Path, settings: FitSettings,
                   out: Path) -> dict[str, object] | None:
    """One synthetic patient grown with ``truth`` in ``anatomy``, fitted with LMI and refined; None when its
    T1Gd or FLAIR mask is empty (nothing to fit)."""
    patient = synthesize(truth, anatomy, seed=0, with_pet=False)
    if not (patient.t1gd.any() and patient.flair.any()):
        return None
    paths = write_synthetic(patient, out / "patient")
    observation = load_observation(paths["t1gd"], paths["flair"], core=True)
    lmi = fit_lmi(observation, out / "lmi", weights=weights, tissue=anatomy, progress=False)
    refined = refine_lmi(observation, lmi, out / "lmi" / "refine", tissue=anatomy, settings=settings, truth=truth,
                         progress=False)
    return {"truth": truth, "lmi": {**truth_dice(lmi.files["map_density"], paths["true_density"], truth),
                                     "wall_s": lmi.summary["wall_s"]},
            "refined": {**truth_dice(refined.files["map_density"], paths["true_density"], truth),
                        "wall_s": refined.summary["wall_s"], "n_simulations": refined.summary["n_simulations"]}}


def synthetic_figures(patient: Path, weights: Path, count: int, spacing_mm: float, settings: FitSettings,
                      seed: int, out: Path) -> list[dict[str, object]]:
    """``count`` synthetic cases (:func:`synthetic_case`) in the patient's anatomy at ``spacing_mm``, their
    parameters drawn from the weights' training box (:func:`personalize.lmi.dataset.sample_prior`)."""
    anatomy = Anatomy.from_nifti(patient / "WM.nii.gz", patient / "GM.nii.gz").resample(spacing_mm)
    config, _ = weights_atlas(weights, load_weights(weights))
    prior = sample_prior(config, anatomy)
    generator = torch.Generator().manual_seed(seed)
    cases: list[dict[str, object]] = []
    for draw in range(100 * count):
        if len(cases) == count:
            break
        values = prior.sample_with(1, generator)[0].tolist()
        truth = dict(zip(prior.names, values))
        case = synthetic_case(anatomy, truth, weights, settings, out / f"case_{draw:03d}")
        if case is None:
            continue
        cases.append(case)
        print(f"case {len(cases)}: Dice FLAIR, T1Gd against the truth: LMI {case['lmi']['dice_flair']:.3f}, "
              f"{case['lmi']['dice_t1gd']:.3f}; refined {case['refined']['dice_flair']:.3f}, "
              f"{case['refined']['dice_t1gd']:.3f} ({case['refined']['wall_s']:.0f} s)")
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS,
                        help="trained weights (python -m personalize.lmi.train); default: the shipped ones")
    parser.add_argument("--data", type=Path, required=True, help="folder with lipkova_patient/")
    parser.add_argument("--synthetic", type=int, default=0, help="synthetic patients in the patient's anatomy")
    parser.add_argument("--synthetic-spacing", type=float, default=2.0, help="their grid spacing, mm")
    parser.add_argument("--refine", choices=ENGINES, default="tmcmc")
    parser.add_argument("--samples", type=int, default=FitSettings.n_samples)
    parser.add_argument("--spacing", type=float, default=FitSettings.spacing_mm, help="the refined fit's grid, mm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    settings = FitSettings(method=args.refine, n_samples=args.samples, spacing_mm=args.spacing, seed=args.seed)
    figures: dict[str, object] = {"weights": str(args.weights), "settings": {
        "refine": args.refine, "samples": args.samples, "spacing_mm": args.spacing,
        "synthetic_spacing_mm": args.synthetic_spacing, "threads": args.threads, "seed": args.seed}}
    patient = args.data / "lipkova_patient"
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        if not patient.is_dir():
            print(f"skipped: {patient} is absent (the Lipkova et al. patient: WM, GM, tumT1c, tumFLAIR)")
            figures["patient"] = None
        else:
            figures["patient"] = patient_figures(patient, args.weights, out / "patient")
            if args.synthetic:
                cases = synthetic_figures(patient, args.weights, args.synthetic, args.synthetic_spacing, settings,
                                          args.seed, out / "synthetic")
                figures["synthetic"] = cases
                for method in ("lmi", "refined"):
                    for name in ("dice_flair", "dice_t1gd"):
                        figures[f"{method}_{name}_mean"] = float(np.mean([case[method][name] for case in cases]))
                print("mean Dice against the truth (FLAIR, T1Gd): " + "; ".join(
                    f"{method} {figures[f'{method}_dice_flair_mean']:.3f}, {figures[f'{method}_dice_t1gd_mean']:.3f}"
                    for method in ("lmi", "refined")))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
