"""Figures a person looks at first: orthogonal slices of a tumour density over the anatomy."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulators.anatomy import Anatomy  # noqa: E402
from simulators.nifti import atomic_output  # noqa: E402


def slice_centre(density: np.ndarray, anatomy: Anatomy) -> tuple[int, int, int]:
    """Voxel through which to cut: the density maximum, or the grid centre when the density is empty."""
    if float(density.max()) > 0:
        return tuple(int(i) for i in np.unravel_index(int(np.argmax(density)), density.shape))  # type: ignore[return-value]
    return tuple(n // 2 for n in anatomy.shape)  # type: ignore[return-value]


def plot_orthogonal_slices(
    density: np.ndarray,
    anatomy: Anatomy,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    thresholds: tuple[float, ...] = (0.25, 0.7),
) -> Path:
    """Save axial, coronal and sagittal slices of ``density`` over grey/white matter as a PNG.

    Arrays are canonical (RAS+): the axial slice is shown with anterior up and the patient's right on the
    viewer's left (radiological convention), as are the coronal and sagittal slices. Contours mark the
    ``thresholds`` that imaging is thought to detect (e.g. T1Gd ≈ 0.7, FLAIR ≈ 0.25).
    """
    i, j, k = slice_centre(density, anatomy)
    world = anatomy.voxel_to_world(np.array([i, j, k]))
    background = anatomy.wm + 0.5 * anatomy.gm
    hx, hy, hz = anatomy.spacing_mm
    cuts = (
        ("axial", f"z = {world[2]:.0f} mm", np.s_[:, :, k], (hx, hy)),
        ("coronal", f"y = {world[1]:.0f} mm", np.s_[:, j, :], (hx, hz)),
        ("sagittal", f"x = {world[0]:.0f} mm", np.s_[i, :, :], (hy, hz)),
    )
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.6), constrained_layout=True)
    colormap = plt.get_cmap("inferno")
    for axis, (name, where, index, (h_horizontal, h_vertical)) in zip(axes, cuts):
        tissue = background[index].T
        tumour = density[index].T
        extent = (0, tissue.shape[1] * h_horizontal, 0, tissue.shape[0] * h_vertical)
        axis.imshow(tissue, cmap="gray", origin="lower", extent=extent, vmin=0, vmax=1)
        colours = colormap(np.clip(tumour, 0, 1))
        colours[..., 3] = np.clip(tumour / 0.1, 0, 1) * 0.9  # faint infiltration fades into the anatomy
        axis.imshow(colours, origin="lower", extent=extent)
        if density[index].max() > min(thresholds):
            axis.contour(density[index].T, levels=sorted(thresholds), colors=["cyan", "lime"][: len(thresholds)],
                         linewidths=0.8, origin="lower", extent=extent)
        if name != "sagittal":
            axis.invert_xaxis()  # radiological convention: patient's right on the viewer's left
        axis.set_title(f"{name} ({where})")
        axis.set_xlabel("mm")
    mappable = plt.cm.ScalarMappable(cmap=colormap, norm=plt.Normalize(0, 1))
    figure.colorbar(mappable, ax=axes, shrink=0.8, label="tumour cell density u")
    if title:
        figure.suptitle(title)
    path = Path(path)
    try:
        with atomic_output(path) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
    finally:
        plt.close(figure)
    return path
