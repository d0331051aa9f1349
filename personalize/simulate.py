"""One forward simulation from parameters to files: density NIfTI, slice figure and a JSON record.

The anatomy is the default atlas (MNI152 2009a, at ``spacing_mm``) or a patient's tissue maps. Results are
written on the grid the anatomy came from, with its affine: a patient's own file grid (resampled back when
the simulation ran at another spacing), or the atlas grid at the chosen spacing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas
from simulators.fisher_kolmogorov import PARAMETER_NAMES, PARAMETER_UNITS, FisherKolmogorov
from simulators.nifti import reorient_to, write_nifti
from personalize.report import plot_orthogonal_slices

DETECTION_THRESHOLDS = (0.25, 0.7)
"""Densities commonly taken as the FLAIR (0.25) and T1Gd (0.7) visibility thresholds."""


@dataclass(frozen=True)
class TissueFiles:
    """A patient's tissue probability maps (CSF optional)."""

    wm: Path
    gm: Path
    csf: Path | None = None


@dataclass(frozen=True)
class SimulationRecord:
    """What a simulation run wrote and measured (also saved as ``simulation.json``)."""

    parameters: dict[str, float]
    units: dict[str, str]
    anatomy: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    steps: int
    dt_days: float
    wall_s: float
    volume_ml_above: dict[str, float]
    density: str
    figure: str


def load_anatomy(source: TissueFiles | None, spacing_mm: float | None) -> tuple[Anatomy, np.ndarray | None]:
    """The anatomy to simulate on, and the affine of the file grid to write back to (None for the atlas)."""
    if source is None:
        return default_atlas(spacing_mm=spacing_mm), None
    anatomy = Anatomy.from_nifti(source.wm, source.gm, source.csf)
    source_affine = np.asarray(nib.load(str(source.wm)).affine, dtype=np.float64)
    return anatomy, source_affine


def run_simulation(
    parameters: dict[str, float],
    out: str | os.PathLike[str],
    *,
    tissue: TissueFiles | None = None,
    spacing_mm: float | None = 2.0,
    simulator: FisherKolmogorov | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> SimulationRecord:
    """Simulate Fisher–Kolmogorov growth for one parameter set and write the results into ``out``.

    Args:
        parameters: ``D_w`` (mm²/day), ``rho`` (1/day), ``T`` (days), ``x, y, z`` (seed, mm world).
        out: output folder; nothing is written there unless the whole run succeeds.
        tissue: a patient's tissue maps, or None for the default atlas.
        spacing_mm: grid spacing to simulate at (None: the anatomy's own grid; the atlas then is 1 mm).
        simulator: the model and its numerics (default settings when None).
        device: torch device to run on.
        progress: show a progress bar over time steps.

    Raises:
        simulators.nifti.NiftiError: a tissue file cannot be used.
        ValueError: parameters out of range, or a seed with no tissue around it.
    """
    missing = [name for name in PARAMETER_NAMES if name not in parameters]
    if missing:
        raise ValueError(f"missing parameters: {', '.join(missing)}")
    simulator = simulator or FisherKolmogorov()
    file_anatomy, source_affine = load_anatomy(tissue, spacing_mm if tissue is None else None)
    anatomy = file_anatomy if tissue is None or spacing_mm is None else file_anatomy.resample(spacing_mm)
    params = torch.tensor([[float(parameters[name]) for name in PARAMETER_NAMES]], dtype=torch.float32, device=device)
    plan = simulator.plan(params, anatomy)
    if float(simulator.initial_density(params, anatomy).sum()) == 0.0:
        x, y, z = (parameters[name] for name in ("x", "y", "z"))
        raise ValueError(f"the seed at ({x:g}, {y:g}, {z:g}) mm has no tissue within "
                         f"{simulator.seed.support_mm:.1f} mm: place it in white or grey matter")

    start = time.perf_counter()
    density = simulator.simulate(params, anatomy, progress=progress)[0].cpu().numpy()
    wall_s = time.perf_counter() - start

    if anatomy is not file_anatomy:
        density = anatomy.resample_array_to(density, file_anatomy)
    voxel_ml = float(np.prod(file_anatomy.spacing_mm)) / 1000.0
    volumes = {f"{t:g}": float((density > t).sum()) * voxel_ml for t in DETECTION_THRESHOLDS}

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".simulate-", dir=out.parent))
    try:
        if source_affine is None:
            write_nifti(density.astype(np.float32), file_anatomy.affine, staging / "density.nii.gz")
        else:
            write_nifti(reorient_to(density.astype(np.float32), file_anatomy.affine, source_affine),
                        source_affine, staging / "density.nii.gz")
        title = ", ".join(f"{name}={parameters[name]:g}" for name in PARAMETER_NAMES)
        plot_orthogonal_slices(density, file_anatomy, staging / "density.png", title=title)
        record = SimulationRecord(
            parameters={name: float(parameters[name]) for name in PARAMETER_NAMES},
            units=dict(PARAMETER_UNITS),
            anatomy="MNI152 2009a (nilearn)" if tissue is None else f"{tissue.wm}, {tissue.gm}",
            shape=anatomy.shape,
            spacing_mm=anatomy.spacing_mm,
            steps=int(plan.steps[0]),
            dt_days=float(plan.dt[0]),
            wall_s=wall_s,
            volume_ml_above=volumes,
            density=str(out / "density.nii.gz"),
            figure=str(out / "density.png"),
        )
        (staging / "simulation.json").write_text(json.dumps(asdict(record), indent=2) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    finally:
        for item in staging.glob("*"):
            item.unlink()
        staging.rmdir()
    return record
