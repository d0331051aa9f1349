"""Compare fits of one patient: do two methods (or two settings) reach the same posterior, and at what cost?

For every pair of fit folders (written by ``personalize fit``):

- the classifier two-sample test (C2ST; Lopez-Paz & Oquab 2017, arXiv:1610.06545) over the identifiable
  parameters, with the MLP classifier of sbibm's published C2ST (Lueckmann et al. 2021, arXiv:2101.04653)
  as ``sbi.utils.metrics.c2st(..., classifier="mlp")`` implements it: 0.5 when the two sample sets cannot
  be told apart, 1 when they are disjoint;
- the 1-Wasserstein distance of each shared parameter's weighted marginals, also divided by the pooled
  standard deviation so that it is unit-free;
- the Dice coefficients of the two MAP densities thresholded at the mean of the runs' MAP ``u_flair``
  and ``u_t1gd``;

beside each run's simulations and wall time. D_w, rho and T are not identifiable from one scan, only
``mu_1 = sqrt(D_w*T)`` and ``mu_2 = sqrt(rho*T)`` are (Ezhov et al. 2023), so C2ST looks at those.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sbi.utils.metrics import c2st  # noqa: E402
from scipy.stats import wasserstein_distance  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from personalize.overlap import dice  # noqa: E402
from personalize.posterior import Posterior  # noqa: E402
from personalize.report import _save, _span, finite_or_none, label_pair_axis  # noqa: E402
from simulators.nifti import atomic_output  # noqa: E402

IDENTIFIABLE = ("mu_1", "mu_2", "x", "y", "z", "u_t1gd", "u_flair")
"""Parameters one scan identifies; C2ST compares runs over these."""
PET_IDENTIFIABLE = ("pet_scale", "pet_sigma")
"""Added to `IDENTIFIABLE` when every compared run has them."""
RUN_FILES = ("summary.json", "posterior.nc", "map_density.nii.gz")
C2ST_FOLDS = 5


@dataclass(frozen=True)
class Run:
    """One fit folder as read for comparison: its summary, posterior and MAP density (with its affine)."""

    path: Path
    label: str
    summary: Mapping[str, Any]
    posterior: Posterior
    map_density: np.ndarray
    affine: np.ndarray

    @property
    def method(self) -> str:
        """The engine that produced the run (``summary.json``'s ``method``)."""
        return str(self.summary["method"])

    def map_value(self, name: str) -> float:
        """The MAP value of parameter ``name`` recorded in ``summary.json``."""
        value = self.summary["parameters"].get(name, {}).get("map")
        if value is None:
            raise ValueError(f"{self.path / 'summary.json'} has no MAP value of {name}")
        return float(value)


@dataclass(frozen=True)
class PairComparison:
    """How run ``a`` and run ``b`` differ (labels of `Run`)."""

    a: str
    b: str
    c2st: float
    c2st_parameters: tuple[str, ...]
    wasserstein: dict[str, float]
    relative_wasserstein: dict[str, float]
    """Wasserstein distance / pooled standard deviation sqrt((var_a + var_b) / 2); NaN when both are 0."""
    dice_flair: float
    dice_t1gd: float
    threshold_flair: float
    threshold_t1gd: float


@dataclass(frozen=True)
class Comparison:
    """Every pair of the compared runs, the draws C2ST used, and the files written."""

    runs: tuple[Run, ...]
    pairs: tuple[PairComparison, ...]
    n_samples: int
    seed: int
    files: dict[str, Path]

    def to_dict(self) -> dict[str, Any]:
        """The content of ``comparison.json`` (non-finite numbers as null)."""
        runs = [{
            "label": run.label,
            "method": run.method,
            "path": str(run.path),
            "n_simulations": int(run.summary["n_simulations"]),
            "wall_s": float(run.summary["wall_s"]),
            "parameters": {name: {key: entry.get(key) for key in ("map", "mean", "q05", "q95", "unit")}
                           for name, entry in run.summary["parameters"].items()},
        } for run in self.runs]
        pairs = [{
            "a": pair.a,
            "b": pair.b,
            "c2st": pair.c2st,
            "c2st_parameters": list(pair.c2st_parameters),
            "wasserstein": pair.wasserstein,
            "relative_wasserstein": {name: finite_or_none(v) for name, v in pair.relative_wasserstein.items()},
            "dice_flair": pair.dice_flair,
            "dice_t1gd": pair.dice_t1gd,
            "threshold_flair": pair.threshold_flair,
            "threshold_t1gd": pair.threshold_t1gd,
        } for pair in self.pairs]
        settings = {"function": "sbi.utils.metrics.c2st", "classifier": "mlp", "n_folds": C2ST_FOLDS,
                    "n_samples": self.n_samples, "seed": self.seed}
        return {"runs": runs, "pairs": pairs, "c2st": settings, "files": {k: str(p) for k, p in self.files.items()}}


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read a fit folder; a missing file is a FileNotFoundError naming it. Labelled ``method:folder``."""
    path = Path(path)
    for name in RUN_FILES:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found: {path} is not a fit folder written by personalize fit")
    summary = json.loads((path / "summary.json").read_text())
    image = nib.load(path / "map_density.nii.gz")
    return Run(path=path, label=f"{summary['method']}:{path.resolve().name}", summary=summary,
               posterior=Posterior.from_netcdf(path / "posterior.nc"),
               map_density=np.asarray(image.dataobj, dtype=np.float32), affine=np.asarray(image.affine))


def check_same_grid(runs: Sequence[Run]) -> None:
    """ValueError naming both folders when two runs' MAP densities lie on different grids."""
    first = runs[0]
    for run in runs[1:]:
        if run.map_density.shape != first.map_density.shape:
            raise ValueError(f"MAP densities on different grids: {first.path} has shape {first.map_density.shape}, "
                             f"{run.path} has {run.map_density.shape}")
        if not np.allclose(run.affine, first.affine, atol=1e-4):
            raise ValueError(f"MAP densities on different grids: {first.path} and {run.path} differ in affine")


def identifiable_parameters(runs: Sequence[Run]) -> tuple[str, ...]:
    """`IDENTIFIABLE`, plus `PET_IDENTIFIABLE` when every run has them; ValueError if a run lacks one."""
    for run in runs:
        missing = [name for name in IDENTIFIABLE if name not in run.posterior.parameter_names]
        if missing:
            raise ValueError(f"{run.path / 'posterior.nc'} lacks the identifiable parameters {', '.join(missing)}")
    with_pet = all(set(PET_IDENTIFIABLE) <= set(run.posterior.parameter_names) for run in runs)
    return IDENTIFIABLE + (PET_IDENTIFIABLE if with_pet else ())


def equal_weight_samples(posterior: Posterior, n: int, seed: int) -> np.ndarray:
    """``n`` equally weighted draws ``[n, P]``: a weighted posterior is resampled in proportion to its
    weights (`Posterior.resample`); an equally weighted one is subsampled without replacement, so that
    i.i.d. draws (NPE) stay free of the duplicates a classifier could memorize."""
    if posterior.is_weighted:
        return posterior.resample(n, seed).samples
    if n > len(posterior.samples):
        raise ValueError(f"{n} draws asked of a {posterior.method} posterior with {len(posterior.samples)} samples")
    index = np.random.default_rng(seed).choice(len(posterior.samples), size=n, replace=False)
    return posterior.samples[index]


def c2st_accuracy(x: np.ndarray, y: np.ndarray, *, seed: int) -> float:
    """Cross-validated accuracy of sbibm's MLP classifier telling ``x[n, D]`` from ``y[n, D]`` (z-scored by x).

    BLAS runs on one thread here: the MLP's matrices (minibatches of 200 by 10·D) are too small to gain from
    more, and on a busy machine threads waiting for each other made it several times slower.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return float(c2st(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32),
                          seed=seed, n_folds=C2ST_FOLDS, classifier="mlp"))


def wasserstein(a: Posterior, b: Posterior, name: str) -> tuple[float, float]:
    """1-Wasserstein distance of the weighted marginals of ``name``, and that distance divided by the pooled
    standard deviation sqrt((var_a + var_b) / 2) (NaN when both marginals are constant)."""
    x, y = a.samples[:, a.parameter_names.index(name)], b.samples[:, b.parameter_names.index(name)]
    distance = float(wasserstein_distance(x, y, a.weights, b.weights))
    variances = [float(w @ (v - w @ v) ** 2) for v, w in ((x, a.weights), (y, b.weights))]
    pooled = float(np.sqrt(np.mean(variances)))
    return distance, (distance / pooled if pooled > 0 else float("nan"))


def compare_pair(a: Run, b: Run, draws_a: np.ndarray, draws_b: np.ndarray, identifiable: tuple[str, ...],
                 *, seed: int) -> PairComparison:
    """C2ST of the equally weighted ``draws_*`` (columns: ``identifiable``), Wasserstein distances of every
    shared parameter, and the Dice coefficients of the MAP densities at the mean MAP thresholds."""
    shared = [name for name in a.posterior.parameter_names if name in b.posterior.parameter_names]
    distances = {name: wasserstein(a.posterior, b.posterior, name) for name in shared}
    threshold_flair = (a.map_value("u_flair") + b.map_value("u_flair")) / 2
    threshold_t1gd = (a.map_value("u_t1gd") + b.map_value("u_t1gd")) / 2
    return PairComparison(
        a=a.label, b=b.label,
        c2st=c2st_accuracy(draws_a, draws_b, seed=seed),
        c2st_parameters=identifiable,
        wasserstein={name: d for name, (d, _) in distances.items()},
        relative_wasserstein={name: r for name, (_, r) in distances.items()},
        dice_flair=dice(a.map_density > threshold_flair, b.map_density > threshold_flair),
        dice_t1gd=dice(a.map_density > threshold_t1gd, b.map_density > threshold_t1gd),
        threshold_flair=threshold_flair, threshold_t1gd=threshold_t1gd,
    )


def _unique_labels(runs: list[Run]) -> list[Run]:
    """The runs, a repeated label (the same folder twice, or equal folder names) suffixed with #2, #3, ..."""
    seen: dict[str, int] = {}
    unique = []
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        unique.append(run if seen[run.label] == 1 else replace(run, label=f"{run.label}#{seen[run.label]}"))
    return unique


def compare_runs(runs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *, n_samples: int = 2000,
                 seed: int = 0) -> Comparison:
    """Compare every pair of the fit folders ``runs``; write ``out/comparison.json`` and ``out/figures/``
    (``pairs.png``, ``marginals.png``).

    C2ST uses the same number of draws from every run: ``n_samples``, or fewer when an equally weighted run
    holds fewer samples (the smallest such run's size). Run ``i``'s draws use seed ``seed + i``; the
    classifier and its folds use ``seed``.
    """
    if len(runs) < 2:
        raise ValueError(f"compare needs at least two fit folders, got {len(runs)}")
    loaded = _unique_labels([load_run(path) for path in runs])
    check_same_grid(loaded)
    identifiable = identifiable_parameters(loaded)
    n = min([n_samples] + [len(run.posterior.samples) for run in loaded if not run.posterior.is_weighted])
    columns = [[run.posterior.parameter_names.index(name) for name in identifiable] for run in loaded]
    draws = [equal_weight_samples(run.posterior, n, seed + i)[:, column]
             for i, (run, column) in enumerate(zip(loaded, columns))]
    pairs = tuple(compare_pair(loaded[i], loaded[j], draws[i], draws[j], identifiable, seed=seed)
                  for i, j in combinations(range(len(loaded)), 2))

    out = Path(out)
    labels = [run.label for run in loaded]
    files = {
        "pairs": plot_overlaid_pairs(draws, labels, identifiable, out / "figures" / "pairs.png"),
        "marginals": plot_marginals(loaded, out / "figures" / "marginals.png"),
        "comparison": out / "comparison.json",
    }
    comparison = Comparison(runs=tuple(loaded), pairs=pairs, n_samples=n, seed=seed, files=files)
    with atomic_output(files["comparison"]) as temporary:
        temporary.write_text(json.dumps(comparison.to_dict(), indent=2) + "\n")
    return comparison


def _colours(k: int) -> list[tuple[float, float, float, float]]:
    """One tab10 colour per run."""
    return [plt.get_cmap("tab10")(i % 10) for i in range(k)]


def plot_overlaid_pairs(draws: Sequence[np.ndarray], labels: Sequence[str], names: Sequence[str],
                        path: str | os.PathLike[str]) -> Path:
    """Pair plot of equally weighted ``draws`` (one ``[n, P]`` array per run), one colour per run: scatter
    below the diagonal, histograms on shared bins on it."""
    p = len(names)
    figure, axes = plt.subplots(p, p, figsize=(1.55 * p + 1, 1.55 * p + 1), squeeze=False)
    colours = _colours(len(draws))
    spans = [_span(np.concatenate([d[:, i] for d in draws])) for i in range(p)]
    for row in range(p):
        for column in range(p):
            axis = axes[row, column]
            if column > row:
                axis.set_visible(False)
                continue
            for samples, colour in zip(draws, colours):
                if row == column:
                    axis.hist(samples[:, column], bins=30, range=spans[column], density=True, color=colour,
                              histtype="step", linewidth=1.1)
                else:
                    axis.scatter(samples[:, column], samples[:, row], s=1.5, color=colour, alpha=0.35,
                                 linewidths=0)
            axis.set_xlim(spans[column])
            if row == column:
                axis.set_yticks([])
            else:
                axis.set_ylim(spans[row])
            label_pair_axis(axis, row, column, p, names[column], names[row])
    figure.legend(handles=[plt.Line2D([], [], color=c, label=label) for label, c in zip(labels, colours)],
                  loc="upper right", fontsize=9)
    figure.suptitle(f"identifiable parameters, {len(draws[0])} draws per run")
    return _save(figure, path)


def plot_marginals(runs: Sequence[Run], path: str | os.PathLike[str]) -> Path:
    """One panel per parameter shared by all runs: weighted histograms overlaid, one colour per run, the
    90 % interval (q05, q95) of each run marked by dashed lines."""
    names = [n for n in runs[0].posterior.parameter_names if all(n in r.posterior.parameter_names for r in runs)]
    columns = min(4, len(names))
    rows = -(-len(names) // columns)
    height = 2.4 * rows + 0.9
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, height), squeeze=False)
    figure.subplots_adjust(left=0.03, right=0.98, top=1 - 0.8 / height, bottom=0.55 / height, hspace=0.55,
                           wspace=0.1)  # fixed margins: constrained layout doubled the time to save
    colours = _colours(len(runs))
    intervals = [run.posterior.quantile(np.array([0.05, 0.95])) for run in runs]
    for axis, name in zip(axes.flat, names):
        index = [run.posterior.parameter_names.index(name) for run in runs]
        span = _span(np.concatenate([run.posterior.samples[:, i] for run, i in zip(runs, index)]))
        for run, i, interval, colour in zip(runs, index, intervals, colours):
            axis.hist(run.posterior.samples[:, i], bins=40, range=span, weights=run.posterior.weights,
                      density=True, color=colour, histtype="step", linewidth=1.1)
            for bound in interval[:, i]:
                axis.axvline(bound, color=colour, linestyle="--", linewidth=0.9)
        unit = runs[0].posterior.units.get(name, "")
        axis.set_xlabel(name + (f" [{unit}]" if unit not in ("", "1") else ""), fontsize=8)
        axis.set_yticks([])
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(names):]:
        axis.set_visible(False)
    figure.legend(handles=[plt.Line2D([], [], color=c, label=run.label) for run, c in zip(runs, colours)],
                  loc="upper right", ncol=min(len(runs), 4), fontsize=8)
    figure.suptitle("marginals (dashed: 90 % intervals)", x=0.03, ha="left")
    return _save(figure, path)
