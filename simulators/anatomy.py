"""Brain anatomy on a voxel grid: tissue probabilities with the geometry that places them in the world.

An :class:`Anatomy` is what every simulator integrates on. It carries white matter, grey matter and CSF
probabilities (float32, same shape) together with the 4×4 voxel-to-world ``affine`` (millimetres, RAS+ as in
NIfTI), so densities computed on it can be written back as NIfTI images that overlay the input.

Every operation that changes the grid (:meth:`Anatomy.resample`, :meth:`Anatomy.crop`) keeps world
coordinates: a point in millimetres lies on the same tissue before and after, so seeds and results given in
world millimetres stay valid. :meth:`Anatomy.mirrored` is the one deliberate change of world content.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse

from simulators.nifti import NiftiError, Volume, check_same_grid, read_volume

PathLike = str | os.PathLike[str]

PROBABILITY_TOLERANCE = 1e-3
"""How far outside [0, 1] a tissue map may stray (rounding in stored files) before it is refused."""

@dataclass(frozen=True, eq=False)
class Anatomy:
    """Tissue probability maps on a grid with its voxel-to-world affine.

    Attributes:
        wm: white-matter probability, float32 array of shape ``(X, Y, Z)``, values in [0, 1].
        gm: grey-matter probability, same shape.
        csf: cerebrospinal-fluid probability, same shape (zeros where unknown).
        affine: 4×4 voxel-to-world matrix in millimetres (NIfTI convention).

    Tumour cells live in tissue, ``wm + gm``; CSF and background carry no cells and no flux.
    """

    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        shapes = {np.shape(self.wm), np.shape(self.gm), np.shape(self.csf)}
        if len(shapes) != 1:
            raise ValueError(f"wm, gm and csf must share one shape, got {sorted(shapes)}")
        if np.ndim(self.wm) != 3:
            raise ValueError(f"tissue maps must be 3D, got shape {np.shape(self.wm)}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError("affine must be a finite 4x4 matrix")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("affine is singular")
        for name in ("wm", "gm", "csf"):
            array = np.ascontiguousarray(getattr(self, name), dtype=np.float32)
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} holds NaN or infinite values")
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(X, Y, Z)``."""
        return tuple(int(n) for n in self.wm.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths along the three array axes, in millimetres."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def tissue(self) -> np.ndarray:
        """Probability that a voxel is brain parenchyma (``wm + gm``, clipped to [0, 1])."""
        return np.clip(self.wm + self.gm, 0.0, 1.0)

    def world_to_voxel(self, points_mm: np.ndarray) -> np.ndarray:
        """Map world coordinates ``[..., 3]`` (mm) to continuous voxel indices ``[..., 3]``."""
        points = np.asarray(points_mm, dtype=np.float64)
        inverse = np.linalg.inv(self.affine)
        return points @ inverse[:3, :3].T + inverse[:3, 3]

    def voxel_to_world(self, indices: np.ndarray) -> np.ndarray:
        """Map continuous voxel indices ``[..., 3]`` to world coordinates ``[..., 3]`` (mm)."""
        idx = np.asarray(indices, dtype=np.float64)
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    @classmethod
    def from_nifti(cls, wm: PathLike, gm: PathLike, csf: PathLike | None = None) -> Anatomy:
        """Read white-matter, grey-matter and (optionally) CSF maps from NIfTI files.

        The maps are probabilities or binary masks in [0, 1] (values within ``PROBABILITY_TOLERANCE`` of that
        range are clipped into it); a missing CSF map means zero CSF. All are read with
        :func:`simulators.nifti.read_volume`, so the anatomy is in canonical RAS+ orientation whatever the
        files' own. Where ``wm + gm + csf`` exceeds 1 the three are scaled down to sum to 1.

        Raises:
            NiftiError: naming the offending file, for anything ``read_volume`` refuses, values outside
                [0, 1], a shape or grid (corner voxels more than ``AFFINE_TOLERANCE_MM`` apart) that differs
                from the white-matter map's, and white- and grey-matter maps that hold no tissue at all.
        """
        reference = read_volume(wm)
        maps = {"wm": _probabilities(reference)}
        for name, path in (("gm", gm), ("csf", csf)):
            if path is None:
                maps[name] = np.zeros_like(maps["wm"])
                continue
            volume = read_volume(path)
            check_same_grid(volume, reference)
            maps[name] = _probabilities(volume)
        if not np.any(maps["wm"] + maps["gm"] > 0):
            raise NiftiError(reference.path, f"no tissue: this white-matter map and the grey-matter map {gm} "
                                             "are zero everywhere")
        scale = 1.0 / np.maximum(maps["wm"] + maps["gm"] + maps["csf"], 1.0)
        return cls(wm=maps["wm"] * scale, gm=maps["gm"] * scale, csf=maps["csf"] * scale, affine=reference.affine)

    def resample(self, spacing_mm: float | tuple[float, float, float] = 2.0) -> Anatomy:
        """The same anatomy on a grid of another spacing, in the same world coordinates.

        The new grid has the same orientation (direction cosines of the affine's columns) and the same
        field-of-view corner: the outer edge of voxel 0 (its centre minus half a voxel along each axis) sits at
        the same world point. Along each axis it has ``ceil(extent / spacing)`` voxels, so it covers the whole
        old field of view; where the last voxel reaches past it (by less than one new voxel), that part is
        background.

        Values: along an axis that gets coarser, each new voxel is the overlap-weighted mean of the old voxels
        it covers (conservative remapping: total tissue volume, ``sum × voxel volume``, is kept exactly, and
        partial volumes stay probabilities); along an axis that gets finer, linear interpolation between old
        voxel centres as :meth:`resample_array_to` does. Both act one axis at a time, which is exact for this
        separable box geometry.
        """
        affine, weights = self._resampling(spacing_mm)
        maps = {name: _apply_along_axes(getattr(self, name), weights) for name in ("wm", "gm", "csf")}
        return Anatomy(**maps, affine=affine)

    def resample_array(self, array: np.ndarray, spacing_mm: float | tuple[float, float, float]) -> np.ndarray:
        """An array on this grid carried onto the grid of ``self.resample(spacing_mm)``, the same way.

        Along coarser axes each new voxel is the overlap-weighted mean of the old ones, so a binary mask
        becomes the fraction of each new voxel it covers and a PET map the mean uptake.
        """
        array = np.asarray(array, dtype=np.float32)
        if array.shape != self.shape:
            raise ValueError(f"array of shape {array.shape} does not lie on this grid {self.shape}")
        return _apply_along_axes(array, self._resampling(spacing_mm)[1])

    def _resampling(self, spacing_mm: float | tuple[float, float, float]) -> tuple[np.ndarray, list[sparse.csr_array]]:
        """Affine of the grid at ``spacing_mm`` and the per-axis matrices onto it (see :meth:`resample`)."""
        spacing = _spacing_triple(spacing_mm)
        old_spacing = np.asarray(self.spacing_mm)
        extents = np.asarray(self.shape) * old_spacing
        shape = tuple(max(1, int(np.ceil(e / s - 1e-6))) for e, s in zip(extents, spacing))
        affine = np.eye(4)
        affine[:3, :3] = self.affine[:3, :3] / old_spacing * spacing
        corner = self.voxel_to_world(np.full(3, -0.5))
        affine[:3, 3] = corner + 0.5 * affine[:3, :3].sum(axis=1)
        weights = [_box_weights(n_old, n_new, ratio) if ratio >= 1.0
                   else _linear_weights((np.arange(n_new) + 0.5) * ratio - 0.5, n_old)
                   for n_old, n_new, ratio in zip(self.shape, shape, spacing / old_spacing)]
        return affine, weights

    def resample_array_to(self, array: np.ndarray, target: Anatomy) -> np.ndarray:
        """Carry an array on this anatomy's grid onto ``target``'s grid, through world coordinates.

        Trilinear interpolation at the world positions of ``target``'s voxel centres (the outermost value in
        the half voxel beyond this grid's outer centres); zero where ``target`` reaches outside this field of
        view. Used to write a density computed on a resampled grid back on the input grid. When the two grids
        share axis directions (as after :meth:`resample` or :meth:`crop`) it runs one axis at a time.
        """
        array = np.asarray(array, dtype=np.float32)
        if array.shape != self.shape:
            raise ValueError(f"array of shape {array.shape} does not lie on this grid {self.shape}")
        to_here = np.linalg.inv(self.affine) @ target.affine  # target voxel index -> index on this grid
        if np.allclose(to_here[:3, :3], np.diag(np.diag(to_here[:3, :3])), rtol=0, atol=1e-9):
            weights = [_linear_weights(to_here[a, a] * np.arange(target.shape[a]) + to_here[a, 3], self.shape[a])
                       for a in range(3)]
            return _apply_along_axes(array, weights)
        indices = np.indices(target.shape, dtype=np.float64).reshape(3, -1)
        here = to_here[:3, :3] @ indices + to_here[:3, 3:]
        values = ndimage.map_coordinates(array, here, order=1, mode="nearest")
        inside = np.all((here >= -0.5) & (here <= np.asarray(self.shape)[:, None] - 0.5), axis=0)
        return np.where(inside, values, 0.0).reshape(target.shape).astype(np.float32)

    def crop(self, slices: tuple[slice, slice, slice]) -> Anatomy:
        """The sub-grid ``self.wm[slices]`` (likewise gm, csf), with its affine shifted to keep world positions.

        Voxel ``(i, j, k)`` of the crop lies at the world position of voxel ``(i + a, j + b, k + c)`` of this
        anatomy, where ``(a, b, c)`` are the slice starts. Slices take the usual Python bounds (negative and
        open ends allowed) but must have step 1 and select at least one voxel.
        """
        if len(slices) != 3 or not all(isinstance(s, slice) for s in slices):
            raise ValueError(f"crop takes three slices, got {slices!r}")
        bounds = [s.indices(n) for s, n in zip(slices, self.shape)]
        if any(step != 1 or stop <= start for start, stop, step in bounds):
            raise ValueError(f"crop slices must have step 1 and select voxels, got {slices!r} on {self.shape}")
        box = tuple(slice(start, stop) for start, stop, _ in bounds)
        affine = self.affine.copy()
        affine[:3, 3] = self.voxel_to_world(np.array([start for start, _, _ in bounds], dtype=np.float64))
        return Anatomy(wm=self.wm[box], gm=self.gm[box], csf=self.csf[box], affine=affine)

    def crop_to_tissue(self, margin_voxels: int = 2) -> Anatomy:
        """:meth:`crop` to the bounding box of every voxel with any WM, GM or CSF, plus ``margin_voxels``.

        The margin is clamped at the grid's border; nothing with a non-zero probability is cut away.
        """
        if margin_voxels < 0:
            raise ValueError(f"margin_voxels must be non-negative, got {margin_voxels}")
        occupied = (self.wm > 0) | (self.gm > 0) | (self.csf > 0)
        if not occupied.any():
            raise ValueError("the anatomy holds no tissue to crop to")
        slices = []
        for axis, n in enumerate(self.shape):
            hits = np.flatnonzero(occupied.any(axis=tuple(a for a in range(3) if a != axis)))
            slices.append(slice(max(0, hits[0] - margin_voxels), min(n, hits[-1] + 1 + margin_voxels)))
        return self.crop(tuple(slices))  # type: ignore[arg-type]

    def mirrored(self, axis: int) -> Anatomy:
        """The mirror image of this anatomy across the grid's mid-plane of array axis ``axis``.

        The maps are flipped along ``axis`` (voxel ``i`` takes the values of voxel ``n - 1 - i``) on the same
        grid, so the affine is unchanged. In world space this is the reflection :meth:`mirror_point`: the
        tissue that sat at world point ``p`` now sits at ``mirror_point(p, axis)``. For an affine with
        orthogonal columns (no shear) that reflection is the ordinary mirror across the plane through the grid
        centre perpendicular to the axis's world direction; with shear it is the oblique reflection along that
        direction which keeps the plane spanned by the other two axes through the grid centre. Mirroring twice
        gives the original.
        """
        axis = _check_axis(axis)
        flip = {name: np.flip(getattr(self, name), axis) for name in ("wm", "gm", "csf")}
        return Anatomy(**flip, affine=self.affine)

    def mirror_point(self, point_mm: np.ndarray, axis: int) -> np.ndarray:
        """World points ``[..., 3]`` (mm) reflected as :meth:`mirrored` reflects the anatomy.

        Continuous index ``x`` along ``axis`` becomes ``n - 1 - x``; the other indices stay. Use it to move a
        seed position together with the anatomy.
        """
        axis = _check_axis(axis)
        indices = self.world_to_voxel(point_mm)
        indices[..., axis] = self.shape[axis] - 1 - indices[..., axis]
        return self.voxel_to_world(indices)


def _probabilities(volume: Volume) -> np.ndarray:
    """The volume's values as probabilities, refusing values outside [0, 1] beyond rounding."""
    low, high = float(volume.data.min()), float(volume.data.max())
    if low < -PROBABILITY_TOLERANCE or high > 1.0 + PROBABILITY_TOLERANCE:
        raise NiftiError(volume.path, f"values span [{low:g}, {high:g}]; a tissue map holds probabilities "
                                      "or a binary mask in [0, 1]")
    return np.clip(volume.data, 0.0, 1.0)


def _spacing_triple(spacing_mm: float | tuple[float, float, float]) -> np.ndarray:
    """A positive, finite spacing per axis from one number or three."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.ndim == 0:
        spacing = np.full(3, float(spacing))
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm must be a positive number or three, got {spacing_mm!r}")
    return spacing


def _check_axis(axis: int) -> int:
    """``axis`` if it names an array axis of a 3D grid."""
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    return int(axis)


def _box_weights(n_old: int, n_new: int, ratio: float) -> sparse.csr_array:
    """The ``n_new × n_old`` matrix that averages one axis onto voxels ``ratio ≥ 1`` times larger.

    Positions are in old voxel units with old voxel ``j`` covering ``[j, j + 1)`` and new voxel ``i``
    covering ``[i·ratio, (i + 1)·ratio)``, both from the common field-of-view corner; weight = overlap length
    / ``ratio``, i.e. the mean over the new voxel with background beyond the old grid.
    """
    rows, cols, values = [], [], []
    for i in range(n_new):
        start, stop = i * ratio, (i + 1) * ratio
        for j in range(int(np.floor(start)), min(n_old, int(np.ceil(stop)))):
            overlap = min(stop, j + 1) - max(start, j)
            if overlap > 0:
                rows.append(i)
                cols.append(j)
                values.append(overlap / ratio)
    return sparse.csr_array((np.asarray(values, np.float32), (rows, cols)), shape=(n_new, n_old))


def _linear_weights(positions: np.ndarray, n_old: int) -> sparse.csr_array:
    """The ``len(positions) × n_old`` matrix of linear interpolation at continuous old indices ``positions``.

    Between the outermost old voxel centres: linear; in the half voxel beyond them: the outermost value;
    further out (outside the old field of view): zero.
    """
    positions = np.asarray(positions, dtype=np.float64)
    rows = np.flatnonzero((positions >= -0.5) & (positions <= n_old - 0.5))
    x = np.clip(positions[rows], 0.0, n_old - 1.0)
    left = np.minimum(np.floor(x).astype(int), max(n_old - 2, 0))
    fraction = x - left
    right = np.minimum(left + 1, n_old - 1)
    values = np.concatenate([1.0 - fraction, fraction]).astype(np.float32)
    return sparse.csr_array((values, (np.concatenate([rows, rows]), np.concatenate([left, right]))),
                            shape=(len(positions), n_old))


def _apply_along_axes(array: np.ndarray, weights: list[sparse.csr_array]) -> np.ndarray:
    """Apply one resampling matrix per axis (separable resampling)."""
    for axis, matrix in enumerate(weights):
        moved = np.moveaxis(array, axis, 0)
        flat = matrix @ moved.reshape(moved.shape[0], -1)
        array = np.moveaxis(flat.reshape((matrix.shape[0],) + moved.shape[1:]), 0, axis)
    return np.ascontiguousarray(array, dtype=np.float32)
