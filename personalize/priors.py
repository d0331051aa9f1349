"""The prior over a tumour model's parameters: named, with units and bounds, usable by sbi and pyro as is.

A :class:`Prior` is uniform over a product of

* a box of physical parameters (:data:`DEFAULT_BOUNDS`, units in :data:`UNITS`): ``D_w`` (mm²/day),
  ``rho`` (1/day), ``T`` (days), and the imaging parameters ``u_t1gd``, ``u_flair``, ``sigma_alpha`` and,
  only when the observation has PET, ``pet_scale``, ``pet_sigma``;
* the seed position ``x, y, z`` (mm, in the anatomy's world space): uniform over the union of *candidate
  voxels*, each taken as its full voxel cell (the parallelepiped ``affine · ([i-½, i+½]³)``). Candidates
  are the tissue voxels (``wm + gm ≥ 0.5``) within ``seed_margin_mm`` (default 5 mm) of the abnormality,
  ``FLAIR ∪ T1Gd`` (:func:`seed_candidates`).

Parameter order: ``D_w, rho, T, x, y, z, u_t1gd, u_flair, sigma_alpha[, pet_scale, pet_sigma]``.

The density is normalised exactly: inside the support ``log_prob = -Σ log(high - low) - log(V)`` with ``V``
the candidates' total volume in mm³; outside it is ``-inf`` (never an exception: sbi evaluates points
outside the prior).

Change of variables (:meth:`Prior.to_unbounded`, :meth:`Prior.from_unbounded`): each coordinate is mapped by
the logit of its value normalised to an *outer box*: the parameter's bounds for box parameters, and for the
seed the world-space bounding box of the candidate voxel cells. The unbounded space therefore also holds
seeds that fall outside the candidate voxels (in CSF, say): :meth:`Prior.log_prob` is ``-inf`` there, and so
is :meth:`Prior.log_prob_unbounded`. ``torch.distributions.biject_to(prior.support)`` returns the same map
(as a torch ``Transform``), which is what sbi's MCMC and pyro's HMC/NUTS use.

Sampling: :meth:`Prior.sample` draws from torch's global generator as every torch distribution does;
:meth:`Prior.sample_with` takes an explicit ``torch.Generator`` for reproducible draws. Samples are float32
by default (sbi requires it); seed samples keep a few float roundings away from voxel faces so that, once
rounded to that precision, each still lies in the voxel it was drawn in.

Bounds can be overridden from a TOML file (``[bounds]`` table, ``D_w = [0.05, 1.0]``) and from the command
line (``"D_w=0.05:1.0"``, :func:`parse_bound_overrides`); :meth:`Prior.from_config` applies defaults, then
the file, then the explicit overrides.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from scipy import ndimage
from torch.distributions import biject_to, constraints, transform_to
from torch.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    IndependentTransform,
    SigmoidTransform,
    Transform,
)

from simulators.nifti import AFFINE_TOLERANCE_MM, grid_offset_mm
from simulators.toml_file import read_toml

PathLike = str | os.PathLike[str]

DYNAMIC_NAMES = ("D_w", "rho", "T")
SEED_NAMES = ("x", "y", "z")
IMAGING_NAMES = ("u_t1gd", "u_flair", "sigma_alpha")
PET_NAMES = ("pet_scale", "pet_sigma")
BOX_NAMES = DYNAMIC_NAMES + IMAGING_NAMES + PET_NAMES
"""Every parameter with a box (uniform) prior, whether or not a given prior holds it."""

UNITS: dict[str, str] = {
    "D_w": "mm^2/day", "rho": "1/day", "T": "day", "x": "mm", "y": "mm", "z": "mm",
    "u_t1gd": "1", "u_flair": "1", "sigma_alpha": "1", "pet_scale": "1", "pet_sigma": "1",
}
"""Unit of each parameter (``"1"``: dimensionless)."""

DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "D_w": (0.02, 1.5),
    "rho": (0.002, 0.2),
    "T": (50.0, 1500.0),
    "u_t1gd": (0.5, 0.85),
    "u_flair": (0.05, 0.5),
    "sigma_alpha": (0.02, 0.1),
    "pet_scale": (0.6, 1.02),
    "pet_sigma": (0.01, 0.25),
}
"""Default uniform bounds of the box parameters, in the units of :data:`UNITS`."""

PHYSICAL_RANGE: dict[str, tuple[float, float]] = {
    "D_w": (0.0, math.inf),
    "rho": (0.0, math.inf),
    "T": (0.0, math.inf),
    "u_t1gd": (0.0, 1.0),
    "u_flair": (0.0, 1.0),
    "sigma_alpha": (0.0, math.inf),
    "pet_scale": (0.0, math.inf),
    "pet_sigma": (0.0, math.inf),
}
"""Closed range any bound must lie in: no negative diffusivity, rate, time or noise; thresholds in [0, 1]."""

DEFAULT_SEED_MARGIN_MM = 5.0
"""How far (mm, Euclidean between voxel centres) beyond the FLAIR ∪ T1Gd abnormality a seed may lie."""

TISSUE_THRESHOLD = 0.5
"""A voxel is tissue, and may hold the seed, when ``wm + gm`` reaches this."""

def seed_candidates(anatomy: Any, observation: Any, seed_margin_mm: float = DEFAULT_SEED_MARGIN_MM) -> np.ndarray:
    """Boolean mask of the voxels that may hold the seed, on the anatomy's grid.

    Candidates are tissue voxels (``wm + gm ≥`` :data:`TISSUE_THRESHOLD`) whose centre lies within
    ``seed_margin_mm`` of an abnormal voxel centre, the abnormality being ``FLAIR ∪ T1Gd`` (mask value > 0.5).
    Distances are Euclidean with the grid's spacing along each axis (``anatomy.spacing_mm``); a margin of 0
    keeps the abnormality itself.

    Args:
        anatomy: a :class:`simulators.anatomy.Anatomy` (anything with ``wm``, ``gm``, ``affine``, ``shape``).
        observation: a :class:`personalize.io.Observation` or anything with ``t1gd``, ``flair`` arrays and,
            optionally, an ``affine``; it must lie on the anatomy's grid (resample or register first).
        seed_margin_mm: dilation of the abnormality, mm, finite and ≥ 0.

    Raises:
        ValueError: the grids differ (shape, or corner voxels more than :data:`AFFINE_TOLERANCE_MM` apart),
            the margin is negative or not finite, the abnormality is empty, or no tissue voxel is a candidate.
    """
    margin = float(seed_margin_mm)
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"seed_margin_mm must be a finite number >= 0, got {seed_margin_mm!r}")
    shape = tuple(np.shape(anatomy.wm))
    for name in ("t1gd", "flair"):
        if tuple(np.shape(getattr(observation, name))) != shape:
            raise ValueError(f"observation {name} mask has shape {tuple(np.shape(getattr(observation, name)))} "
                             f"but the anatomy's grid is {shape}; resample or register them onto one grid first")
    affine = np.asarray(anatomy.affine, dtype=np.float64)
    other = getattr(observation, "affine", None)
    if other is not None:
        distance = grid_offset_mm(affine, other, shape)
        if distance > AFFINE_TOLERANCE_MM:
            raise ValueError(f"observation and anatomy have the same shape {shape} but different affines "
                             f"(voxels up to {distance:.3g} mm apart); put them on one grid first")
    abnormal = (np.asarray(observation.t1gd) > 0.5) | (np.asarray(observation.flair) > 0.5)
    if not abnormal.any():
        raise ValueError("the observation's FLAIR and T1Gd masks are both empty: no abnormality to place a seed in")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    distance_mm = ndimage.distance_transform_edt(~abnormal, sampling=spacing)
    near = distance_mm <= margin * (1 + 1e-9) + 1e-9
    tissue = np.clip(np.asarray(anatomy.wm, np.float64) + np.asarray(anatomy.gm, np.float64), 0.0, 1.0)
    candidates = near & (tissue >= TISSUE_THRESHOLD)
    if not candidates.any():
        raise ValueError(f"no tissue voxel (wm + gm >= {TISSUE_THRESHOLD}) lies within seed_margin_mm="
                         f"{margin:g} of the FLAIR/T1Gd abnormality ({int(abnormal.sum())} voxels); "
                         "check the registration or raise seed_margin_mm")
    return candidates


def in_world_box(anatomy: Any, box: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """Boolean mask of the voxels of the anatomy's grid whose centre lies in ``box`` (``{"x", "y", "z"}`` →
    ``(low, high)``, mm in the anatomy's world space; closed intervals)."""
    missing = [name for name in SEED_NAMES if name not in box]
    if missing:
        raise ValueError(f"the seed's box needs x, y and z; {', '.join(missing)} missing")
    affine = np.asarray(anatomy.affine, dtype=np.float64)
    index = np.indices(tuple(np.shape(anatomy.wm)), dtype=np.float64)
    world = np.tensordot(affine[:3, :3], index, axes=1) + affine[:3, 3, None, None, None]
    inside = np.ones(world.shape[1:], dtype=bool)
    for axis, name in enumerate(SEED_NAMES):
        low, high = box[name]
        inside &= (world[axis] >= low) & (world[axis] <= high)
    return inside


