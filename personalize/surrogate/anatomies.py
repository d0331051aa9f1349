"""The anatomies the geometry-aware surrogate is trained and tested on, each with its role.

Ezhov et al. (IEEE TMI 2022, arXiv:2009.04240) train on simulations in many patients' anatomies and test on
anatomies the network never saw. Without a cohort of tissue maps on this machine, the anatomies here are:

- ``atlas``: the default atlas (MNI152 2009a from the nilearn wheel, :func:`simulators.atlas.default_atlas`);
- ``mirrored``: the atlas mirrored left–right (a brain's hemispheres are not mirror images of each other);
- ``deformed-<k>``: free-form deformations of the atlas or of its mirror image (:func:`simulators.deformation.deformed`;
  odd k deform the mirror), with a global scale in [0.9, 1.1], a shift of up to 5 mm per axis and a random field of
  up to 8 mm per axis on 40 mm control points, all drawn from k;
- patients' own tissue maps, read from NIfTI (:meth:`simulators.anatomy.Anatomy.from_nifti`).

Every anatomy is resampled to the dataset's spacing and cropped to its tissue. Whole anatomies are held out:
each has a role, ``train``, ``validation`` or ``test``, and no sample of a held-out anatomy is trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulators.anatomy import Anatomy
from simulators.atlas import default_atlas
from simulators.deformation import deformed

ROLES = ("train", "validation", "test")
SOURCES = ("atlas", "mirrored", "deformed", "files")
MIRROR_AXIS = 0
"""The atlas's left–right array axis (MNI152 in RAS: the first)."""


@dataclass(frozen=True)
class AnatomySpec:
    """One anatomy of a dataset.

    Attributes:
        name: its name in the dataset (unique).
        role: ``train``, ``validation`` or ``test``.
        source: ``atlas``, ``mirrored``, ``deformed`` (then ``index`` draws the deformation) or ``files``
            (then ``files`` holds the WM, GM and optionally CSF map).
        index: the deformation's number.
        files: paths of the tissue maps.
    """

    name: str
    role: str
    source: str
    index: int = 0
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"anatomy {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if self.source not in SOURCES:
            raise ValueError(f"anatomy {self.name!r}: source must be one of {SOURCES}, got {self.source!r}")
        object.__setattr__(self, "files", tuple(str(f) for f in self.files))
        if (self.source == "files") != bool(self.files) or len(self.files) not in (0, 2, 3):
            raise ValueError(f"anatomy {self.name!r}: a 'files' anatomy takes WM, GM and optionally CSF maps, and no "
                             f"other source takes files; got source {self.source!r} with {len(self.files)} files")


def default_anatomies(deformations: int = 8) -> tuple[AnatomySpec, ...]:
    """The atlas and its mirror image for training, and ``deformations`` deformed copies: all but the last two
    train, the second-to-last validates and the last tests."""
    if deformations < 2:
        raise ValueError(f"deformations must be at least 2 (one to validate on, one to test on), got {deformations}")
    roles = ["train"] * (deformations - 2) + ["validation", "test"]
    return (AnatomySpec("atlas", "train", "atlas"), AnatomySpec("mirrored", "train", "mirrored"),
            *(AnatomySpec(f"deformed-{k}", role, "deformed", index=k) for k, role in enumerate(roles)))


def build_anatomy(spec: AnatomySpec, spacing_mm: float) -> Anatomy:
    """``spec``'s anatomy at ``spacing_mm``, cropped to its tissue (no margin: the cube's sampling pads with
    background)."""
    if spec.source == "files":
        anatomy = Anatomy.from_nifti(*spec.files).resample(spacing_mm)
    else:
        anatomy = default_atlas(spacing_mm)
        if spec.source == "mirrored" or (spec.source == "deformed" and spec.index % 2):
            anatomy = anatomy.mirrored(MIRROR_AXIS)
        if spec.source == "deformed":
            rng = np.random.default_rng([spec.index, 1])
            anatomy = deformed(anatomy, seed=spec.index, amplitude_mm=8.0, control_mm=40.0,
                               scale=float(rng.uniform(0.9, 1.1)), shift_mm=tuple(rng.uniform(-5.0, 5.0, 3)))
    return anatomy.crop_to_tissue(margin_voxels=0)
