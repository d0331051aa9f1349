"""Brain anatomy on a voxel grid: tissue probabilities with the geometry that places them in the world.

An :class:`Anatomy` is what every simulator integrates on. It carries white matter, grey matter and CSF
probabilities (float32, same shape) together with the 4×4 voxel-to-world ``affine`` (millimetres, RAS+ as in
NIfTI), so densities computed on it can be written back as NIfTI images that overlay the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