def check_bounds(name: str, low: float, high: float) -> tuple[float, float]:
    """``(low, high)`` as floats if they are valid bounds of box parameter ``name``.

    Raises:
        ValueError: naming the parameter, for an unknown or seed name, non-finite values, ``low >= high``, or a
            bound outside :data:`PHYSICAL_RANGE` (e.g. a negative diffusivity or time).
    """
    if name in SEED_NAMES:
        raise ValueError(f"{name}: the seed's bounds come from the observation (candidate voxels within "
                         "seed_margin_mm of the abnormality), not from bounds; change seed_margin_mm instead")
    if name not in PHYSICAL_RANGE:
        raise ValueError(f"{name}: unknown parameter; bounds can be set for {', '.join(BOX_NAMES)}")
    try:
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: bounds must be two numbers, got {low!r}, {high!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name}: bounds must be finite, got [{low:g}, {high:g}]")
    if low >= high:
        raise ValueError(f"{name}: lower bound {low:g} must be below upper bound {high:g}")
    least, most = PHYSICAL_RANGE[name]
    if low < least or high > most:
        raise ValueError(f"{name}: bounds [{low:g}, {high:g}] {UNITS[name]} leave the physical range "
                         f"[{least:g}, {most:g}]")
    return low, high


def parse_bound_override(text: str) -> tuple[str, tuple[float, float]]:
    """Parse one command-line override ``"NAME=LOW:HIGH"`` (e.g. ``"D_w=0.05:1.0"``) and check it.

    Raises:
        ValueError: for a malformed item, or anything :func:`check_bounds` refuses.
    """
    name, sep, rest = str(text).partition("=")
    name = name.strip()
    low, colon, high = rest.partition(":")
    if not sep or not colon or not name:
        raise ValueError(f"bound override {text!r} must read NAME=LOW:HIGH, e.g. D_w=0.05:1.0")
    try:
        values = float(low), float(high)
    except ValueError:
        raise ValueError(f"{name}: bounds in {text!r} must be numbers, as in {name}=0.05:1.0") from None
    return name, check_bounds(name, *values)


