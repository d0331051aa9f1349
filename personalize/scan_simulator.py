"""What a likelihood-free engine simulates: parameters → the scans a scanner would show, on the working grid.

Sequential NPE never evaluates a likelihood; it learns p(θ | scans) from pairs (θ, scans). Each pair is the
growth model's density on the working grid (:class:`personalize.working_grid.ImageLogLikelihood`'s
``density``) imaged by :func:`likelihoods.imaging.draw_scans` at θ's own thresholds and PET scale and noise:
T1Gd and FLAIR masks and, where the patient has one, a PET map kept to the region where the patient's PET
was measured. The scans are stacked as channels ``[t1gd, flair(, pet)]`` and averaged over ``pool³`` blocks
(the embedding's input grid), exactly as :func:`observed_scans` stacks the patient's own.

The imaging noise of each row is seeded from ``seed`` and the row's parameter values, so a simulation is a
deterministic function of θ, whatever the chunking across processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch.nn import functional

from likelihoods.imaging import MASK_MODELS, draw_scans
from likelihoods.joint import ImageObservation
from personalize.working_grid import ImageLogLikelihood


def stack_scans(t1gd: torch.Tensor, flair: torch.Tensor, pet: torch.Tensor | None, pool: int) -> torch.Tensor:
    """``[N, C, X', Y', Z']``: the scans ``[N, X, Y, Z]`` as channels, averaged over ``pool³`` blocks."""
    channels = [t1gd.float(), flair.float()] + ([] if pet is None else [pet.float()])
    stacked = torch.stack(channels, dim=1)
    return stacked if pool == 1 else functional.avg_pool3d(stacked, pool, ceil_mode=True)


def observed_scans(scans: ImageObservation, pool: int = 1) -> torch.Tensor:
    """The patient's working scans as one row of :class:`ScanSimulator`'s output, ``[C, X', Y', Z']``
    (PET zero outside its measured region)."""
    pet = None if scans.pet is None else torch.where(scans.pet_valid, scans.pet, torch.zeros_like(scans.pet))
    return stack_scans(scans.t1gd[None], scans.flair[None], None if pet is None else pet[None], pool)[0].cpu()


def row_seed(seed: int, row: torch.Tensor) -> int:
    """A 63-bit seed from ``seed`` and the bytes of one parameter row."""
    digest = hashlib.sha256(seed.to_bytes(8, "little", signed=True) + row.double().cpu().numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


@dataclass(frozen=True, eq=False)
class ScanSimulator:
    """θ ``[N, P]`` (physical, named as ``model.parameter_names``) → scans ``[N, C, X', Y', Z']`` (picklable).

    Attributes:
        model: the growth model on the working grid with the patient's working scans (which channels exist,
            where PET was measured).
        masks: ``"threshold"`` (u > u_c; default, as segmentations are made) or ``"detection"`` (Eq. 6).
        pool: block size of the averaging onto the embedding's grid (1: the working grid itself).
        seed: seeds the imaging noise (with each row's values).
    """

    model: ImageLogLikelihood
    masks: str = "threshold"
    pool: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.masks not in MASK_MODELS:
            raise ValueError(f"masks must be one of {MASK_MODELS}, got {self.masks!r}")
        if self.pool < 1:
            raise ValueError(f"pool must be >= 1, got {self.pool}")
        if self.model.scans.t1gd is None or self.model.scans.flair is None:
            raise ValueError("simulating scans needs both a T1Gd and a FLAIR mask in the observation")

    @property
    def with_pet(self) -> bool:
        return self.model.scans.pet is not None

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        density = self.model.density(theta).float()
        names = self.model.parameter_names
        imaging = ("u_t1gd", "u_flair") + (("sigma_alpha",) if self.masks == "detection" else ()) \
            + (("pet_scale", "pet_sigma") if self.with_pet else ())
        tissue = torch.from_numpy(self.model.anatomy.tissue > 0)
        rows = []
        for i in range(theta.shape[0]):
            values = {name: theta[i, names.index(name)].to(density) for name in imaging}
            generator = torch.Generator(device=density.device).manual_seed(row_seed(self.seed, theta[i]))
            scans = draw_scans(density[i:i + 1], values, tissue, masks=self.masks, with_pet=self.with_pet,
                               generator=generator)
            pet = None if scans.pet is None else scans.pet * self.model.scans.pet_valid.to(scans.pet)
            rows.append(stack_scans(scans.t1gd, scans.flair, pet, self.pool))
        return torch.cat(rows).cpu()
