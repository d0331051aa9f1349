"""Draw what a scanner shows of simulated tumours: the generative side of the image likelihoods.

The likelihoods of this package score scans against a density; this module draws scans from a density with
the same imaging model, so that a likelihood-free engine (sequential NPE) and a synthetic patient see
exactly what the likelihoods assume.

- T1Gd and FLAIR masks, per voxel (``masks``):
  ``"threshold"``: u > u_c, the segmentation of Lipkova et al. (IEEE TMI 2019) without noise;
  ``"detection"``: Bernoulli(α(u)) with α of the thesis's Eq. 6 at ``sigma_alpha``, unclamped
  (:func:`likelihoods.masks.detection_probability`), the model the mask likelihood assumes.
- FET-PET: ``pet_scale``·u + N(0, ``pet_sigma``²) over tissue, clipped at 0 (a PET map holds no negative
  uptake; the Tobit likelihood of :mod:`likelihoods.pet` treats those zeros as censored), 0 off tissue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from likelihoods.masks import detection_probability, per_sample

MASK_MODELS = ("threshold", "detection")


@dataclass(frozen=True)
class Scans:
    """Scans drawn for a batch of densities, each ``Tensor[B, X, Y, Z]`` (float 0/1 masks), PET or None."""

    t1gd: torch.Tensor
    flair: torch.Tensor
    pet: torch.Tensor | None


def draw_scans(
    density: torch.Tensor,
    imaging: Mapping[str, torch.Tensor | float],
    tissue: torch.Tensor,
    *,
    masks: str = "threshold",
    with_pet: bool = True,
    generator: torch.Generator | None = None,
) -> Scans:
    """Draw T1Gd, FLAIR (and PET) scans of ``density`` ``[B, X, Y, Z]``.

    Args:
        density: tumour cell densities in [0, 1].
        imaging: ``u_t1gd``, ``u_flair`` (and ``sigma_alpha`` for ``"detection"``, ``pet_scale``, ``pet_sigma``
            with PET), scalars or ``[B]`` tensors.
        tissue: bool ``[X, Y, Z]``, where PET is measured (brain tissue).
        masks: ``"threshold"`` or ``"detection"`` (module docstring).
        with_pet: draw a PET map.
        generator: the noise's random generator (on ``density``'s device); same state, same scans.

    Raises:
        ValueError: an unknown mask model, a missing imaging parameter, or a negative PET noise.
    """
    if masks not in MASK_MODELS:
        raise ValueError(f"masks must be one of {MASK_MODELS}, got {masks!r}")
    needed = ("u_t1gd", "u_flair") + (("sigma_alpha",) if masks == "detection" else ()) \
        + (("pet_scale", "pet_sigma") if with_pet else ())
    missing = [name for name in needed if name not in imaging]
    if missing:
        raise ValueError(f"drawing scans needs the imaging parameters {', '.join(missing)}")
    drawn = {}
    for name in ("u_t1gd", "u_flair"):
        if masks == "threshold":
            drawn[name] = (density > per_sample(imaging[name], density, name)).to(density.dtype)
        else:
            alpha = detection_probability(density, imaging[name], imaging["sigma_alpha"], clamp=0.0)
            uniform = torch.rand(density.shape, generator=generator, dtype=density.dtype, device=density.device)
            drawn[name] = (uniform < alpha).to(density.dtype)
    pet = None
    if with_pet:
        sigma = per_sample(imaging["pet_sigma"], density, "pet_sigma")
        if bool((sigma < 0).any()):
            raise ValueError(f"pet_sigma must be >= 0, got {sigma.min().item()}")
        noise = torch.randn(density.shape, generator=generator, dtype=density.dtype, device=density.device)
        uptake = (per_sample(imaging["pet_scale"], density, "pet_scale") * density + sigma * noise).clamp(min=0.0)
        pet = torch.where(tissue.to(density.device), uptake, torch.zeros_like(uptake))
    return Scans(t1gd=drawn["u_t1gd"], flair=drawn["u_flair"], pet=pet)