def parse_bound_overrides(items: str | Iterable[str]) -> dict[str, tuple[float, float]]:
    """Parse command-line overrides ``["D_w=0.05:1.0", "T=100:900"]`` (or one such string) into a dict.

    Raises:
        ValueError: for anything :func:`parse_bound_override` refuses, or a parameter given twice.
    """
    if isinstance(items, str):
        items = [items]
    result: dict[str, tuple[float, float]] = {}
    for item in items:
        name, bounds = parse_bound_override(item)
        if name in result:
            raise ValueError(f"{name}: bounds given twice")
        result[name] = bounds
    return result


def read_bounds_toml(path: PathLike) -> dict[str, tuple[float, float]]:
    """The ``[bounds]`` table of a TOML file, e.g. ``D_w = [0.05, 1.0]``, checked.

    Other tables are ignored (the file may configure more than the prior).

    Raises:
        ValueError: the file is missing or not valid TOML, has no ``[bounds]`` table, or holds an entry that is not a
            pair of numbers or that :func:`check_bounds` refuses; the message names the file.
    """
    table = read_toml(path).get("bounds")
    if not isinstance(table, dict):
        raise ValueError(f"{path}: no [bounds] table (expected e.g. '[bounds]' then 'D_w = [0.05, 1.0]')")
    result: dict[str, tuple[float, float]] = {}
    for name, value in table.items():
        if not isinstance(value, list) or len(value) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{path}: {name}: bounds must be a pair of numbers like [0.05, 1.0], got {value!r}")
        try:
            result[name] = check_bounds(name, *value)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return result


