"""A patient's observation from NIfTI: T1Gd and FLAIR tumour masks and an optional FET-PET map.

:func:`load_observation` reads the files with :func:`simulators.nifti.read_volume` (canonical RAS+,
float32, checked), checks that they share one grid, and turns segmentations into binary masks, either
as they are (files holding only 0 and 1) or through a named :class:`LabelConvention` (a label map,
one file for both masks or one per mask). Every problem is a :class:`simulators.nifti.NiftiError`
whose message is one line, ``<file>: <problem>``. :func:`write_output` writes results back on the
input's own grid with the input's affine, so they overlay the scans in any viewer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from simulators.nifti import NiftiError, Volume, check_same_grid, read_volume, write_like

PathLike = str | os.PathLike[str]



@dataclass(frozen=True)
class LabelConvention:
    """Which labels of a segmentation count as T1Gd-positive and which as FLAIR-positive.

    T1Gd shows the enhancing rim and the necrotic core it encloses; FLAIR shows all of that plus the
    edema. A file may hold 0 and any label of ``t1gd_labels | flair_labels``, nothing else.
    """

    name: str
    t1gd_labels: frozenset[int]
    flair_labels: frozenset[int]
    description: str
    core_labels: frozenset[int] | None = None
    """The whole tumour core (enhancing rim and necrosis), where it differs from ``t1gd_labels``."""

    @property
    def core(self) -> frozenset[int]:
        """Labels of the whole tumour core: what the growth model's T1Gd threshold outlines."""
        return self.core_labels if self.core_labels is not None else self.t1gd_labels

    @property
    def labels(self) -> frozenset[int]:
        """Every nonzero label a file may hold under this convention."""
        return self.t1gd_labels | self.flair_labels


LABEL_CONVENTIONS: dict[str, LabelConvention] = {
    convention.name: convention
    for convention in (
        LabelConvention(
            "brats", frozenset({1, 4}), frozenset({1, 2, 4}),
            "BraTS 2017-2021 (Menze et al. 2015; Bakas et al. 2017): necrotic 1, edema 2, enhancing 4",
        ),
        LabelConvention(
            "gliodil", frozenset({1, 4}), frozenset({1, 3, 4}),
            "GliODIL / TumorGrowthToolkit (Balcerak et al.): enhancing 1, edema 3, necrotic 4",
        ),
        LabelConvention(
            "predictgbm", frozenset({1, 3}), frozenset({1, 2, 3}),
            "PredictGBM (and BraTS 2023 onwards): necrotic 1, edema 2, enhancing 3",
        ),
        LabelConvention(
            "gliomasolver", frozenset({1}), frozenset({1, 2, 4}),
            "GliomaSolver example patient (Lipkova et al. 2019): the T1Gd file holds 0, 1, 2, 4 and its "
            "likelihood (lib_c.c, TiLogLikelihood: data[i] == 1) counts only label 1; FLAIR is binary",
            core_labels=frozenset({1, 2, 4}),
        ),
    )
}


