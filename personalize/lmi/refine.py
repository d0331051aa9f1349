"""A Bayesian fit in patient space with the prior narrowed around Learn-Morph-Infer's estimate.

Ezhov et al. (Learn-Morph-Infer, Med Image Anal 83:102672, 2023, arXiv:2111.04090) give a point estimate in one
network pass; a sampling engine (TMCMC, sequential NPE: :func:`personalize.fit.fit`) then spends its simulations
where that estimate says the answer is, on the patient's own grid and anatomy (no registration, no atlas), and
adds what the network cannot: a posterior, and the imaging parameters ``u_t1gd``, ``u_flair``, ``sigma_alpha``.

The narrowed prior (:func:`refined_bounds`, :class:`RefineWidths`):

- ``D_w``, ``rho``, ``T``: ``[estimate / f, estimate · f]``, cut to the prior's box. The density at T depends on
  these only through μ₁ = √(D_w·T) and μ₂ = √(ρ·T) (:mod:`personalize.lmi.parameters`), so in this box μ₁ and
  μ₂ each reach a factor f either side of the network's (where the prior's box does not cut); the split among D_w, ρ, T (fixed by LMI's reference front speed) is
  not identifiable from one scan and is not what the box is for.
- the seed ``x, y, z``: a box of ± r mm around the seed mapped to the patient, whose voxel centres are kept
  among the prior's candidates (tissue within ``seed_margin_mm`` of the abnormality,
  :func:`personalize.priors.seed_candidates`; :meth:`personalize.priors.Prior.from_config`'s ``seed_within``).
- the imaging parameters keep the prior's box: the network does not predict them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from personalize.fit import FitResult, FitSettings, fit
from personalize.io import Observation
from personalize.lmi.personalization import LMIFit
from personalize.priors import DEFAULT_BOUNDS, DYNAMIC_NAMES, SEED_NAMES, read_bounds_toml
from simulators.anatomy import Anatomy

REFINE_DIR = "refine"
"""Subfolder of an LMI run's folder that holds the refined fit (a whole ``personalize fit`` folder)."""


@dataclass(frozen=True)
class RefineWidths:
    """How far around LMI's estimate the refined prior reaches.

    Attributes:
        growth_factor: f > 1 of the ``[estimate / f, estimate · f]`` box of D_w, ρ and T, so μ₁, μ₂ within a
            factor f. Default 3: generous against the errors a patient adds to the network's own (a regression
            trained on simulated tumours in one atlas): the registration's and the model's mismatch; it still
            cuts the default prior's span of D_w·T from 3.4 decades to 1.9 (a factor f², μ₁ within f).
        seed_radius_mm: r of the ± r mm box around the mapped seed. Default 12: three voxels of the default
            4 mm training atlas (the network predicts the seed on that grid) plus the registration's error
            (2–3 mm on the pipeline's test patient, ``tests/test_lmi_fit.py``).
    """

    growth_factor: float = 3.0
    seed_radius_mm: float = 12.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.growth_factor) and self.growth_factor > 1):
            raise ValueError(f"growth_factor must be a finite number > 1, got {self.growth_factor}")
        if not (math.isfinite(self.seed_radius_mm) and self.seed_radius_mm > 0):
            raise ValueError(f"seed_radius_mm must be a finite number > 0, got {self.seed_radius_mm}")


@dataclass(frozen=True)
class RefinedPrior:
    """What :func:`refined_bounds` returns: ``bounds`` of D_w, ρ, T (the prior's ``bounds`` overrides) and
    ``seed_box`` of x, y, z (mm, the estimate's world space; the prior's ``seed_within``)."""

    bounds: dict[str, tuple[float, float]]
    seed_box: dict[str, tuple[float, float]]