class PriorSupport(constraints.Constraint):
    """The support of a :class:`Prior`: inside every box bound and the seed in a candidate voxel.

    ``check(value)`` returns a bool tensor of shape ``value.shape[:-1]``; ``biject_to`` and ``transform_to`` of it
    give the prior's :attr:`Prior.unbounded_transform`.
    """

    is_discrete = False
    event_dim = 1

    def __init__(self, prior: Prior) -> None:
        self.prior = prior
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return self.prior.in_support(value)

    def __repr__(self) -> str:
        return f"PriorSupport({', '.join(self.prior.names)})"


@biject_to.register(PriorSupport)
@transform_to.register(PriorSupport)
def _biject_to_prior_support(constraint: PriorSupport) -> Transform:
    return constraint.prior.unbounded_transform


class Prior(TorchDistribution):
    """Uniform prior over box parameters and a seed in candidate tissue; a ``torch.distributions.Distribution``.

    Build it with :meth:`from_config` (from an anatomy and an observation); the constructor takes the pieces.

    Args:
        bounds: ``(low, high)`` for every box parameter it holds: all of ``D_w, rho, T, u_t1gd, u_flair,
            sigma_alpha`` and either both or none of ``pet_scale, pet_sigma``.
        candidates: boolean mask of the voxels that may hold the seed (:func:`seed_candidates`).
        affine: the grid's 4×4 voxel-to-world matrix (mm).
        seed_margin_mm: recorded for reference (the margin that gave ``candidates``).
        dtype: floating type of samples and log-probabilities (float32, as sbi requires, by default).
        device: where samples and internal tables live.

    Attributes:
        names: parameter names in order; ``units``: name → unit; ``bounds``: name → ``(low, high)`` for the
        box parameters; ``seed_box``: name → ``(low, high)`` of the candidates' world bounding box (mm);
        ``candidate_volume_mm3``: total volume of the candidate voxels.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(
        self,
        bounds: Mapping[str, tuple[float, float]],
        candidates: np.ndarray,
        affine: np.ndarray,
        *,
        seed_margin_mm: float = DEFAULT_SEED_MARGIN_MM,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        unknown = sorted(set(bounds) - set(BOX_NAMES))
        if unknown:
            check_bounds(unknown[0], 0.0, 1.0)  # raises, naming it
        missing = [n for n in DYNAMIC_NAMES + IMAGING_NAMES if n not in bounds]
        if missing:
            raise ValueError(f"{missing[0]}: no bounds given (every prior holds {', '.join(DYNAMIC_NAMES + IMAGING_NAMES)})")
        pet = [n in bounds for n in PET_NAMES]
        if any(pet) and not all(pet):
            raise ValueError(f"{PET_NAMES[pet.index(False)]}: PET parameters come as a pair; give both or none")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating type, got {dtype}")
        box_names = DYNAMIC_NAMES + IMAGING_NAMES + (PET_NAMES if all(pet) else ())
        self.bounds: dict[str, tuple[float, float]] = {n: check_bounds(n, *bounds[n]) for n in box_names}
        self.names: tuple[str, ...] = DYNAMIC_NAMES + SEED_NAMES + box_names[3:]
        self.units: dict[str, str] = {n: UNITS[n] for n in self.names}
        self.seed_margin_mm = float(seed_margin_mm)
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)

        mask = np.asarray(candidates, dtype=bool)
        affine = np.asarray(affine, dtype=np.float64)
        if mask.ndim != 3:
            raise ValueError(f"candidates must be a 3D mask, got shape {mask.shape}")
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("affine must be a finite, invertible 4x4 matrix")
        if not mask.any():
            raise ValueError("the seed's candidate set is empty")
        self.candidates = mask.copy()
        self.candidates.setflags(write=False)
        self.affine = affine.copy()
        self.affine.setflags(write=False)
        voxels = np.argwhere(mask)
        voxel_volume = abs(float(np.linalg.det(affine[:3, :3])))
        self.candidate_volume_mm3 = voxel_volume * len(voxels)
        cell = np.array([[a, b, c] for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-0.5, 0.5)])
        corners = (voxels[:, None, :] + cell[None]).reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
        seed_low, seed_high = corners.min(axis=0), corners.max(axis=0)
        self.seed_box: dict[str, tuple[float, float]] = {
            n: (float(lo), float(hi)) for n, lo, hi in zip(SEED_NAMES, seed_low, seed_high)}

        # sampling margin (in voxels) keeping seeds off voxel faces by more than a rounding to `dtype`
        reach = float(np.abs(corners).max()) + 1.0
        inverse_norm = float(np.linalg.norm(np.linalg.inv(affine[:3, :3]), 2))
        self._face_margin = min(1e-3, 8.0 * torch.finfo(dtype).eps * reach * inverse_norm * math.sqrt(3.0))

        f64 = dict(dtype=torch.float64, device=self.device)
        lows = [self.bounds[n][0] if n in self.bounds else self.seed_box[n][0] for n in self.names]
        highs = [self.bounds[n][1] if n in self.bounds else self.seed_box[n][1] for n in self.names]
        self._low = torch.tensor(lows, **f64)
        self._high = torch.tensor(highs, **f64)
        self._box_index = torch.tensor([self.names.index(n) for n in box_names], device=self.device)
        self._box_low = self._low[self._box_index]
        self._box_high = self._high[self._box_index]
        self._voxels = torch.as_tensor(voxels, dtype=torch.long, device=self.device)
        self._mask = torch.as_tensor(mask, device=self.device)
        self._linear = torch.tensor(affine[:3, :3], **f64)
        self._offset = torch.tensor(affine[:3, 3], **f64)
        inverse = np.linalg.inv(affine)
        self._inverse_linear = torch.as_tensor(inverse[:3, :3], **f64)
        self._inverse_offset = torch.as_tensor(inverse[:3, 3], **f64)
        self._log_density = -float(np.sum(np.log([hi - lo for lo, hi in self.bounds.values()]))) \
            - math.log(self.candidate_volume_mm3)
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([len(self.names)]), validate_args=False)

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_config(
        cls,
        anatomy: Any,
        observation: Any,
        overrides: Mapping[str, tuple[float, float]] | None = None,
        toml_path: PathLike | None = None,
        seed_margin_mm: float = DEFAULT_SEED_MARGIN_MM,
        *,
        seed_within: Mapping[str, tuple[float, float]] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Prior:
        """The prior for a patient: default bounds, then the TOML file's ``[bounds]``, then ``overrides``.

        PET parameters are present exactly when ``observation.pet`` is not None. The seed is uniform over
        :func:`seed_candidates` ``(anatomy, observation, seed_margin_mm)``, in the anatomy's world space, and,
        with ``seed_within`` (a world box ``{"x", "y", "z"}`` → ``(low, high)`` mm), over those of them whose
        centre lies in that box (:func:`in_world_box`; a prior narrowed around an estimate).

        Raises:
            ValueError: naming the parameter, for unknown names, ``low >= high``, bounds outside
                :data:`PHYSICAL_RANGE`, or PET bounds for an observation without PET; whatever
                :func:`seed_candidates` refuses (grids that differ, no candidate voxel); and a ``seed_within``
                box that holds no candidate voxel's centre.
        """
        has_pet = getattr(observation, "pet", None) is not None
        bounds = {n: v for n, v in DEFAULT_BOUNDS.items() if has_pet or n not in PET_NAMES}
        layers: list[tuple[str, Mapping[str, tuple[float, float]]]] = []
        if toml_path is not None:
            layers.append((f"{toml_path}: ", read_bounds_toml(toml_path)))
        if overrides:
            layers.append(("", {n: check_bounds(n, *v) for n, v in overrides.items()}))
        for where, layer in layers:
            for name, value in layer.items():
                if name in PET_NAMES and not has_pet:
                    raise ValueError(f"{where}{name}: the observation has no PET, so the prior has no PET "
                                     "parameters to bound")
                bounds[name] = value
        candidates = seed_candidates(anatomy, observation, seed_margin_mm)
        if seed_within is not None:
            candidates = candidates & in_world_box(anatomy, seed_within)
            if not candidates.any():
                box = ", ".join(f"{name} in [{seed_within[name][0]:g}, {seed_within[name][1]:g}]" for name in SEED_NAMES)
                raise ValueError(f"no candidate seed voxel (tissue within seed_margin_mm={seed_margin_mm:g} of the "
                                 f"abnormality) has its centre in the seed's box ({box} mm)")
        return cls(bounds, candidates, anatomy.affine, seed_margin_mm=seed_margin_mm, dtype=dtype, device=device)

    def index(self, name: str) -> int:
        """Position of parameter ``name`` along the last axis of samples."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"{name}: not a parameter of this prior ({', '.join(self.names)})") from None

    @property
    def has_pet(self) -> bool:
        return "pet_scale" in self.names

    @property
    def outer_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(low, high)`` per parameter (float64): box bounds, and the seed's world bounding box."""
        return self._low.clone(), self._high.clone()

    # ------------------------------------------------------------------------------ distribution API
    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return PriorSupport(self)

    @property
    def mean(self) -> torch.Tensor:
        return self._moments()[0]

    @property
    def variance(self) -> torch.Tensor:
        return self._moments()[1]

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (self._low + self._high) / 2
        variance = (self._high - self._low) ** 2 / 12
        index = self._voxels.to(torch.float64)
        centred = index - index.mean(dim=0)
        covariance = centred.T @ centred / len(index) + torch.eye(3, dtype=torch.float64, device=self.device) / 12
        mean[3:6] = self._linear @ index.mean(dim=0) + self._offset
        variance[3:6] = torch.diagonal(self._linear @ covariance @ self._linear.T)
        return mean.to(self.dtype), variance.to(self.dtype)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        """Draw ``[*sample_shape, P]`` parameters with torch's global random generator."""
        return self._draw(sample_shape, None)

    def sample_with(self, sample_shape: int | torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Draw ``[*sample_shape, P]`` parameters from ``generator`` (same generator state, same draws)."""
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return self._draw(sample_shape, generator)

    def _draw(self, sample_shape: int | torch.Size | tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        shape = torch.Size([sample_shape] if isinstance(sample_shape, int) else sample_shape)
        f64 = dict(dtype=torch.float64, device=self.device, generator=generator)
        with torch.no_grad():
            unit = torch.rand(shape + (len(self._box_index),), **f64)
            picks = torch.randint(len(self._voxels), shape, device=self.device, generator=generator)
            jitter = (torch.rand(shape + (3,), **f64) - 0.5) * (1.0 - 2.0 * self._face_margin)
            theta = torch.empty(shape + (len(self.names),), dtype=torch.float64, device=self.device)
            box = self._box_low + (self._box_high - self._box_low) * unit
            theta[..., self._box_index] = torch.minimum(torch.maximum(box, self._box_low), self._box_high)
            theta[..., 3:6] = (self._voxels[picks].to(torch.float64) + jitter) @ self._linear.T + self._offset
        return theta.to(self.dtype)

    def in_support(self, value: torch.Tensor) -> torch.Tensor:
        """Bool ``[...]``: every box parameter within its closed bounds and the seed in a candidate voxel.

        Box bounds are compared in ``value``'s own precision, so every sample rounded to it stays inside.
        """
        value = self._check_value(value)
        compare = value.dtype if value.dtype.is_floating_point else torch.float64
        v = value.to(compare)
        low, high = self._box_low.to(compare), self._box_high.to(compare)
        box = v[..., self._box_index]
        inside = ((box >= low) & (box <= high)).all(dim=-1)
        index = value[..., 3:6].to(torch.float64) @ self._inverse_linear.T + self._inverse_offset
        nearest = torch.floor(index + 0.5)
        grid = torch.tensor(self._mask.shape, dtype=torch.float64, device=value.device)
        on_grid = ((nearest >= 0) & (nearest < grid)).all(dim=-1)  # False for NaN too
        safe = torch.where(on_grid[..., None], nearest, torch.zeros_like(nearest)).long()
        in_mask = self._mask.to(value.device)[safe[..., 0], safe[..., 1], safe[..., 2]]
        return inside & on_grid & in_mask

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log density ``[...]`` of ``value`` ``[..., P]``: the normalising constant inside, ``-inf`` outside.

        Inside the support this is ``-Σ_box log(high - low) - log(candidate_volume_mm3)``; it never raises for
        points outside the support (torch's argument validation is off).
        """
        value = self._check_value(value)
        out = value.dtype if value.dtype.is_floating_point else self.dtype
        constant = torch.full(value.shape[:-1], self._log_density, dtype=torch.float64, device=value.device)
        return torch.where(self.in_support(value), constant, -math.inf).to(out)

    def _check_value(self, value: Any) -> torch.Tensor:
        value = torch.as_tensor(value)
        if value.ndim < 1 or value.shape[-1] != len(self.names):
            raise ValueError(f"parameters must have shape [..., {len(self.names)}] ({', '.join(self.names)}), "
                             f"got {tuple(value.shape)}")
        return value

    # ------------------------------------------------------------------------------ unbounded space
    def to_unbounded(self, theta: torch.Tensor) -> torch.Tensor:
        """``z = logit((θ - low) / (high - low))`` per coordinate, ``low, high`` from :attr:`outer_bounds`.

        Points on the outer box's faces map to large finite values (the normalised value is clamped to
        ``[tiny, 1 - eps]`` of ``theta``'s dtype, as torch's ``SigmoidTransform`` does).
        """
        theta = self._check_value(theta)
        dtype = theta.dtype if theta.dtype.is_floating_point else self.dtype
        finfo = torch.finfo(dtype)
        y = ((theta.to(torch.float64) - self._low) / (self._high - self._low)).clamp(finfo.tiny, 1 - finfo.eps)
        return (torch.log(y) - torch.log1p(-y)).to(dtype)

    def from_unbounded(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_unbounded`: ``θ = low + (high - low) · sigmoid(z)``."""
        z = self._check_value(z)
        dtype = z.dtype if z.dtype.is_floating_point else self.dtype
        theta = self._low + (self._high - self._low) * torch.sigmoid(z.to(torch.float64))
        return theta.to(dtype)

    def log_abs_det_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """``log |det ∂θ/∂z|`` ``[...]`` of :meth:`from_unbounded` at ``z`` (summed over parameters).

        The density of ``z`` is ``prior.log_prob(from_unbounded(z)) + log_abs_det_jacobian(z)``
        (:meth:`log_prob_unbounded`).
        """
        z = self._check_value(z)
        dtype = z.dtype if z.dtype.is_floating_point else self.dtype
        z64 = z.to(torch.float64)
        terms = torch.log(self._high - self._low) + torch.nn.functional.logsigmoid(z64) \
            + torch.nn.functional.logsigmoid(-z64)
        return terms.sum(dim=-1).to(dtype)

    def log_prob_unbounded(self, z: torch.Tensor) -> torch.Tensor:
        """Log density ``[...]`` of the prior pushed to the unbounded space; ``-inf`` where the seed is not in a
        candidate voxel."""
        return self.log_prob(self.from_unbounded(z)) + self.log_abs_det_jacobian(z)

    @property
    def unbounded_transform(self) -> Transform:
        """Torch transform from the unbounded space to parameters (``from_unbounded``), event_dim 1.

        Its parameters are in the prior's dtype; ``biject_to(prior.support)`` returns it.
        """
        low = self._low.to(self.dtype)
        scale = (self._high - self._low).to(self.dtype)
        return IndependentTransform(ComposeTransform([SigmoidTransform(), AffineTransform(low, scale)]), 1)

    # ---------------------------------------------------------------------------------- niceties
    def __repr__(self) -> str:
        parts = [f"{n}∈[{lo:g}, {hi:g}] {self.units[n]}" for n, (lo, hi) in self.bounds.items()]
        return (f"Prior({', '.join(parts)}; seed x, y, z in {int(self.candidates.sum())} candidate voxels, "
                f"{self.candidate_volume_mm3:g} mm³, margin {self.seed_margin_mm:g} mm)")