@dataclass(frozen=True, eq=False)
class Observation:
    """What a patient's scans say about the tumour, on one canonical (RAS+) grid.

    Attributes:
        t1gd: float32 mask (0/1) of the T1Gd-visible tumour, shape ``(X, Y, Z)``, read-only.
        flair: float32 mask (0/1) of the FLAIR-visible tumour, same shape, read-only.
        pet: float32 FET-PET map (finite, >= 0, any scale), same shape, read-only; None without PET.
        affine: 4×4 voxel-to-world matrix (mm) of the canonical arrays.
        reference: the T1Gd file's :class:`Volume`, to write results back on its grid.
    """

    t1gd: np.ndarray
    flair: np.ndarray
    pet: np.ndarray | None
    affine: np.ndarray
    reference: Volume

    def __post_init__(self) -> None:
        for name in ("t1gd", "flair", "pet", "affine"):
            value = getattr(self, name)
            if value is None:
                continue
            array = np.array(value, dtype=np.float64 if name == "affine" else np.float32, order="C")
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        shapes = {a.shape for a in (self.t1gd, self.flair, self.pet) if a is not None}
        if len(shapes) != 1 or self.t1gd.ndim != 3:
            raise ValueError(f"t1gd, flair and pet must share one 3D shape, got {sorted(shapes)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Canonical grid shape ``(X, Y, Z)``."""
        return tuple(int(n) for n in self.t1gd.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths along the canonical axes, in millimetres."""
        spacing = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(s) for s in spacing)  # type: ignore[return-value]


def load_observation(
    t1gd: PathLike, flair: PathLike, pet: PathLike | None = None, labels: str | None = None, *, core: bool = False
) -> Observation:
    """Read a patient's T1Gd and FLAIR segmentations and optional FET-PET map into an :class:`Observation`.

    Args:
        t1gd: segmentation whose positive voxels are the T1Gd-visible tumour.
        flair: segmentation of the FLAIR-visible tumour; the same path as ``t1gd`` for one label map.
        pet: FET-PET uptake on the same grid (finite, non-negative; any scale).
        labels: a name in :data:`LABEL_CONVENTIONS`; without it each segmentation must hold only 0 and 1.
        core: read T1Gd as the whole tumour core (:attr:`LabelConvention.core`), as the growth model and
            ``personalize fit`` do, instead of the convention's T1Gd labels. They differ only under
            ``gliomasolver``, whose published likelihood counts label 1 alone; its necrosis (label 4) read
            as T1Gd-negative contradicts a model whose density is highest there.

    Raises:
        NiftiError: a file cannot be read (see :func:`read_volume`), the files are not on one grid (same
            shape, affines within :data:`AFFINE_TOLERANCE_MM`), a segmentation holds labels it should not,
            a mask is empty, or the PET map has negative values. The convention name is checked first.
    """
    convention = _convention(labels, t1gd)
    t1gd_volume = read_volume(t1gd)
    same_file = Path(flair).resolve() == Path(t1gd).resolve()
    flair_volume = t1gd_volume if same_file else read_volume(flair)
    check_same_grid(flair_volume, t1gd_volume)
    pet_map = None
    if pet is not None:
        pet_volume = read_volume(pet)
        check_same_grid(pet_volume, t1gd_volume)
        negative = int(np.count_nonzero(pet_volume.data < 0))
        if negative:
            raise NiftiError(pet, f"PET holds {negative} negative values (min {pet_volume.data.min():g})")
        pet_map = pet_volume.data
    return Observation(
        t1gd=_mask(t1gd_volume, convention, "core" if core else "T1Gd"),
        flair=_mask(flair_volume, convention, "FLAIR"),
        pet=pet_map,
        affine=t1gd_volume.affine,
        reference=t1gd_volume,
    )


def write_output(array: np.ndarray, observation: Observation, path: PathLike) -> Path:
    """Write a canonical ``array`` of the observation's shape on the T1Gd file's grid and affine."""
    if tuple(np.shape(array)) != observation.shape:
        problem = f"array of shape {tuple(np.shape(array))} is not on the grid {observation.shape}"
        raise NiftiError(path, problem)
    return write_like(array, observation.reference, path)


def summarize(observation: Observation) -> dict[str, object]:
    """Voxel counts and volumes of the masks, PET statistics, and the T1Gd file's grid as stored.

    ``shape``, ``spacing_mm`` and ``orientation`` (:func:`nibabel.aff2axcodes`) describe the file's own
    axes, as a viewer shows them; volumes use the voxel volume ``|det(affine)|``.
    """
    reference = observation.reference
    voxel_ml = abs(float(np.linalg.det(observation.affine[:3, :3]))) / 1000.0

    def mask_summary(mask: np.ndarray) -> dict[str, int | float]:
        voxels = int(np.count_nonzero(mask))
        return {"voxels": voxels, "volume_ml": voxels * voxel_ml}

    pet = observation.pet
    return {
        "file": reference.path,
        "shape": list(reference.source_shape),
        "spacing_mm": np.linalg.norm(reference.source_affine[:3, :3], axis=0).tolist(),
        "orientation": "".join(nib.aff2axcodes(reference.source_affine)),
        "t1gd": mask_summary(observation.t1gd),
        "flair": mask_summary(observation.flair),
        "pet": None if pet is None else {
            "min": float(pet.min()),
            "max": float(pet.max()),
            "mean": float(pet.mean()),
            "positive_voxels": int(np.count_nonzero(pet > 0)),
        },
    }


def _convention(name: str | None, path: PathLike) -> LabelConvention | None:
    if name is None:
        return None
    if name not in LABEL_CONVENTIONS:
        raise NiftiError(path, f"unknown label convention {name!r}; valid: {', '.join(LABEL_CONVENTIONS)}")
    return LABEL_CONVENTIONS[name]


def _mask(volume: Volume, convention: LabelConvention | None, kind: str) -> np.ndarray:
    """The ``kind`` ("T1Gd", "core" or "FLAIR") mask of a segmentation, after checking which labels it holds."""
    values = np.unique(volume.data)
    fractional = values[values != np.round(values)]
    if fractional.size:
        problem = f"holds non-integer values (e.g. {fractional[0]:g}); expected a mask or labels"
        raise NiftiError(volume.path, problem)
    found = sorted(int(v) for v in values)
    if convention is None:
        if not set(found) <= {0, 1}:
            problem = f"holds labels {found}; pass --labels {'|'.join(LABEL_CONVENTIONS)}"
            raise NiftiError(volume.path, problem)
        positive = frozenset({1})
    else:
        unexpected = sorted(set(found) - convention.labels - {0})
        if unexpected:
            raise NiftiError(
                volume.path,
                f"holds labels {unexpected} that {convention.name} does not define "
                f"(it has {sorted(convention.labels)})",
            )
        positive = {"T1Gd": convention.t1gd_labels, "core": convention.core, "FLAIR": convention.flair_labels}[kind]
    mask = np.isin(volume.data, sorted(positive)).astype(np.float32)
    if not mask.any():
        raise NiftiError(volume.path, f"empty {kind} mask (no voxel labelled {sorted(positive)})")
    return mask
