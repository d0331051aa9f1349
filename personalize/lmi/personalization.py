"""Learn-Morph-Infer on a patient: register to the atlas, predict the growth there, and bring the tumour back.

Ezhov et al., "Learn-Morph-Infer: a new way of solving the inverse problem for brain tumor modeling",
Medical Image Analysis 83:102672 (2023), arXiv:2111.04090. Their network is trained on tumours simulated in
one atlas, so a patient is first brought into it, and the tumour the prediction implies is brought back:

1. the patient's anatomy on the scans' grid: the given tissue maps, or the default atlas on that grid for
   scans in MNI152 space (:func:`personalize.working_grid.scans_anatomy`, as ``personalize fit`` does);
2. :func:`personalize.registration.register` (ANTs SyN) of its tissue contrast (moving) onto that of the atlas
   the weights were trained on (fixed), rebuilt from the weights' record with
   :func:`personalize.lmi.dataset.config_from_json` and :func:`personalize.lmi.dataset.dataset_anatomy` and
   checked against the recorded SHA-256; the FLAIR abnormality (T1Gd ∪ FLAIR, dilated by the registration's
   margin) is left out of the metric: the atlas has no tumour there. Transforms stay in ``out_dir/registration``;
3. the T1Gd and FLAIR-abnormality masks warped onto the atlas (nearest label), cut to its tissue (the
   training masks are thresholds of a density that is zero outside tissue), fed to the network as
   0.666·T1Gd + 0.333·FLAIR (:mod:`personalize.lmi.inputs`), its outputs unscaled with the weights'
   :class:`personalize.lmi.parameters.OutputRanges` to (μ₁, μ₂, x, y, z) in the atlas's world space;
4. (D_w, ρ, T) from (μ₁, μ₂) at a fixed front speed v (:func:`reference_front_speed`): one scan fixes only
   D_w·T and ρ·T, and every v gives the same density at T (:mod:`personalize.lmi.parameters`);
5. the Fisher–Kolmogorov density at T grown in the atlas with the dataset's simulator, warped back onto the
   patient's grid (linear), and the seed carried to the patient's world space by the same registration
   (:func:`personalize.registration.points_to_moving`).

What :func:`fit_lmi` writes into ``out_dir`` (the files of ARCHITECTURE.md § What every run writes that a point
estimate has):

- ``summary.json``: ``method`` "lmi", ``simulator``, ``n_simulations`` (1), ``wall_s`` and the wall time of
  each step, ``log_evidence`` (null), ``parameters`` (D_w, ρ, T, the seed x, y, z in mm of the input images'
  world space, μ₁, μ₂: ``map`` holds the estimate; ``mean``, ``q05`` and ``q95`` are null),
  ``atlas_parameters`` (the same with the seed in the atlas's world space), the network's scaled outputs, the
  front speed and where it comes from, ``map_fit`` (Dice of the density thresholded at
  :func:`imaging_thresholds` against the T1Gd and FLAIR-abnormality masks), the weights file and its SHA-256,
  the atlas and the registration;
- ``map_density.nii.gz``: the density on the input grid with the input affine (the name ``personalize fit``
  gives its MAP density, so the tools reading that read this);
- ``figures/map_slices.png``: slices of the density with the masks' outlines;
- ``registration/``: the transforms and their sidecar (:class:`personalize.registration.Registration`).

No ``posterior.nc``: the network regresses one value per output (trained with an L1 loss, the conditional
median), not a distribution, and samples are not invented to fill one; tools that read a posterior
(``personalize compare``) do not take an LMI run.

Threads: ANTs registers in its own process on ``threads`` ITK threads (one, the default, makes the transforms
reproducible; :mod:`personalize.registration`). The warps run in this process on the ITK threads it started
with (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, read once); they interpolate and are deterministic either way.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personalize.io import Observation, write_output
from personalize.lmi.dataset import DatasetConfig, anatomy_record, config_from_json, dataset_anatomy, output_ranges
from personalize.lmi.inputs import encode_masks, network_input
from personalize.lmi.network import predict
from personalize.lmi.parameters import OUTPUT_NAMES, OUTPUT_UNITS, growth_from_mu
from personalize.lmi.weights import LoadedWeights, load_weights
from personalize.overlap import dice
from personalize.registration import Registration, points_to_moving, register, tissue_image, to_fixed, to_moving
from personalize.report import plot_orthogonal_slices
from personalize.working_grid import flair_abnormality, scans_anatomy
from simulators.anatomy import Anatomy
from simulators.fisher_kolmogorov import PARAMETER_NAMES, PARAMETER_UNITS, front_speed
from simulators.protocol import Simulator
from simulators.nifti import atomic_output

PathLike = str | os.PathLike[str]

REGISTRATION_DIR = "registration"
"""Subfolder of the output holding the registration's transforms."""

FRONT_SPEED_SOURCE = (
    "midpoint of the front speeds 2*sqrt(D_w*rho) at the low and at the high corner of the weights' training box, "
    "as LMI's published evaluation (github.com/IvanEz/learn-morph-infer, fullpipeline_onlymriinput/"
    "fullevaluation_mri.py: v = midpoint of [2 sqrt(4e-7), 2 sqrt(0.003)] cm/day) fixes it; every speed gives "
    "the same density at T")


