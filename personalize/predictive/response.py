"""Tumour response from binary masks over time, by RECIST 1.1 and RANO.

Lesions are the connected components of a mask (full connectivity: 8 neighbours in 2D, 26 in 3D). A 3D
lesion is measured on the axial slice where its longest in-plane diameter is largest, since both criteria
measure on axial slices. On a slice, a lesion is the union of its voxels' rectangles (side = spacing), and

    longest diameter        L = the maximal Feret diameter of that union: the largest distance between two
                                of its points, attained at two voxel corners (so one voxel measures its
                                diagonal, an a × b rectangle hypot(a·sx, b·sy));
    perpendicular diameter  P = the Feret diameter perpendicular to L: the union's extent along the
                                direction at right angles to L, the width of its corners projected there.

P equals the longest chord perpendicular to L for regions mirror-symmetric about L (discs, ellipses) and
may exceed it otherwise: an a × b rectangle has P = 2ab/hypot(a, b), its longest such chord is shorter.

- RECIST 1.1 (Eisenhauer et al., Eur J Cancer 45 (2009) 228–247): target lesions are the at most five
  largest measurable lesions (L ≥ 10 mm) at baseline; the measure is the sum of their longest diameters
  (SLD, mm). The rule of at most two targets per organ is not applied: a mask carries no organs.
- RANO (Wen et al., J Clin Oncol 28 (2010) 1963–1972): target lesions are the at most five largest
  measurable lesions (L and P ≥ 10 mm) at baseline by the product L·P; the measure is the sum of those
  products (SPD, mm²). Its clinical criteria (steroid dose, clinical status, non-enhancing disease) and
  confirmation scans are not applied.

Masks carry no lesion identities, so a follow-up's targets are its n largest lesions of any size, n being
the number of baseline targets: both criteria keep measuring a target however small it becomes. New
lesions and non-target lesions, which also decide progression clinically, are not assessed.

Each follow-up is classified against the baseline sum and the nadir (the smallest earlier sum, baseline
included), the first rule that holds deciding:

    PD  the sum rose over the nadir by ≥ 20 % and ≥ 5 mm (RECIST), by ≥ 25 % (RANO);
    CR  the sum is 0: every target lesion disappeared;
    PR  the sum fell from the baseline by ≥ 30 % (RECIST), by ≥ 50 % (RANO);
    SD  otherwise.

Thresholds are inclusive ("at least"), up to a relative 1e-9 so that an exact 30 % survives rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

CLASSES = ("CR", "PR", "SD", "PD")
"""Response classes: complete response, partial response, stable disease, progressive disease."""

GROUPS = {"CR": "responsive", "PR": "responsive", "SD": "stable", "PD": "non-responsive"}
"""Response class → the three groups of Dimou et al.: responsive, stable, non-responsive."""

_HULL_FROM = 64
"""Corner sets at least this large are reduced to their convex hull before the pairwise search."""


@dataclass(frozen=True)
class Lesion:
    """One connected component of a mask, measured on one slice.

    Attributes:
        longest_mm: L, the longest diameter on the measured slice.
        perpendicular_mm: P, the diameter perpendicular to L on that slice.
        slice: index along the axial axis of the measured slice; None for a 2D mask.
        n_voxels: voxels of the whole lesion.
        area_mm2: area of the lesion on the measured slice.
        volume_mm3: volume of the whole lesion; None for a 2D mask.
    """

    longest_mm: float
    perpendicular_mm: float
    slice: int | None
    n_voxels: int
    area_mm2: float
    volume_mm3: float | None

    @property
    def product_mm2(self) -> float:
        """L·P, the lesion's term in RANO's sum of products."""
        return self.longest_mm * self.perpendicular_mm


@dataclass(frozen=True)
class ResponseAssessment:
    """Response over a series of masks, baseline first.

    Attributes:
        criteria: ``"recist"`` (sums of longest diameters, mm) or ``"rano"`` (sums of products, mm²).
        sums: the sum over the targets at each time point.
        nadirs: for each follow-up, the smallest earlier sum (baseline included), the reference of PD.
        classes: for each follow-up, "CR", "PR", "SD" or "PD".
        targets: the lesions summed at each time point, largest first.
    """

    criteria: str
    sums: tuple[float, ...]
    nadirs: tuple[float, ...]
    classes: tuple[str, ...]
    targets: tuple[tuple[Lesion, ...], ...]

    @property
    def final(self) -> str:
        """The class of the last follow-up."""
        return self.classes[-1]


@dataclass(frozen=True)
class _Criteria:
    """What a criterion sums, what it can measure, and its thresholds (fractions; ``progression_min`` in
    the sum's unit)."""

    size: Callable[[Lesion], float]
    measurable: Callable[[Lesion, float], bool]
    partial: float
    progression: float
    progression_min: float


_CRITERIA = {
    "recist": _Criteria(
        size=lambda lesion: lesion.longest_mm,
        measurable=lambda lesion, mm: lesion.longest_mm >= mm,
        partial=0.30,
        progression=0.20,
        progression_min=5.0,
    ),
    "rano": _Criteria(
        size=lambda lesion: lesion.product_mm2,
        measurable=lambda lesion, mm: min(lesion.longest_mm, lesion.perpendicular_mm) >= mm,
        partial=0.50,
        progression=0.25,
        progression_min=0.0,
    ),
}


CRITERIA = tuple(sorted(_CRITERIA))
"""The response criteria by name."""


def axial_axis(affine: np.ndarray) -> int:
    """The array axis of an image closest to the world's superior–inferior axis, from its 4 × 4 affine.

    Uses :func:`nibabel.orientations.aff2axcodes`, so any orientation works (LPS, PIR, oblique, ...).
    """
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be a 4 x 4 matrix, got shape {matrix.shape}")
    codes = nib.orientations.aff2axcodes(matrix)
    for axis, code in enumerate(codes):
        if code in ("S", "I"):
            return axis
    raise ValueError(f"no array axis of the affine points along S/I (axis codes {codes})")


def measure_lesions(
    mask: np.ndarray, spacing: Sequence[float], *, axial_axis: int = -1
) -> tuple[Lesion, ...]:
    """The lesions of a binary ``mask`` (``[X, Y]`` or ``[X, Y, Z]``), largest longest diameter first.

    Args:
        mask: bool, or integers 0 and 1.
        spacing: voxel size in mm, one per axis (anisotropic allowed).
        axial_axis: for a 3D mask, the array axis across axial slices (see :func:`axial_axis`);
            ignored for a 2D mask.
    """
    mask = _binary(mask)
    spacing = _spacing(spacing, mask.ndim)
    if mask.ndim == 2:
        lesions = [_measure_2d(region, spacing) for region, _ in _components(mask)]
    else:
        axis = _axis(axial_axis)
        volume = np.moveaxis(mask, axis, -1)
        in_plane = tuple(h for i, h in enumerate(spacing) if i != axis)
        lesions = [_measure_3d(region, offset, in_plane, spacing[axis])
                   for region, offset in _components(volume)]
    return tuple(sorted(lesions, key=lambda lesion: (-lesion.longest_mm, -lesion.perpendicular_mm)))


def recist_sum(mask: np.ndarray, spacing: Sequence[float], **options: Any) -> float:
    """RECIST 1.1's sum of longest diameters (mm) of the ``max_targets`` largest lesions with L ≥
    ``measurable_mm`` (RECIST asks for twice the slice thickness when slices are thicker than 5 mm); options as
    :func:`target_sum`."""
    return target_sum(mask, spacing, criteria="recist", **options)


def rano_sum(mask: np.ndarray, spacing: Sequence[float], **options: Any) -> float:
    """RANO's sum of products of perpendicular diameters (mm²) of the ``max_targets`` largest lesions with
    L and P ≥ ``measurable_mm``; options as :func:`target_sum`."""
    return target_sum(mask, spacing, criteria="rano", **options)


def target_sum(
    mask: np.ndarray,
    spacing: Sequence[float],
    *,
    criteria: str,
    axial_axis: int = -1,
    measurable_mm: float = 10.0,
    max_targets: int = 5,
) -> float:
    """The sum ``criteria`` ("recist" or "rano") takes over the baseline targets of ``mask``."""
    rule = _rule(criteria)
    lesions = measure_lesions(mask, spacing, axial_axis=axial_axis)
    return _total(_targets(lesions, rule, measurable_mm, max_targets), rule)


def recist_response(sums: Sequence[float]) -> str:
    """RECIST 1.1 class of the last of ``sums`` (SLD in mm, baseline first); see the module docstring.

    The class of an earlier time point k is ``recist_response(sums[:k + 1])``.
    """
    return _classify(sums, _CRITERIA["recist"])[1][-1]


def rano_response(sums: Sequence[float]) -> str:
    """RANO class of the last of ``sums`` (SPD in mm², baseline first); see the module docstring.

    The class of an earlier time point k is ``rano_response(sums[:k + 1])``.
    """
    return _classify(sums, _CRITERIA["rano"])[1][-1]


def assess_response(
    masks: Sequence[np.ndarray],
    spacing: Sequence[float],
    *,
    criteria: str = "recist",
    axial_axis: int = -1,
    measurable_mm: float = 10.0,
    max_targets: int = 5,
) -> ResponseAssessment:
    """Response of a series of masks on one grid (baseline first) by ``criteria``, "recist" or "rano".

    Targets are the ``max_targets`` largest measurable lesions of the baseline and, at each follow-up, as
    many of its largest lesions, of any size (see the module docstring).
    """
    rule = _rule(criteria)
    if len(masks) < 2:
        raise ValueError(f"response needs a baseline and at least one follow-up mask, got {len(masks)}")
    lesions = [measure_lesions(mask, spacing, axial_axis=axial_axis) for mask in masks]
    baseline = _targets(lesions[0], rule, measurable_mm, max_targets)
    if not baseline:
        raise ValueError(f"response is not evaluable: the baseline has no measurable lesion "
                         f"(≥ {measurable_mm} mm by {criteria})")
    targets = (baseline, *(_targets(found, rule, 0.0, len(baseline)) for found in lesions[1:]))
    sums = tuple(_total(chosen, rule) for chosen in targets)
    nadirs, classes = _classify(sums, rule)
    return ResponseAssessment(criteria=criteria, sums=sums, nadirs=nadirs, classes=classes, targets=targets)


def response_group(label: str) -> str:
    """The group of a response class in the three-class scheme of Dimou et al.: "responsive" (CR, PR),
    "stable" (SD) or "non-responsive" (PD)."""
    if label not in GROUPS:
        raise ValueError(f"response class must be one of {list(CLASSES)}, got {label!r}")
    return GROUPS[label]


def _rule(criteria: str) -> _Criteria:
    """The rules of ``criteria``; a ValueError for an unknown name."""
    if criteria not in _CRITERIA:
        raise ValueError(f"criteria must be one of {sorted(_CRITERIA)}, got {criteria!r}")
    return _CRITERIA[criteria]


def _binary(mask: np.ndarray) -> np.ndarray:
    """``mask`` as a bool array of 2 or 3 dimensions; a ValueError for anything else."""
    array = np.asarray(mask)
    if array.ndim not in (2, 3):
        raise ValueError(f"mask must be 2D [X, Y] or 3D [X, Y, Z], got {array.ndim} dimensions")
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"mask must be bool or integer 0/1, got dtype {array.dtype}: threshold it first, "
                         "e.g. mask > 0.5")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"an integer mask must hold only 0 and 1, got values in [{array.min()}, "
                         f"{array.max()}]: select the labels first, e.g. mask == 1")
    return array.astype(bool)


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """``spacing`` as ``ndim`` positive, finite floats; a ValueError otherwise."""
    values = tuple(float(h) for h in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing must give one value per mask axis ({ndim}), got {len(values)}")
    if not all(math.isfinite(h) and h > 0 for h in values):
        raise ValueError(f"spacing must be positive and finite (mm), got {values}")
    return values


def _axis(axis: int) -> int:
    """A 3D mask's axial axis in 0 … 2; a ValueError when out of range."""
    if not -3 <= axis <= 2:
        raise ValueError(f"axial_axis must be an axis of a 3D mask (-3 … 2), got {axis}")
    return axis % 3


def _components(mask: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Each connected component (full connectivity) cropped to its bounding box, with the box's start
    along the last axis."""
    labels, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    return [(labels[box] == label, box[-1].start)
            for label, box in enumerate(ndimage.find_objects(labels), start=1)]


def _measure_2d(region: np.ndarray, spacing: tuple[float, ...]) -> Lesion:
    """A 2D lesion from its bool region."""
    longest, perpendicular = _diameters(region, spacing)
    n = int(region.sum())
    return Lesion(longest_mm=longest, perpendicular_mm=perpendicular, slice=None, n_voxels=n,
                  area_mm2=n * spacing[0] * spacing[1], volume_mm3=None)


def _measure_3d(region: np.ndarray, offset: int, in_plane: tuple[float, ...], thickness: float) -> Lesion:
    """A 3D lesion (axial axis last, its box starting at slice ``offset``), measured on its slice of
    largest longest diameter (the first of equals); being connected, it crosses every slice of its box."""
    measured = [_diameters(region[..., k], in_plane) for k in range(region.shape[-1])]
    best = max(range(len(measured)), key=lambda k: measured[k][0])
    n = int(region.sum())
    voxel_area = in_plane[0] * in_plane[1]
    return Lesion(longest_mm=measured[best][0], perpendicular_mm=measured[best][1], slice=offset + best,
                  n_voxels=n, area_mm2=int(region[..., best].sum()) * voxel_area,
                  volume_mm3=n * voxel_area * thickness)


def _diameters(region: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """(L, P) in mm of the union of a 2D bool region's voxel rectangles (see the module docstring).

    The corners of even one voxel span the plane, so their convex hull always exists; small corner sets
    are searched whole, as cheaply as their hull.
    """
    i, j = np.nonzero(region)
    corners = np.unique(np.stack([np.concatenate([i, i + 1, i, i + 1]),
                                  np.concatenate([j, j, j + 1, j + 1])], axis=1), axis=0)
    points = corners * np.asarray(spacing)
    if len(points) >= _HULL_FROM:
        points = points[ConvexHull(points).vertices]
    squared = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
    a, b = np.unravel_index(int(np.argmax(squared)), squared.shape)
    longest = math.sqrt(float(squared[a, b]))
    direction = (points[b] - points[a]) / longest
    across = points @ np.array([-direction[1], direction[0]])
    return longest, float(across.max() - across.min())


def _targets(lesions: Sequence[Lesion], rule: _Criteria, measurable_mm: float, count: int) -> tuple[Lesion, ...]:
    """The ``count`` largest lesions by ``rule`` among those measurable at ``measurable_mm``."""
    if count < 1:
        raise ValueError(f"max_targets must be at least 1, got {count}")
    eligible = [lesion for lesion in lesions if rule.measurable(lesion, measurable_mm)]
    return tuple(sorted(eligible, key=rule.size, reverse=True)[:count])


def _total(targets: Sequence[Lesion], rule: _Criteria) -> float:
    """The sum of the targets' sizes by ``rule``."""
    return float(sum(rule.size(lesion) for lesion in targets))


def _at_least(value: float, bound: float) -> bool:
    """value ≥ bound, up to a relative 1e-9."""
    return value >= bound or math.isclose(value, bound, rel_tol=1e-9)


def _classify(sums: Sequence[float], rule: _Criteria) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """The nadir and class of each follow-up of ``sums`` (baseline first) by ``rule``."""
    values = tuple(float(s) for s in sums)
    if len(values) < 2:
        raise ValueError(f"response needs a baseline and at least one follow-up sum, got {len(values)}")
    if not all(math.isfinite(s) and s >= 0 for s in values):
        raise ValueError(f"sums must be finite and non-negative, got {list(values)}")
    baseline = values[0]
    if baseline == 0:
        raise ValueError("response is not evaluable: the baseline sum is 0 (no measurable disease)")
    nadirs, classes = [], []
    for k, current in enumerate(values[1:], start=1):
        nadir = min(values[:k])
        rise = current - nadir
        if rise > 0 and _at_least(rise, rule.progression * nadir) and _at_least(rise, rule.progression_min):
            label = "PD"
        elif current == 0:
            label = "CR"
        elif _at_least(baseline - current, rule.partial * baseline):
            label = "PR"
        else:
            label = "SD"
        nadirs.append(nadir)
        classes.append(label)
    return tuple(nadirs), tuple(classes)
