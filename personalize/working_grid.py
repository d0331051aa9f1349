"""The grid an inference runs on: the patient's tissue and scans, coarsened and cropped around the tumour.

A fit simulates thousands of tumours, so it works on a coarser grid than the scans (default 2 mm) and only
on the box around the abnormality (FLAIR ∪ T1Gd) plus ``margin_mm``, beyond which no plausible tumour
reaches (the box has no-flux walls). The FLAIR mask is completed with the T1Gd one
(:func:`flair_abnormality`). Scans follow the tissue onto that grid by overlap-weighted averaging
(:meth:`simulators.anatomy.Anatomy.resample_array`): a mask voxel is positive where the fine mask covers at
least half of it, a PET voxel holds the mean uptake over where the map was measured
(:func:`measured_pet_region`). Results computed there go back to the input grid by
trilinear interpolation through world coordinates (:meth:`WorkingProblem.to_input_grid`).

:class:`ImageLogLikelihood` is the batched log-likelihood an engine calls: simulate the growth parameters
on the working anatomy, score the densities against the working scans with the imaging parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from likelihoods.joint import IMAGING_PARAMETER_NAMES, ImageObservation, JointLikelihood
from personalize.io import Observation
from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas
from simulators.fisher_kolmogorov import PARAMETER_NAMES as MODEL_PARAMETER_NAMES
from simulators.fisher_kolmogorov import FisherKolmogorov
from simulators.nifti import AFFINE_TOLERANCE_MM, grid_offset_mm

DEFAULT_SPACING_MM = 2.0
DEFAULT_MARGIN_MM = 30.0
"""Crop margin around the abnormality: 13 diffusion lengths √(D_w/ρ) of a typical glioma (2.3 mm)."""

MASK_COVERAGE = 0.5
"""A coarse voxel is mask-positive where the fine mask covers at least this fraction of it."""

PET_CUT_FRACTION = 0.1
"""A PET map that reads exactly 0 on more than this fraction of the abnormality is cut to its uptake region."""


def flair_abnormality(observation: Observation) -> np.ndarray:
    """The FLAIR-visible tumour as the model sees it: the FLAIR mask completed with the T1Gd one (float 0/1).

    The model's FLAIR threshold lies below its T1Gd threshold, so every T1Gd-visible voxel is FLAIR-visible;
    segmentations that label the FLAIR file as edema only (the shared GliomaSolver patient's does) would
    otherwise read the core as FLAIR-negative and contradict the model.
    """
    return np.maximum(observation.flair, observation.t1gd)


def crop_wall_density(density: np.ndarray) -> float:
    """The largest density on the six faces of the working box. Beyond the crop a tumour cannot grow (the
    walls are no-flux), so a density well above 0 there means the margin, not the anatomy, shaped the
    tumour: refit with a larger ``margin_mm``."""
    return float(max(density.take([0, -1], axis=axis).max() for axis in range(3)))


def measured_pet_region(pet: np.ndarray, abnormal: np.ndarray) -> np.ndarray:
    """Where a PET map was measured: everywhere for a full map, where it is > 0 for a map cut to its uptake.

    A full FET-PET map (uptake over the brain, raw or background-subtracted) reads exactly 0 only where
    noise is clipped, which inside a visible tumour is rare; those zeros are censored readings
    (:mod:`likelihoods.pet`). A map that reads 0 on more than ``PET_CUT_FRACTION`` of the abnormality
    (T1Gd ∪ FLAIR) has been cut to a region, as GliomaSolver's preprocessing writes it (PET kept only where
    T1Gd enhances): its zeros are unmeasured voxels, not uptake 0, and the likelihood must skip them.
    """
    zero_fraction = float(np.mean(pet[abnormal] == 0))
    return pet > 0 if zero_fraction > PET_CUT_FRACTION else np.ones(pet.shape, dtype=bool)


def carry_pet(
    pet: np.ndarray, measured: np.ndarray, carry: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """PET and its measured region carried onto a coarser grid by ``carry`` (an overlap-weighted average):
    a coarse voxel is measured where the fine region covers at least ``MASK_COVERAGE`` of it, and holds the
    mean uptake over its measured part (unmeasured zeros would dilute the region's edge)."""
    coverage = carry(measured.astype(np.float32))
    total = carry(np.where(measured, pet, 0.0).astype(np.float32))
    mean = np.where(coverage > 0, total / np.maximum(coverage, 1e-12), 0.0).astype(np.float32)
    return mean, coverage >= MASK_COVERAGE


def anatomy_on_grid(source: Anatomy, shape: tuple[int, int, int], affine: np.ndarray) -> Anatomy:
    """``source``'s tissue maps carried onto the grid ``(shape, affine)`` by trilinear interpolation
    through world coordinates (zero outside ``source``'s field of view)."""
    blank = np.zeros(shape, dtype=np.float32)
    target = Anatomy(wm=blank, gm=blank, csf=blank, affine=affine)
    maps = {name: source.resample_array_to(getattr(source, name), target) for name in ("wm", "gm", "csf")}
    return Anatomy(**maps, affine=affine)


def atlas_on_grid(shape: tuple[int, int, int], affine: np.ndarray) -> Anatomy:
    """The default atlas on the scans' grid, for scans already in MNI152 space.

    When the grid is the atlas resampled to an isotropic spacing (as ``personalize synth`` writes), that
    volume-preserving resampling is used as is; any other grid interpolates the 1 mm atlas.
    """
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    if np.allclose(spacing, spacing[0], rtol=1e-6):
        atlas = default_atlas(spacing_mm=float(spacing[0]))
        if atlas.shape == tuple(shape) and grid_offset_mm(atlas.affine, affine, shape) <= AFFINE_TOLERANCE_MM:
            return atlas
    return anatomy_on_grid(default_atlas(spacing_mm=None), shape, affine)


def scans_anatomy(observation: Observation, tissue: Anatomy | None) -> Anatomy:
    """The anatomy on the scans' grid: ``tissue`` (the patient's maps, checked to lie on that grid), or the
    default atlas on it (:func:`atlas_on_grid`) when ``tissue`` is None, for scans in MNI152 space.

    Raises:
        ValueError: tissue maps on another grid than the scans.
    """
    if tissue is None:
        return atlas_on_grid(observation.shape, observation.affine)
    if tissue.shape != observation.shape or grid_offset_mm(tissue.affine, observation.affine,
                                                           observation.shape) > AFFINE_TOLERANCE_MM:
        raise ValueError(f"the tissue maps (shape {tissue.shape}) and the scans (shape {observation.shape}) lie on "
                         "different grids; resample or register them onto one grid first")
    return tissue


@dataclass(frozen=True, eq=False)
class WorkingProblem:
    """Tissue and scans on the working grid, with the input grid to map results back to.

    Attributes:
        anatomy: tissue on the working grid (coarsened, cropped).
        scans: the observation on the working grid.
        input_anatomy: tissue on the input (canonical) grid of ``observation``.
        observation: the scans as read.
    """

    anatomy: Anatomy
    scans: ImageObservation
    input_anatomy: Anatomy
    observation: Observation

    def to_input_grid(self, array: np.ndarray) -> np.ndarray:
        """An array on the working grid carried onto the input grid (zero outside the working box)."""
        return self.anatomy.resample_array_to(array, self.input_anatomy)

    def coarsened(self, factor: int = 2) -> WorkingProblem:
        """The same problem on a grid ``factor`` times coarser (same box, same input grid): the cheap level
        of a multilevel fit. Scans are carried as onto the working grid (coverage ≥ ½, mean PET)."""
        if factor < 2:
            raise ValueError(f"a coarser grid needs factor >= 2, got {factor}")
        spacing = tuple(factor * h for h in self.anatomy.spacing_mm)
        coarse = self.anatomy.resample(spacing)

        def carry(scan: torch.Tensor | None) -> np.ndarray | None:
            return None if scan is None else self.anatomy.resample_array(scan.cpu().numpy(), spacing)

        t1gd, flair = carry(self.scans.t1gd), carry(self.scans.flair)
        pet = region = None
        if self.scans.pet is not None:
            pet, region = carry_pet(self.scans.pet.cpu().numpy(), self.scans.pet_valid.cpu().numpy(),
                                    lambda array: self.anatomy.resample_array(array, spacing))
        scans = ImageObservation(
            t1gd=None if t1gd is None else t1gd >= MASK_COVERAGE,
            flair=None if flair is None else flair >= MASK_COVERAGE,
            pet=None if pet is None else torch.from_numpy(pet),
            pet_valid=None if pet is None else torch.from_numpy(region & ((coarse.wm + coarse.gm) > 0)),
        )
        return WorkingProblem(anatomy=coarse, scans=scans, input_anatomy=self.input_anatomy,
                              observation=self.observation)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one working voxel."""
        return float(np.prod(self.anatomy.spacing_mm))

    def describe(self) -> dict[str, object]:
        """Shapes and spacings of both grids and the mask voxel counts on the working grid."""
        return {
            "input_shape": list(self.input_anatomy.shape),
            "input_spacing_mm": list(self.input_anatomy.spacing_mm),
            "working_shape": list(self.anatomy.shape),
            "working_spacing_mm": list(self.anatomy.spacing_mm),
            "working_t1gd_voxels": int(self.scans.t1gd.sum()) if self.scans.t1gd is not None else 0,
            "working_flair_voxels": int(self.scans.flair.sum()) if self.scans.flair is not None else 0,
            "working_pet_voxels": int(self.scans.pet_valid.sum()) if self.scans.pet_valid is not None else 0,
        }


def build_working_problem(
    observation: Observation,
    tissue: Anatomy | None = None,
    *,
    spacing_mm: float = DEFAULT_SPACING_MM,
    margin_mm: float = DEFAULT_MARGIN_MM,
) -> WorkingProblem:
    """The working grid for ``observation`` on ``tissue`` (the patient's maps on the scans' grid), or on
    the default atlas when ``tissue`` is None (the scans must then be in MNI152 space).

    The input grid is coarsened to ``spacing_mm`` only along axes finer than it; then cropped to the
    abnormality's bounding box plus ``margin_mm``.

    Raises:
        ValueError: tissue on another grid than the scans, an empty abnormality, a bad spacing or margin.
    """
    if not math.isfinite(spacing_mm) or spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be a positive number, got {spacing_mm}")
    if not math.isfinite(margin_mm) or margin_mm < 0:
        raise ValueError(f"margin_mm must be a number >= 0, got {margin_mm}")
    tissue = scans_anatomy(observation, tissue)
    abnormal = (observation.t1gd > 0) | (observation.flair > 0)
    if not abnormal.any():
        raise ValueError("the T1Gd and FLAIR masks are both empty: there is no tumour to fit")
    flair_abnormal = flair_abnormality(observation)

    spacing = np.maximum(np.asarray(tissue.spacing_mm), spacing_mm)
    coarsen = not np.allclose(spacing, tissue.spacing_mm, rtol=1e-6)
    coarse = tissue.resample(tuple(spacing)) if coarsen else tissue

    def carry(array: np.ndarray) -> np.ndarray:
        return tissue.resample_array(array, tuple(spacing)) if coarsen else np.array(array, np.float32)

    t1gd = carry(observation.t1gd) >= MASK_COVERAGE
    flair = carry(flair_abnormal) >= MASK_COVERAGE
    pet = region = None
    if observation.pet is not None:
        pet, region = carry_pet(observation.pet, measured_pet_region(observation.pet, abnormal), carry)
    if not (t1gd | flair).any():
        t1gd, flair = carry(observation.t1gd) > 0, carry(flair_abnormal) > 0  # a tumour smaller than a voxel

    abnormal_voxels = np.argwhere(t1gd | flair)
    lo, hi = abnormal_voxels.min(axis=0), abnormal_voxels.max(axis=0) + 1
    pad = np.ceil(margin_mm / np.asarray(coarse.spacing_mm) - 1e-9).astype(int)
    box = tuple(slice(int(max(0, a - p)), int(min(n, b + p))) for a, b, p, n in zip(lo, hi, pad, coarse.shape))
    anatomy = coarse.crop(box)  # type: ignore[arg-type]
    tissue_mask = torch.from_numpy((anatomy.wm + anatomy.gm) > 0)
    scans = ImageObservation(
        t1gd=torch.from_numpy(np.ascontiguousarray(t1gd[box])),
        flair=torch.from_numpy(np.ascontiguousarray(flair[box])),
        pet=None if pet is None else torch.from_numpy(np.ascontiguousarray(pet[box])),
        pet_valid=None if pet is None else tissue_mask & torch.from_numpy(np.ascontiguousarray(region[box])),
    )
    return WorkingProblem(anatomy=anatomy, scans=scans, input_anatomy=tissue, observation=observation)


@dataclass(frozen=True, eq=False)
class ImageLogLikelihood:
    """log p(scans | θ) for a batch θ[N, P] of named parameters: simulate, then score (picklable).

    Attributes:
        simulator: the growth model; its parameters (``D_w, rho, T, x, y, z``) are taken from θ by name.
        anatomy: the working anatomy.
        scans: the working scans.
        likelihood: the image likelihood; the imaging parameters it needs are taken from θ by name.
        parameter_names: the names of θ's columns.
        device: where to simulate and score.
        weight: multiplies the log-likelihood. A coarse level of a multilevel fit takes the ratio of its
            voxel volume to the fine one's, since each term is a sum over voxels: its scale then matches
            the fine level's, and the bridge between them is short.
    """

    simulator: FisherKolmogorov
    anatomy: Anatomy
    scans: ImageObservation
    likelihood: JointLikelihood
    parameter_names: tuple[str, ...]
    device: str = "cpu"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")
        needed = MODEL_PARAMETER_NAMES + self.likelihood.parameter_names(self.scans)
        missing = [name for name in needed if name not in self.parameter_names]
        if missing:
            raise ValueError(f"the parameters {', '.join(missing)} are needed but θ holds only "
                             f"{', '.join(self.parameter_names)}")
        object.__setattr__(self, "scans", self.scans.to(self.device))

    def density(self, theta: torch.Tensor) -> torch.Tensor:
        """Simulated densities ``[N, *anatomy.shape]`` of θ's growth parameters."""
        columns = [self.parameter_names.index(name) for name in MODEL_PARAMETER_NAMES]
        return self.simulator.simulate(theta[:, columns].to(self.device, torch.float32), self.anatomy)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        density = self.density(theta)
        imaging = {name: theta[:, self.parameter_names.index(name)].to(self.device, torch.float32)
                   for name in IMAGING_PARAMETER_NAMES if name in self.parameter_names}
        return self.weight * self.likelihood.log_likelihood(density, imaging, self.scans).double().cpu()
