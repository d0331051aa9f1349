"""The joint log-likelihood of one density given a patient's scans, in float64, for comparing solvers and
reproducing published numbers (the ``personalize likelihood`` command).

    log L = log p(T1Gd | u) + log p(FLAIR | u) + log p(PET | u)

with each term from :class:`likelihoods.joint.JointLikelihood` (see :mod:`likelihoods.masks` and
:mod:`likelihoods.pet` for the formulas of both conventions). GliomaSolver's ``likelihood`` program prints
−log L; :func:`evaluate_likelihood` returns both.

Imaging parameters are named as in ARCHITECTURE.md (:data:`likelihoods.joint.IMAGING_PARAMETER_NAMES`):

- ``convention="gliomasolver"``: GliomaSolver's fixed values (``likelihood/main.c``) are the defaults,
  :data:`likelihoods.joint.GLIOMASOLVER_DEFAULTS`: u_t1gd 0.7, u_flair 0.25, slope 2 (σ_α = √2),
  pet_scale 0.85, pet_sigma 0.019 (σ² = 0.000361). Any of them may be overridden; GliomaSolver's ``slope``
  is accepted as a name too and means σ_α = √slope (giving both ``slope`` and ``sigma_alpha`` is refused).
- ``convention="thesis"``: there are no defaults. Every parameter the given scans use must be passed
  (u_t1gd, u_flair, sigma_alpha for the masks; pet_scale, pet_sigma with PET); ``slope`` is refused.

The evaluation is the published formula as is: ``clamp=0`` (no floor on α) unless asked; the inference
engines use :data:`likelihoods.masks.DEFAULT_CLAMP`. Under ``"gliomasolver"`` with u in [0, 1] the clamp
binds only for slope < 0.12, so it does not change GliomaSolver's number.

Density and scans are cast to float64 before any arithmetic, so sums over 16M voxels do not lose digits
(float32 accumulation would lose about 1e-7 relative per step).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from likelihoods.joint import GLIOMASOLVER_DEFAULTS, IMAGING_PARAMETER_NAMES, ImageObservation, JointLikelihood
from likelihoods.masks import check_clamp, check_convention
from personalize.io import Observation
from simulators.nifti import NiftiError, check_same_grid, read_volume

PARAMETER_NAMES = (*IMAGING_PARAMETER_NAMES, "slope")
"""Names accepted by :func:`resolve_parameters`; ``slope`` only under ``"gliomasolver"``."""


def load_density(path: str | os.PathLike[str], observation: Observation) -> np.ndarray:
    """Read a density map and check it is on the observation's grid and in [0, 1]; float64, canonical.

    Raises:
        NiftiError: the file cannot be read, is on another grid (shape, or voxel centres more than
            :data:`simulators.nifti.AFFINE_TOLERANCE_MM` apart), or holds values outside [0, 1].
    """
    volume = read_volume(path)
    check_same_grid(volume, observation.reference)
    data = volume.data.astype(np.float64)
    outside = int(np.count_nonzero((data < 0) | (data > 1)))
    if outside:
        problem = (f"density must lie in [0, 1]; {outside} voxels outside (min {data.min():.6g}, "
                   f"max {data.max():.6g})")
        raise NiftiError(path, problem)
    return data


def resolve_parameters(
    convention: str, given: Mapping[str, float], *, t1gd: bool = True, flair: bool = True, pet: bool = False
) -> dict[str, float]:
    """The imaging parameters the present scans use, from ``given`` and the convention's defaults.

    Args:
        convention: ``"thesis"`` or ``"gliomasolver"`` (see the module docstring for the defaults).
        given: name -> value; names from :data:`PARAMETER_NAMES`.
        t1gd, flair, pet: which scans are present.

    Returns:
        name -> value for the parameters used, in :data:`likelihoods.joint.IMAGING_PARAMETER_NAMES` order.

    Raises:
        ValueError: an unknown name, ``slope`` together with ``sigma_alpha`` or under ``"thesis"``, a value
            that is not finite or a width that is not > 0, a PET parameter without PET, or (``"thesis"``)
            a parameter the scans need that was not given.
    """
    check_convention(convention)
    unknown = sorted(set(given) - set(PARAMETER_NAMES))
    if unknown:
        raise ValueError(f"unknown parameter {', '.join(unknown)}; valid: {', '.join(PARAMETER_NAMES)}")
    values = {name: float(value) for name, value in given.items()}
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"parameter {name} must be finite, got {value}")
    if "slope" in values:
        if convention != "gliomasolver":
            raise ValueError("slope is GliomaSolver's name (slope = sigma_alpha^2); under the thesis "
                             "convention give sigma_alpha")
        if "sigma_alpha" in values:
            raise ValueError("give slope or sigma_alpha, not both (slope = sigma_alpha^2)")
        if values["slope"] <= 0:
            raise ValueError(f"slope must be > 0, got {values['slope']}")
        values["sigma_alpha"] = math.sqrt(values.pop("slope"))
    for name in ("sigma_alpha", "pet_sigma"):
        if name in values and values[name] <= 0:
            raise ValueError(f"{name} must be > 0, got {values[name]}")
    if not pet and {"pet_scale", "pet_sigma"} & set(values):
        raise ValueError("pet_scale and pet_sigma need a PET map (--pet)")
    used = set()
    if t1gd:
        used |= {"u_t1gd", "sigma_alpha"}
    if flair:
        used |= {"u_flair", "sigma_alpha"}
    if pet:
        used |= {"pet_scale", "pet_sigma"}
    if convention == "gliomasolver":
        values = {**GLIOMASOLVER_DEFAULTS, **values}
    missing = [name for name in IMAGING_PARAMETER_NAMES if name in used and name not in values]
    if missing:
        raise ValueError(f"the thesis convention has no default imaging parameters; give {', '.join(missing)} "
                         "with --param NAME=VALUE")
    return {name: values[name] for name in IMAGING_PARAMETER_NAMES if name in used}


def evaluate_likelihood(
    density: np.ndarray,
    observation: Observation,
    parameters: Mapping[str, float] | None = None,
    *,
    convention: str = "gliomasolver",
    clamp: float = 0.0,
) -> dict[str, object]:
    """log p(scans | density, imaging parameters) and its per-modality terms, in float64.

    Args:
        density: ``(X, Y, Z)`` array in [0, 1] on the observation's (canonical) grid; cast to float64.
        observation: the masks (and optional PET) from :func:`personalize.io.load_observation`.
        parameters: imaging parameters by name (see :func:`resolve_parameters`); None for the defaults.
        convention: ``"gliomasolver"`` or ``"thesis"``.
        clamp: ε, α kept in [ε, 1 − ε]; 0 (default) for the published formula.

    Returns:
        A JSON-ready dict: ``log_likelihood`` (the sum of ``terms``), ``negative_log_likelihood`` (what
        GliomaSolver prints), ``terms`` {``t1gd``, ``flair``, ``pet`` (None without PET)}, ``parameters``
        used (with ``slope`` = σ_α² under ``"gliomasolver"``), ``convention``, ``clamp``, ``dtype`` and
        ``voxels`` (grid size, positive mask voxels, PET voxels counted).

    Raises:
        ValueError: a density of another shape or outside [0, 1], or bad parameters.
    """
    check_convention(convention)
    check_clamp(clamp)
    u = np.asarray(density, dtype=np.float64)
    if u.shape != observation.shape:
        raise ValueError(f"density has shape {u.shape}, the scans {observation.shape}")
    if not np.all(np.isfinite(u)) or u.min() < 0 or u.max() > 1:
        raise ValueError(f"density must be finite and lie in [0, 1] (min {np.nanmin(u):.6g}, max {np.nanmax(u):.6g})")
    has_pet = observation.pet is not None
    used = resolve_parameters(convention, parameters or {}, pet=has_pet)
    scans = ImageObservation(
        t1gd=torch.from_numpy(observation.t1gd == 1),
        flair=torch.from_numpy(observation.flair == 1),
        pet=torch.from_numpy(observation.pet.astype(np.float64)) if has_pet else None,
    )
    likelihood = JointLikelihood(convention=convention, clamp=clamp)
    terms = likelihood.log_likelihood_terms(torch.from_numpy(u)[None], used, scans)
    values = {name: float(term[0]) for name, term in terms.items()}
    total = math.fsum(values.values())
    if convention == "gliomasolver":  # the slope as given (or GliomaSolver's 2), not √slope squared back
        given = parameters or {}
        slope = given.get("slope", 2.0 if "sigma_alpha" not in given else used["sigma_alpha"] ** 2)
        used = {**used, "slope": float(slope)}
    if has_pet:
        counted = observation.pet > 0 if convention == "gliomasolver" else np.ones(observation.shape, bool)
        pet_voxels = int(np.count_nonzero(counted))
    return {
        "log_likelihood": total,
        "negative_log_likelihood": -total,
        "terms": {"t1gd": values["t1gd"], "flair": values["flair"], "pet": values.get("pet")},
        "parameters": used,
        "convention": convention,
        "clamp": clamp,
        "dtype": "float64",
        "voxels": {
            "grid": int(u.size),
            "t1gd_positive": int(np.count_nonzero(observation.t1gd)),
            "flair_positive": int(np.count_nonzero(observation.flair)),
            "pet_counted": pet_voxels if has_pet else None,
        },
    }