def refined_bounds(estimate: Mapping[str, float], prior_bounds: Mapping[str, tuple[float, float]],
                   widths: RefineWidths = RefineWidths()) -> RefinedPrior:
    """The prior narrowed around ``estimate`` (module docstring): D_w, ρ, T within a factor
    ``widths.growth_factor`` of their estimate (clipped into ``prior_bounds`` first, so an estimate outside the
    box still gives a box at its nearest edge), cut to ``prior_bounds``; x, y, z within
    ± ``widths.seed_radius_mm``.

    Args:
        estimate: ``D_w``, ``rho``, ``T``, ``x``, ``y``, ``z`` (LMI's :attr:`LMIFit.parameters`).
        prior_bounds: the prior's ``(low, high)`` of ``D_w``, ``rho``, ``T`` (others are ignored).
        widths: the factor and the radius.
    """
    bounds = {}
    for name in DYNAMIC_NAMES:
        low, high = prior_bounds[name]
        centre = min(max(float(estimate[name]), low), high)
        bounds[name] = (max(low, centre / widths.growth_factor), min(high, centre * widths.growth_factor))
    seed_box = {name: (float(estimate[name]) - widths.seed_radius_mm, float(estimate[name]) + widths.seed_radius_mm)
                for name in SEED_NAMES}
    return RefinedPrior(bounds=bounds, seed_box=seed_box)


def refine_lmi(
    observation: Observation,
    lmi: LMIFit,
    out: str | os.PathLike[str],
    *,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    bounds_toml: str | os.PathLike[str] | None = None,
    tissue: Anatomy | None = None,
    settings: FitSettings = FitSettings(),
    widths: RefineWidths = RefineWidths(),
    resume: bool = False,
    progress: bool = True,
    truth: Mapping[str, float] | None = None,
) -> FitResult:
    """Run :func:`personalize.fit.fit` (``settings.method``: tmcmc or npe) on ``observation`` with the prior
    (defaults, then ``bounds_toml``, then ``bounds``, as :meth:`personalize.priors.Prior.from_config` layers them)
    narrowed around ``lmi``'s estimate (:func:`refined_bounds`), writing a whole fit folder into
    ``out``; its ``summary.json`` adds ``lmi_estimate`` (LMI's parameters in the input images' world space, its
    weights' SHA-256) and ``refine`` (the widths, the narrowed bounds and seed box).

    Args:
        observation: the scans LMI was run on (with PET, the engine uses it).
        lmi: :func:`personalize.lmi.personalization.fit_lmi`'s result on them.
        out: the refined fit's folder (:data:`REFINE_DIR` of the LMI run's, as ``personalize fit --refine``
            writes it).
        bounds, bounds_toml, tissue, settings, resume, progress, truth: as :func:`personalize.fit.fit` takes them.
        widths: how far the narrowed prior reaches.

    Raises:
        ValueError: whatever :func:`personalize.fit.fit` refuses, among which a seed box holding no candidate
            voxel (an estimate far from the abnormality).
    """
    prior_box = {**DEFAULT_BOUNDS, **(read_bounds_toml(bounds_toml) if bounds_toml else {}), **(bounds or {})}
    narrowed = refined_bounds(lmi.parameters, prior_box, widths)
    record = {
        "lmi_estimate": {"parameters": lmi.summary["parameters"], "weights_sha256": lmi.summary["weights"]["sha256"],
                         "map_fit": lmi.summary["map_fit"]},
        "refine": {**asdict(widths), "bounds": {n: list(b) for n, b in narrowed.bounds.items()},
                   "seed_box_mm": {n: list(b) for n, b in narrowed.seed_box.items()},
                   "source": "Learn-Morph-Infer's estimate (Ezhov et al. 2023, arXiv:2111.04090), prior narrowed "
                             "by personalize.lmi.refine.refined_bounds"},
    }
    return fit(observation, Path(out), tissue=tissue, settings=settings,
               bounds={**(bounds or {}), **narrowed.bounds}, bounds_toml=bounds_toml, seed_within=narrowed.seed_box,
               resume=resume, progress=progress, truth=truth, record=record)