@dataclass(frozen=True, eq=False)
class LMIFit:
    """What :func:`fit_lmi` returns.

    Attributes:
        parameters: ``D_w`` (mm²/day), ``rho`` (1/day), ``T`` (days), ``x, y, z`` (mm, the input images' world
            space), ``mu_1`` (mm), ``mu_2`` (1).
        atlas_parameters: the same with ``x, y, z`` in the atlas's world space, where the network predicts them.
        summary: the content of ``summary.json``.
        files: every file written, by name.
        registration: the patient-to-atlas registration (its transforms in ``out_dir/registration``).
    """

    parameters: dict[str, float]
    atlas_parameters: dict[str, float]
    summary: dict[str, Any]
    files: dict[str, Path]
    registration: Registration


def weights_atlas(weights: PathLike, loaded: LoadedWeights) -> tuple[DatasetConfig, Anatomy]:
    """The dataset configuration and the atlas the weights were trained on, rebuilt from their record.

    Raises:
        ValueError: naming the weights file, when its record lacks the dataset (``dataset``, ``anatomy``, as
            :func:`personalize.lmi.train.train` writes them), when the atlas rebuilt here differs from the
            recorded one (another atlas build), or when the recorded output ranges are not those of that
            dataset.
    """
    record = loaded.record
    if not isinstance(record.get("dataset"), dict) or not isinstance(record.get("anatomy"), dict):
        raise ValueError(f"{weights}: its record holds no training dataset ('dataset', 'anatomy'); the atlas the "
                         "network was trained on is unknown")
    config = config_from_json(record["dataset"])
    atlas = dataset_anatomy(config)
    if anatomy_record(atlas) != record["anatomy"]:
        raise ValueError(f"{weights}: the atlas rebuilt from its record differs from the one it was trained on "
                         "(shape, affine or SHA-256); these weights need that atlas build")
    expected = output_ranges(config, atlas)
    if not (np.allclose(expected.low, loaded.ranges.low) and np.allclose(expected.high, loaded.ranges.high)):
        raise ValueError(f"{weights}: its recorded output ranges are not those of its dataset")
    return config, atlas


def reference_front_speed(config: DatasetConfig) -> float:
    """The front speed (mm/day) at which (μ₁, μ₂) are turned into (D_w, ρ, T): the midpoint of
    :func:`simulators.fisher_kolmogorov.front_speed` at the low and at the high corner of ``config``'s
    (D_w, ρ) box (:data:`FRONT_SPEED_SOURCE`); 0.554 mm/day for the default box."""
    return 0.5 * (front_speed(config.d_w[0], config.rho[0]) + front_speed(config.d_w[1], config.rho[1]))


def imaging_thresholds(config: DatasetConfig) -> tuple[float, float]:
    """``(u_t1gd, u_flair)`` at which the predicted density is compared with the masks: the midpoints of the
    ranges the training masks were thresholded at (the network does not predict them)."""
    return float(np.mean(config.u_t1gd)), float(np.mean(config.u_flair))


