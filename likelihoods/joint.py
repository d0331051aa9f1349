"""The joint likelihood of a patient's scans: the product of the mask and PET likelihoods present.

    log p(T1Gd, FLAIR, PET | u, θ_im) = log p(T1Gd | u; u_t1gd, σ_α) + log p(FLAIR | u; u_flair, σ_α)
                                       + log p(PET | u; pet_scale, pet_sigma)

(Lipkova et al., IEEE TMI 2019: the modalities are conditionally independent given the density), each
term from :mod:`likelihoods.masks` and :mod:`likelihoods.pet`, and a term dropped when its scan is absent
(its parameters are then ignored). The imaging parameters θ_im are ordinary named parameters
(:data:`IMAGING_PARAMETER_NAMES`), inferred with the growth parameters or fixed by the caller. Both masks
share one σ_α, as in the thesis and in GliomaSolver (one ``slope``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from likelihoods.masks import (
    DEFAULT_CLAMP,
    binary_mask,
    check_clamp,
    check_convention,
    check_density,
    mask_log_likelihood,
)
from likelihoods.pet import pet_log_likelihood

IMAGING_PARAMETER_NAMES = ("u_t1gd", "u_flair", "sigma_alpha", "pet_scale", "pet_sigma")

GLIOMASOLVER_DEFAULTS = {
    "u_t1gd": 0.7,
    "u_flair": 0.25,
    "sigma_alpha": math.sqrt(2.0),  # slope 2 = σ_α²
    "pet_scale": 0.85,
    "pet_sigma": math.sqrt(0.000361),  # σ² = 0.000361
}
"""GliomaSolver's fixed imaging parameters (``fun.py``, ``likelihood/main.c``) in this package's names,
for ``JointLikelihood(convention="gliomasolver")``."""


@dataclass(frozen=True)
class ImageObservation:
    """The scans a likelihood compares a density with, on the simulation grid ``(X, Y, Z)``.

    Attributes:
        t1gd: bool (or 0/1) ``Tensor[X, Y, Z]``, tumour visible on T1Gd; None when absent.
        flair: bool (or 0/1) ``Tensor[X, Y, Z]``, tumour visible on FLAIR; None when absent.
        pet: float ``Tensor[X, Y, Z]`` PET map; None when absent.
        pet_valid: bool ``Tensor[X, Y, Z]``, the voxels where the PET map is trusted (see
            :func:`likelihoods.pet.pet_log_likelihood`); None for every voxel (``"thesis"``) or every
            voxel with PET > 0 (``"gliomasolver"``).

    NumPy arrays are accepted and become tensors; masks become bool. At least one scan must be given.
    """

    t1gd: torch.Tensor | None = None
    flair: torch.Tensor | None = None
    pet: torch.Tensor | None = None
    pet_valid: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("t1gd", "flair", "pet", "pet_valid"):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):  # a copy: NumPy arrays may be read-only (personalize.io)
                object.__setattr__(self, name, torch.from_numpy(np.array(value)))
        present = {n: getattr(self, n) for n in ("t1gd", "flair", "pet") if getattr(self, n) is not None}
        if not present:
            raise ValueError("an ImageObservation needs at least one of t1gd, flair, pet")
        if self.pet_valid is not None and self.pet is None:
            raise ValueError("pet_valid given without pet")
        shapes = {n: tuple(v.shape) for n, v in present.items()}
        if self.pet_valid is not None:
            shapes["pet_valid"] = tuple(self.pet_valid.shape)
        grid = next(iter(shapes.values()))
        if len(grid) != 3 or any(s != grid for s in shapes.values()):
            raise ValueError(f"shape mismatch: scans must share one (X, Y, Z) shape, got {shapes}")
        for name in ("t1gd", "flair"):
            if name in present:
                object.__setattr__(self, name, binary_mask(present[name], grid, name))
        if self.pet is not None and (not self.pet.is_floating_point() or not bool(torch.all(torch.isfinite(self.pet)))):
            raise ValueError("pet must be a finite floating-point map")
        if self.pet_valid is not None and self.pet_valid.dtype != torch.bool:
            raise ValueError(f"pet_valid must be a bool mask, got {self.pet_valid.dtype}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid ``(X, Y, Z)`` the scans live on."""
        scan = next(s for s in (self.t1gd, self.flair, self.pet) if s is not None)
        return tuple(int(n) for n in scan.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> ImageObservation:
        """The same observation with every tensor on ``device`` (do it once, not per evaluation)."""
        return ImageObservation(
            **{n: None if v is None else v.to(device) for n, v in vars(self).items()}  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class JointLikelihood:
    """Sum of the log-likelihoods of the scans present (see the module docstring).

    Attributes:
        convention: ``"thesis"`` (Lipkova's thesis Eq. 6 and y ~ N(b·u, σ²)) or ``"gliomasolver"``
            (``lib_c.c``: ``TiLogLikelihood``, ``brain_likelihood``; slope = sigma_alpha²).
        clamp: ε, α kept in [ε, 1 − ε]; see :mod:`likelihoods.masks` for why 1e-4.
    """

    convention: str = "thesis"
    clamp: float = DEFAULT_CLAMP

    def __post_init__(self) -> None:
        check_convention(self.convention)
        check_clamp(self.clamp)

    def parameter_names(self, observation: ImageObservation) -> tuple[str, ...]:
        """The imaging parameters this observation's terms use, in :data:`IMAGING_PARAMETER_NAMES` order."""
        used = set()
        if observation.t1gd is not None:
            used |= {"u_t1gd", "sigma_alpha"}
        if observation.flair is not None:
            used |= {"u_flair", "sigma_alpha"}
        if observation.pet is not None:
            used |= {"pet_scale", "pet_sigma"}
        return tuple(n for n in IMAGING_PARAMETER_NAMES if n in used)

    def log_likelihood_terms(
        self,
        density: torch.Tensor,
        imaging_params: Mapping[str, torch.Tensor | float],
        observation: ImageObservation,
    ) -> dict[str, torch.Tensor]:
        """Each present scan's log-likelihood, ``{"t1gd" | "flair" | "pet": Tensor[B]}``.

        Args:
            density: ``Tensor[B, X, Y, Z]`` in [0, 1], on the observation's grid.
            imaging_params: name -> ``Tensor[B]`` (or a number) in physical values; needs at least
                :meth:`parameter_names`, ignores the rest.
            observation: the scans.
        """
        check_density(density)
        if tuple(density.shape[1:]) != observation.shape:
            raise ValueError(
                f"shape mismatch: density grid {tuple(density.shape[1:])}, observation grid {observation.shape}"
            )
        missing = [n for n in self.parameter_names(observation) if n not in imaging_params]
        if missing:
            raise ValueError(f"missing imaging parameters {missing}")
        terms = {}
        for name, threshold in (("t1gd", "u_t1gd"), ("flair", "u_flair")):
            mask = getattr(observation, name)
            if mask is not None:
                terms[name] = mask_log_likelihood(
                    density,
                    mask,
                    imaging_params[threshold],
                    imaging_params["sigma_alpha"],
                    convention=self.convention,
                    clamp=self.clamp,
                )
        if observation.pet is not None:
            terms["pet"] = pet_log_likelihood(
                density,
                observation.pet,
                imaging_params["pet_scale"],
                imaging_params["pet_sigma"],
                valid=observation.pet_valid,
                convention=self.convention,
            )
        return terms

    def log_likelihood(
        self,
        density: torch.Tensor,
        imaging_params: Mapping[str, torch.Tensor | float],
        observation: ImageObservation,
    ) -> torch.Tensor:
        """log p(observation | density, imaging_params) as ``Tensor[B]``: the sum of
        :meth:`log_likelihood_terms`."""
        terms = self.log_likelihood_terms(density, imaging_params, observation)
        return torch.stack(list(terms.values())).sum(dim=0)
