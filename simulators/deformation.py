"""Smooth random deformations of an anatomy: new, plausible brains from one atlas.

A deformed copy is the anatomy seen through a map from each voxel to the point it takes its tissue from:

    source(i) = c + s·(i − c) + f(i) + t

with c the grid's centre, s a global scale, t a shift and f a random displacement field: Gaussian noise on
control points ``control_mm`` apart, interpolated by cubic splines onto the grid and scaled to a peak of
``amplitude_mm`` per axis. This is the classic free-form deformation of Rueckert et al., "Nonrigid
registration using free-form deformations: application to breast MR images", IEEE TMI 18(8):712–721, 1999,
used here to make anatomies, as data augmentation for networks trained on one atlas. The maps are sampled
trilinearly and keep the grid and affine; a scale above 1 shrinks the brain on the grid (each voxel looks
farther out).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from simulators.anatomy import Anatomy


def deformed(anatomy: Anatomy, seed: int, *, amplitude_mm: float = 6.0, control_mm: float = 40.0,
             scale: float = 1.05, shift_mm: tuple[float, float, float] = (4.0, -4.0, 3.0)) -> Anatomy:
    """``anatomy`` under the deformation of the module docstring, its field drawn from ``seed``, on the same grid.

    Args:
        anatomy: the anatomy to deform (isotropic spacing).
        seed: the random displacement field's seed.
        amplitude_mm: peak displacement per axis of the random field (0: none).
        control_mm: distance between the field's control points (its smoothness).
        scale: global scale s of the source coordinates.
        shift_mm: shift t along the array axes, mm.

    Raises:
        ValueError: anisotropic spacing, a negative amplitude, a non-positive control distance or scale.
    """
    spacing = np.array(anatomy.spacing_mm)
    if not np.allclose(spacing, spacing[0]):
        raise ValueError(f"deformed needs an isotropic grid, got spacing {tuple(spacing)} mm")
    if not (amplitude_mm >= 0 and control_mm > 0 and scale > 0):
        raise ValueError(f"need amplitude_mm >= 0, control_mm > 0 and scale > 0, got {amplitude_mm}, {control_mm}, "
                         f"{scale}")
    rng = np.random.default_rng(seed)
    shape, step = np.array(anatomy.shape), spacing[0]
    control = rng.standard_normal((3, *(np.ceil(shape * step / control_mm).astype(int) + 1)))
    field = np.stack([ndimage.zoom(c, shape / np.array(c.shape), order=3) for c in control])
    peak = np.abs(field).max()
    field *= amplitude_mm / step / peak if peak > 0 else 0.0
    centre = ((shape - 1) / 2)[:, None, None, None]
    shift = (np.asarray(shift_mm, dtype=float) / step)[:, None, None, None]
    source = centre + scale * (np.indices(anatomy.shape) - centre) + field + shift
    maps = {name: ndimage.map_coordinates(getattr(anatomy, name), source, order=1) for name in ("wm", "gm", "csf")}
    return Anatomy(**maps, affine=anatomy.affine)