def fit_lmi(
    observation: Observation,
    out_dir: PathLike,
    *,
    weights: PathLike,
    tissue: Anatomy | None = None,
    seed: int = 0,
    threads: int = 1,
    progress: bool = True,
    simulator: Simulator | None = None,
    simulator_record: dict[str, Any] | None = None,
) -> LMIFit:
    """Personalize the Fisher–Kolmogorov model to ``observation`` with trained Learn-Morph-Infer weights
    (Ezhov et al., Med Image Anal 2023, arXiv:2111.04090) and write the run's folder (module docstring).

    Args:
        observation: the scans (:func:`personalize.io.load_observation`); PET, if any, is not used.
        out_dir: output folder (created).
        weights: a weights file of :func:`personalize.lmi.weights.save_weights` with its record, as
            :func:`personalize.lmi.train.train` writes it.
        tissue: the patient's tissue maps on the scans' grid, or None for the default atlas (scans in MNI152
            space).
        seed: ANTs' random seed.
        threads: ITK threads of the registration (1: reproducible transforms).
        progress: a progress bar over the simulation's time steps.
        simulator: what grows the estimate in the atlas (default: the solver the training data were grown with);
            ``simulator_record`` is what ``summary.json`` records of it (:func:`personalize.fit.growth_simulator`).

    Raises:
        ValueError: naming the weights file, when it is missing its record, changed since it was saved, or
            trained on an atlas that cannot be rebuilt; tissue maps on another grid than the scans; masks that
            the registration carries outside the atlas's tissue.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    loaded = load_weights(weights)
    config, atlas = weights_atlas(weights, loaded)
    patient = scans_anatomy(observation, tissue)
    flair = flair_abnormality(observation)
    registration = register(tissue_image(patient), tissue_image(atlas), out_dir=out_dir / REGISTRATION_DIR,
                            moving_mask_out=(flair > 0).astype(np.uint8), seed=seed, threads=threads)

    tick = time.perf_counter()
    in_tissue = atlas.tissue > 0
    t1gd_atlas = to_fixed(registration, observation.t1gd, "label", affine=observation.affine) * in_tissue
    flair_atlas = to_fixed(registration, flair, "label", affine=observation.affine) * in_tissue
    if not flair_atlas.any():
        raise ValueError(f"the tumour masks fall outside the atlas's tissue after the registration (transforms in "
                         f"{registration.out_dir}); check that the tissue maps lie on the scans")
    scaled = predict(loaded.network, network_input(encode_masks(t1gd_atlas, flair_atlas))[None, None])[0]
    outputs = dict(zip(OUTPUT_NAMES, loaded.ranges.unscale(scaled.double().numpy()).tolist()))
    velocity = reference_front_speed(config)
    d_w, rho, t = growth_from_mu(outputs["mu_1"], outputs["mu_2"], velocity)
    seed_atlas = np.array([outputs[name] for name in "xyz"])
    inference_s = time.perf_counter() - tick

    tick = time.perf_counter()
    growth = torch.tensor([[d_w, rho, t, *seed_atlas]], dtype=torch.float64)
    grower = simulator if simulator is not None else config.simulator
    density_atlas = grower.simulate(growth, atlas, progress=progress)[0].numpy()
    simulation_s = time.perf_counter() - tick

    tick = time.perf_counter()
    density = to_moving(registration, density_atlas, "density", affine=atlas.affine)
    seed_patient = points_to_moving(registration, seed_atlas[None])[0]
    warp_back_s = time.perf_counter() - tick

    atlas_parameters = {"D_w": d_w, "rho": rho, "T": t, **dict(zip("xyz", seed_atlas.tolist())),
                        "mu_1": outputs["mu_1"], "mu_2": outputs["mu_2"]}
    parameters = atlas_parameters | dict(zip("xyz", seed_patient.tolist()))
    u_t1gd, u_flair = imaging_thresholds(config)

    files: dict[str, Path] = {"map_density": write_output(density, observation, out_dir / "map_density.nii.gz")}
    title = ", ".join(f"{name}={parameters[name]:.3g}" for name in PARAMETER_NAMES)
    files["map_slices"] = plot_orthogonal_slices(
        density, patient, out_dir / "figures" / "map_slices.png", title=f"LMI: {title}",
        outlines={"T1Gd": observation.t1gd > 0, "FLAIR": flair > 0}, thresholds=(u_flair, u_t1gd))
    files["registration"] = registration.out_dir
    summary: dict[str, Any] = {
        "method": "lmi",
        "simulator": (simulator_record or {}).get("name", "fisher_kolmogorov"),
        "simulator_record": simulator_record or {"name": "fisher_kolmogorov"},
        "n_simulations": 1,
        "wall_s": time.perf_counter() - started,
        "wall_s_registration": registration.wall_s,
        "wall_s_inference": inference_s,
        "wall_s_simulation": simulation_s,
        "wall_s_warp_back": warp_back_s,
        "log_evidence": None,
        "parameters": _entries(parameters),
        "atlas_parameters": _entries(atlas_parameters),
        "network_outputs_scaled": dict(zip(OUTPUT_NAMES, scaled.double().tolist())),
        "front_speed": {"value": velocity, "unit": "mm/day", "source": FRONT_SPEED_SOURCE},
        "map_fit": {
            "dice_t1gd": dice(density > u_t1gd, observation.t1gd > 0),
            "dice_flair": dice(density > u_flair, flair > 0),
            "u_t1gd": u_t1gd,
            "u_flair": u_flair,
            "thresholds": "midpoints of the u_t1gd and u_flair ranges the training masks were drawn with",
        },
        "weights": {"file": str(Path(weights).resolve()), "sha256": loaded.record["sha256"],
                    "network": loaded.record["network"], "data_seed": loaded.record.get("data_seed")},
        "atlas": {**anatomy_record(atlas), "spacing_mm": list(atlas.spacing_mm)},
        "registration": {"folder": REGISTRATION_DIR, **registration.to_json()},
        "grid": {"input_shape": list(observation.shape), "input_spacing_mm": list(observation.spacing_mm)},
        "world_space": "x, y, z are mm in the world (scanner) coordinates of the input images' affine; "
                       "atlas_parameters' in the atlas's (MNI152) world space",
        "posterior": "none: LMI gives a point estimate ('map'), not samples; no posterior.nc is written",
        "files": {name: str(path) for name, path in files.items()},
    }
    files["summary"] = out_dir / "summary.json"
    with atomic_output(files["summary"]) as temporary:
        temporary.write_text(json.dumps(summary, indent=2) + "\n")
    return LMIFit(parameters=parameters, atlas_parameters=atlas_parameters, summary=summary, files=files,
                  registration=registration)


def _entries(values: dict[str, float]) -> dict[str, dict[str, Any]]:
    """``{name: {"map", "mean", "q05", "q95", "unit"}}`` of a point estimate: the value as ``map``, no spread."""
    units = PARAMETER_UNITS | OUTPUT_UNITS
    return {name: {"map": float(value), "mean": None, "q05": None, "q95": None, "unit": units[name]}
            for name, value in values.items()}
