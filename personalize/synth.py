"""A synthetic patient from known parameters: what a scanner would show of a simulated tumour.

The tumour is grown with a simulator on an anatomy (the default atlas unless given). The scans follow the
imaging model the likelihoods assume. FET-PET is ``pet_scale``·u plus Gaussian noise of standard deviation
``pet_sigma`` over tissue, clipped at 0 (a PET map holds no negative uptake). T1Gd and FLAIR masks are made
one of two ways (``masks``):

- ``"threshold"`` (default): the density thresholded at ``u_t1gd`` and ``u_flair`` (Lipkova et al., IEEE TMI
  2019), a segmentation without noise. The mask likelihood of Eq. 6 is then misspecified: it expects a voxel
  at u = u_c to be seen with probability ½ and gives the voxels just on the correct side of u_c a reward that
  grows with their distance from it, so the voxels on the more populous side (below u_flair: the shell
  outside the front holds more volume) pull the fitted threshold towards them, by a fraction of σ_α.
- ``"detection"``: each voxel drawn independently with the detection probability α(u) of Eq. 6 (thesis
  convention, unclamped: the clamp is the likelihood's guard against mislabelled voxels, not part of the
  imaging), at the truth's ``sigma_alpha``. This is the generative model the likelihood assumes, so a
  calibrated sampler covers the truth at the stated rate.

The truth is written beside the scans so a fit can be scored against it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from likelihoods.imaging import MASK_MODELS, draw_scans
from simulators.anatomy import Anatomy
from simulators.fisher_kolmogorov import PARAMETER_NAMES, PARAMETER_UNITS, FisherKolmogorov
from simulators.nifti import write_nifti

IMAGING_UNITS = {"u_t1gd": "1", "u_flair": "1", "sigma_alpha": "1", "pet_scale": "1", "pet_sigma": "1"}

BUILT_IN_CASE: dict[str, float] = {
    "D_w": 0.13, "rho": 0.025, "T": 300.0, "x": 30.0, "y": -10.0, "z": 20.0,
    "u_t1gd": 0.7, "u_flair": 0.25, "pet_scale": 0.85, "pet_sigma": 0.05,
}
"""The built-in case: a right frontal tumour on the default atlas, with GliomaSolver's imaging defaults
for the thresholds and PET scale and a PET noise in the middle of the prior."""



@dataclass(frozen=True, eq=False)
class SyntheticPatient:
    """Scans and truth of a synthetic patient, canonical arrays on ``anatomy``'s grid."""

    anatomy: Anatomy
    density: np.ndarray
    t1gd: np.ndarray
    flair: np.ndarray
    pet: np.ndarray | None
    truth: dict[str, float]

    @property
    def visible_volumes_ml(self) -> dict[str, float]:
        """Volumes (mL) of the T1Gd and FLAIR abnormalities."""
        voxel_ml = float(np.prod(self.anatomy.spacing_mm)) / 1000.0
        return {"t1gd": float(self.t1gd.sum()) * voxel_ml, "flair": float(self.flair.sum()) * voxel_ml}


def synthesize(
    truth: dict[str, float],
    anatomy: Anatomy,
    *,
    simulator: FisherKolmogorov | None = None,
    seed: int = 0,
    with_pet: bool = True,
    masks: str = "threshold",
) -> SyntheticPatient:
    """Grow a tumour with ``truth``'s model parameters and image it with ``truth``'s imaging parameters.

    ``masks`` is ``"threshold"`` or ``"detection"`` (see the module docstring); ``"detection"`` needs
    ``sigma_alpha`` in ``truth`` and draws the masks with ``seed``.

    Raises:
        ValueError: a missing parameter, an unknown ``masks``, thresholds outside (0, 1) or
            u_flair ≥ u_t1gd, a negative PET noise, or a tumour too small to be seen on either scan.
    """
    if masks not in MASK_MODELS:
        raise ValueError(f"masks must be one of {MASK_MODELS}, got {masks!r}")
    needed = (PARAMETER_NAMES + ("u_t1gd", "u_flair") + (("sigma_alpha",) if masks == "detection" else ())
              + (("pet_scale", "pet_sigma") if with_pet else ()))
    missing = [name for name in needed if name not in truth]
    if missing:
        raise ValueError(f"missing parameters: {', '.join(missing)}")
    if not 0 < truth["u_flair"] < truth["u_t1gd"] < 1:
        raise ValueError(f"thresholds must satisfy 0 < u_flair < u_t1gd < 1, got {truth['u_flair']}, "
                         f"{truth['u_t1gd']}")
    simulator = simulator or FisherKolmogorov()
    params = torch.tensor([[truth[name] for name in PARAMETER_NAMES]], dtype=torch.float32)
    density = simulator.simulate(params, anatomy)[0].numpy()
    scans = draw_scans(torch.from_numpy(density)[None], {name: truth[name] for name in needed[len(PARAMETER_NAMES):]},
                       torch.from_numpy(anatomy.tissue > 0), masks=masks, with_pet=with_pet,
                       generator=torch.Generator().manual_seed(seed))
    t1gd, flair = scans.t1gd[0].numpy(), scans.flair[0].numpy()
    if not t1gd.any() or not flair.any():
        raise ValueError(f"the tumour never exceeds u_t1gd = {truth['u_t1gd']} (maximum {density.max():.3f}): "
                         "nothing would show on T1Gd; grow it longer or faster")
    pet = None if scans.pet is None else scans.pet[0].numpy()
    used = {name: float(truth[name]) for name in needed}
    return SyntheticPatient(anatomy=anatomy, density=density, t1gd=t1gd, flair=flair, pet=pet, truth=used)


def write_synthetic(patient: SyntheticPatient, out: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the scans, the tissue maps, the true density and ``truth.json`` into ``out``."""
    out = Path(out)
    affine = patient.anatomy.affine
    arrays = {"t1gd": patient.t1gd, "flair": patient.flair, "wm": patient.anatomy.wm,
              "gm": patient.anatomy.gm, "csf": patient.anatomy.csf, "true_density": patient.density}
    if patient.pet is not None:
        arrays["pet"] = patient.pet
    paths = {name: write_nifti(array, affine, out / f"{name}.nii.gz") for name, array in arrays.items()}
    units = PARAMETER_UNITS | IMAGING_UNITS
    truth = {name: {"value": value, "unit": units[name]} for name, value in patient.truth.items()}
    truth["mu_1"] = {"value": float(np.sqrt(patient.truth["D_w"] * patient.truth["T"])), "unit": "mm"}
    truth["mu_2"] = {"value": float(np.sqrt(patient.truth["rho"] * patient.truth["T"])), "unit": "1"}
    paths["truth"] = out / "truth.json"
    paths["truth"].write_text(json.dumps(truth, indent=2) + "\n")
    return paths
