"""Figures a person looks at first: orthogonal slices of a tumour density over the anatomy."""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from simulators.anatomy import Anatomy  # noqa: E402
from simulators.nifti import atomic_output  # noqa: E402


def finite_or_none(value: float) -> float | None:
    """``value`` as a float for JSON, or None (JSON null) when it is NaN or infinite."""
    return float(value) if math.isfinite(float(value)) else None


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
    outlines: dict[str, np.ndarray] | None = None,
) -> Path:
    """Save axial, coronal and sagittal slices of ``density`` over grey/white matter as a PNG.

    Arrays are canonical (RAS+): the axial slice is shown with anterior up and the patient's right on the
    viewer's left (radiological convention), as are the coronal and sagittal slices. Contours mark the
    ``thresholds`` that imaging is thought to detect (e.g. T1Gd ≈ 0.7, FLAIR ≈ 0.25). ``outlines`` (label →
    binary mask on the same grid, e.g. the observed segmentations) are drawn as dashed white-to-blue
    contours, so a fitted density can be judged against the data it was fitted to.
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
        for (label, mask), style in zip((outlines or {}).items(), ("--", ":", "-.")):
            if mask[index].any():
                axis.contour(mask[index].T.astype(np.float32), levels=[0.5], colors="deepskyblue",
                             linewidths=1.0, linestyles=style, origin="lower", extent=extent)
                axis.plot([], [], color="deepskyblue", linestyle=style, label=label)
        if outlines and name == "axial" and axis.get_legend_handles_labels()[0]:  # an outline crosses this slice
            axis.legend(loc="lower left", fontsize=7, framealpha=0.6)
        if name != "sagittal":
            axis.invert_xaxis()  # radiological convention: patient's right on the viewer's left
        axis.set_title(f"{name} ({where})")
        axis.set_xlabel("mm")
    mappable = plt.cm.ScalarMappable(cmap=colormap, norm=plt.Normalize(0, 1))
    figure.colorbar(mappable, ax=axes, shrink=0.8, label="tumour cell density u")
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def _save(figure: plt.Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` as a PNG atomically and close it."""
    path = Path(path)
    try:
        with atomic_output(path) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
    finally:
        plt.close(figure)
    return path


def _span(values: np.ndarray) -> tuple[float, float]:
    """The range of ``values``, widened around a single value so a histogram can bin it."""
    low, high = float(np.min(values)), float(np.max(values))
    if high - low <= 1e-9 * max(1.0, abs(low)):
        pad = 1e-3 * max(1.0, abs(low))
        return low - pad, high + pad
    return low, high


def label_pair_axis(axis: plt.Axes, row: int, column: int, p: int, xlabel: str, ylabel: str) -> None:
    """Label one panel of a ``p × p`` pair plot: x labels on the bottom row, y labels on the first column
    (below the diagonal), tick labels hidden elsewhere."""
    if row == p - 1:
        axis.set_xlabel(xlabel, fontsize=8)
    else:
        axis.set_xticklabels([])
    if column == 0 and row > 0:
        axis.set_ylabel(ylabel, fontsize=8)
    elif column > 0:
        axis.set_yticklabels([])
    axis.tick_params(labelsize=6)


def plot_pairs(
    samples: np.ndarray,
    names: tuple[str, ...],
    path: str | os.PathLike[str],
    *,
    units: dict[str, str] | None = None,
    truth: dict[str, float] | None = None,
    best: np.ndarray | None = None,
) -> Path:
    """Corner plot of equally weighted ``samples[n, P]``: histograms on the diagonal, 2-D densities below.

    ``best`` (one row, e.g. the MAP sample) is marked in orange, ``truth`` (name → value, when known) in
    red, so coverage and identifiability can be read off at a glance.
    """
    samples = np.asarray(samples, dtype=np.float64)
    p = len(names)
    figure, axes = plt.subplots(p, p, figsize=(1.55 * p + 1, 1.55 * p + 1), squeeze=False)
    units = units or {}
    for row in range(p):
        for column in range(p):
            axis = axes[row, column]
            if column > row:
                axis.set_visible(False)
                continue
            x = samples[:, column]
            if row == column:
                axis.hist(x, bins=30, range=_span(x), color="0.35", histtype="stepfilled", alpha=0.8)
                axis.set_yticks([])
            else:
                axis.hist2d(x, samples[:, row], bins=30, range=(_span(x), _span(samples[:, row])), cmap="Greys")
            for marks, colour in ((best, "tab:orange"), (None if truth is None else
                                  np.array([truth.get(n, np.nan) for n in names]), "tab:red")):
                if marks is None or not np.isfinite(marks[column]):
                    continue
                axis.axvline(marks[column], color=colour, linewidth=0.9)
                if row != column and np.isfinite(marks[row]):
                    axis.axhline(marks[row], color=colour, linewidth=0.9)
            unit = units.get(names[column], "")
            label_pair_axis(axis, row, column, p, names[column] + (f" [{unit}]" if unit not in ("", "1") else ""),
                            names[row])
    legend = [("MAP sample", "tab:orange")] + ([("truth", "tab:red")] if truth else [])
    figure.legend(handles=[plt.Line2D([], [], color=c, label=label) for label, c in legend],
                  loc="upper right", fontsize=9)
    figure.suptitle(f"posterior, {len(samples)} samples")
    return _save(figure, path)


def plot_tempering(stages: tuple[dict[str, float], ...], path: str | os.PathLike[str]) -> Path:
    """TMCMC diagnostics per stage: tempering exponent p_j (log scale), acceptance rate of the moves
    (with the 0.234 target), the running log-evidence, and the distinct samples left in the population."""
    if not stages:
        raise ValueError("no stages to plot")
    stage = np.array([s["stage"] for s in stages])
    figure, axes = plt.subplots(2, 2, figsize=(10, 6.5), constrained_layout=True)
    exponent = np.array([s["exponent"] for s in stages])
    axes[0, 0].semilogy(stage[1:], exponent[1:], "o-")
    axes[0, 0].set_ylabel("tempering exponent p")
    axes[0, 1].plot(stage[1:], [s["acceptance"] for s in stages[1:]], "o-")
    axes[0, 1].axhline(0.234, color="0.5", linestyle="--", label="target 0.234")
    axes[0, 1].set_ylabel("acceptance rate")
    axes[0, 1].set_ylim(0, 1)
    axes[0, 1].legend(fontsize=8)
    axes[1, 0].plot(stage, [s["log_evidence"] for s in stages], "o-")
    axes[1, 0].set_ylabel("log-evidence so far")
    axes[1, 1].plot(stage, [s["unique"] for s in stages], "o-")
    axes[1, 1].set_ylabel("distinct samples")
    for axis in axes.flat:
        axis.set_xlabel("stage")
    last = stages[-1]
    figure.suptitle(f"TMCMC: {len(stages) - 1} stages, {int(last['n_simulations'])} simulations, "
                    f"{last['wall_s']:.0f} s")
    return _save(figure, path)
