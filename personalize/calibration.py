"""Calibration of an amortized posterior: simulation-based calibration (SBC) and TARP expected coverage.

An amortized estimate q(θ | x) (round 1 of :func:`personalize.npe.sequential_npe`, trained on prior draws) is
*calibrated* when, over pairs θ ~ p(θ), x ~ p(x | θ), the true θ is as likely to fall anywhere in q(· | x) as
a draw of q itself. Two checks of that, both through ``sbi.diagnostics`` (sbi 0.27):

- SBC (Talts et al. 2018, arXiv:1804.06788): the rank of each true marginal θ_j among N draws of q(· | x) is
  uniform on {0, …, N}. ``check_sbc`` tests each parameter's ranks with a Kolmogorov-Smirnov test against
  Uniform(0, N), and with a classifier two-sample test (C2ST, a random forest: 0.5 = indistinguishable from
  uniform ranks); it also compares the data-averaged posterior (one draw of q per x) with the prior by C2ST.
- TARP (Lemos, Coogan et al., ICML 2023, arXiv:2302.03026): for a random reference point r per pair, the
  fraction f of q's draws closer to r than the true θ is (in z-scored parameter space); under calibration f
  is uniform, so its empirical CDF, the expected coverage probability (ECP) at credibility α, follows the
  diagonal. ``check_tarp`` returns the signed area between ECP and the diagonal over α ≥ 0.5 (ATC: > 0 too
  wide, < 0 too narrow or biased) and a two-sample KS p-value of the ECP values against the α grid.

Both are necessary conditions only: the prior itself, used as the "posterior", passes them (it is calibrated
and learns nothing). What they catch is over- and under-confidence (both) and bias (SBC; TARP's random
references average a shift out: on the Gaussian toy of ``tests/test_calibration.py`` a posterior shifted by
0.6 of its sd gave SBC KS p-values below 1e-11 but an ATC of -0.013, within the tolerance below).

:meth:`Calibration.calibrated` is the verdict used here: P + 1 tests, each at ``level / (P + 1)``
(Bonferroni), so a calibrated estimate fails with probability at most ``level``:

- every SBC KS p-value above ``level / (P + 1)``, and
- ``|ATC| ≤ z · sqrt(5/192) / sqrt(n)`` with z the ``1 - level / (2 (P + 1))`` normal quantile. Under
  calibration the coverage values f_i are iid uniform, and the ATC is (up to sbi's binning) the mean of
  ``5/8 - max(f_i, 1/2)``, whose variance is 5/192; so this is a two-sided z-test (|ATC| ≤ 0.034 for
  n = 200, P = 2, level 1 %). With the exact posterior of a Gaussian toy (200 repetitions each) the ATC's
  standard deviation measured 0.0167 at n = 100 and 0.0117 at n = 200, against 0.0161 and 0.0114 here.

The TARP KS p-value is reported but not used: sbi compares the ~n/10 ECP values with the α grid as two
independent samples, which they are not, and it hardly moves (measured: ≥ 0.987 for the exact posterior,
and still 0.2–0.4 for draws shrunk to 0.3 of their spread, whose ATC was -0.08). sbi places the α grid from
the smallest to the largest observed coverage value, not from 0 to 1, so an ECP curve of a strongly
over-dispersed estimate spans a shortened α range.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import binom, norm  # noqa: E402
from sbi.diagnostics import check_sbc, check_tarp, run_sbc, run_tarp  # noqa: E402
from sbi.diagnostics.sbc import check_uniformity_frequentist  # noqa: E402
from torch.distributions import Distribution  # noqa: E402

from personalize.report import _save, finite_or_none  # noqa: E402

Simulator = Callable[[torch.Tensor], torch.Tensor]
"""``simulate(theta[N, P]) -> x[N, ...]`` (as :data:`personalize.npe.Simulator`)."""

ATC_NULL_SD = math.sqrt(5.0 / 192.0)
"""Standard deviation of one pair's contribution to the ATC under calibration (module docstring)."""


@dataclass(frozen=True, eq=False)
class Calibration:
    """SBC ranks and TARP coverage of an amortized posterior over ``n_simulations`` prior predictive pairs.

    Attributes:
        ranks: ``[n, P]`` rank of each true θ_j among ``n_posterior_samples`` posterior draws.
        parameter_names: the P names.
        n_posterior_samples: posterior draws per pair (ranks lie in ``0 … n_posterior_samples``).
        sbc_ks_pvalues: ``[P]`` KS p-values of the ranks against uniform.
        sbc_c2st_ranks: ``[P]`` C2ST accuracy of the ranks against uniform draws (0.5: uniform; NaN when
            the C2STs were skipped).
        sbc_c2st_dap: ``[P]`` C2ST accuracy of the data-averaged posterior against the prior (0.5: equal;
            NaN when skipped).
        tarp_ecp: expected coverage probability at each ``tarp_alpha``.
        tarp_alpha: credibility levels (sbi's grid, ``n // 10`` bins).
        tarp_atc: signed area between ECP and the diagonal for α ≥ 0.5 (> 0: too wide; < 0: too narrow).
        tarp_ks_pvalue: sbi's KS p-value of ECP against α (reported, not used by :meth:`calibrated`).
        n_simulations: pairs used (after dropping non-finite simulations).
        n_invalid: simulations dropped because x held NaN or ±inf.
        seed: the seed of every draw.
        wall_s: wall time of simulation and diagnostics (s).
    """

    ranks: np.ndarray
    parameter_names: tuple[str, ...]
    n_posterior_samples: int
    sbc_ks_pvalues: np.ndarray
    sbc_c2st_ranks: np.ndarray
    sbc_c2st_dap: np.ndarray
    tarp_ecp: np.ndarray
    tarp_alpha: np.ndarray
    tarp_atc: float
    tarp_ks_pvalue: float
    n_simulations: int
    n_invalid: int
    seed: int
    wall_s: float

    def per_test_level(self, level: float = 0.01) -> float:
        """Level of each of the P + 1 tests behind :meth:`calibrated` (Bonferroni: ``level / (P + 1)``)."""
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        return level / (len(self.parameter_names) + 1)

    def atc_tolerance(self, level: float = 0.01) -> float:
        """Largest |ATC| of a calibrated estimate but with probability ``per_test_level(level)`` (z-test)."""
        z = norm.ppf(1.0 - self.per_test_level(level) / 2.0)
        return float(z * ATC_NULL_SD / math.sqrt(self.n_simulations))

    def failures(self, level: float = 0.01) -> tuple[str, ...]:
        """Why the estimate is not calibrated at ``level`` (empty when it is; module docstring)."""
        threshold = self.per_test_level(level)
        reasons = [f"SBC ranks of {name} not uniform (KS p = {p:.3g} < {threshold:.3g})"
                   for name, p in zip(self.parameter_names, self.sbc_ks_pvalues) if not p > threshold]
        tolerance = self.atc_tolerance(level)
        if not abs(self.tarp_atc) <= tolerance:
            kind = "too wide" if self.tarp_atc > 0 else "too narrow or biased"
            reasons.append(f"TARP coverage {kind} (ATC = {self.tarp_atc:+.3f}, |ATC| > {tolerance:.3f})")
        return tuple(reasons)

    def calibrated(self, level: float = 0.01) -> bool:
        """All SBC KS p-values above ``level / (P + 1)`` and |ATC| within :meth:`atc_tolerance` (module docstring).

        A calibrated estimate fails with probability at most ``level``; passing shows no miscalibration
        that n pairs can detect, not an informative posterior (the prior passes too).
        """
        return not self.failures(level)

    def to_dict(self, level: float = 0.01) -> dict[str, Any]:
        """JSON-friendly content: statistics per parameter, the TARP curve, the verdict at ``level``."""
        return {
            "parameter_names": list(self.parameter_names),
            "n_simulations": self.n_simulations,
            "n_invalid": self.n_invalid,
            "n_posterior_samples": self.n_posterior_samples,
            "seed": self.seed,
            "wall_s": self.wall_s,
            "sbc": {name: {"ks_pvalue": float(self.sbc_ks_pvalues[j]),
                           "c2st_ranks": finite_or_none(self.sbc_c2st_ranks[j]),
                           "c2st_dap": finite_or_none(self.sbc_c2st_dap[j])}
                    for j, name in enumerate(self.parameter_names)},
            "tarp": {"atc": self.tarp_atc, "ks_pvalue": self.tarp_ks_pvalue,
                     "alpha": [float(a) for a in self.tarp_alpha], "ecp": [float(e) for e in self.tarp_ecp]},
            "level": level,
            "atc_tolerance": self.atc_tolerance(level),
            "calibrated": self.calibrated(level),
            "failures": list(self.failures(level)),
        }


def stream_seed(seed: int, name: str) -> int:
    """The torch seed of the named random stream of a calibration with ``seed`` (independent streams)."""
    return int.from_bytes(hashlib.sha256(f"calibration:{seed}:{name}".encode()).digest()[:7], "little")


def calibrate(
    posterior: Any,
    prior: Distribution,
    simulate: Simulator,
    *,
    n_simulations: int = 200,
    n_posterior_samples: int = 1000,
    seed: int = 0,
    parameter_names: Sequence[str] | None = None,
    batched: bool = True,
    c2st: bool = True,
    progress: bool = False,
) -> Calibration:
    """SBC and TARP of an amortized ``posterior`` over ``n_simulations`` fresh draws θ ~ prior, x = simulate(θ).

    Args:
        posterior: an sbi posterior (e.g. ``NPEResult.posterior`` of a one-round NPE); a default x it holds
            is ignored, every x is passed explicitly.
        prior: the distribution the estimate was trained on; θ is drawn from it.
        simulate: θ ``[N, P]`` → x ``[N, ...]`` (vectors or ``[N, C, X, Y, Z]`` volumes); rows with NaN or
            ±inf are dropped and counted in ``n_invalid``.
        n_simulations: prior predictive pairs (sbi recommends at least 100).
        n_posterior_samples: posterior draws per pair.
        seed: seeds θ, the simulator's draws from torch's global generator, posterior sampling, TARP's
            reference points and the C2STs; torch's global random state is left as it was.
        parameter_names: names of the P parameters (default: ``prior.names`` when the prior has them, else
            ``theta_1 … theta_P``).
        batched: sample all x at once (``sample_batched``, DirectPosterior); sbi falls back to one x at a
            time, with a warning, for posteriors without it. False: one x at a time.
        c2st: run ``check_sbc``'s random-forest C2STs (about 2 s each, 2P of them, on a loaded 2-core
            machine); False: the KS tests alone (``check_uniformity_frequentist``, what ``check_sbc`` runs
            first), the C2ST fields NaN.
        progress: sbi's progress bars.
    """
    start = time.perf_counter()
    if n_simulations < 20:
        raise ValueError(f"n_simulations must be >= 20 (TARP bins n // 10 values), got {n_simulations}")
    with torch.random.fork_rng():
        torch.manual_seed(stream_seed(seed, "prior"))
        theta = prior.sample((n_simulations,))
        x = simulate(theta)
    calibration = calibration_from_simulations(posterior, theta, x, n_posterior_samples=n_posterior_samples,
                                               seed=seed, parameter_names=_names(prior, theta, parameter_names),
                                               batched=batched, c2st=c2st, progress=progress)
    return replace(calibration, wall_s=time.perf_counter() - start)


def calibration_from_simulations(
    posterior: Any,
    theta: torch.Tensor,
    x: torch.Tensor,
    *,
    n_posterior_samples: int = 1000,
    seed: int = 0,
    parameter_names: Sequence[str] | None = None,
    batched: bool = True,
    c2st: bool = True,
    progress: bool = False,
) -> Calibration:
    """SBC and TARP of ``posterior`` on given prior predictive pairs (θ drawn from the prior, x simulated).

    The pairs must not have been used to train the estimate. Arguments as in :func:`calibrate`.
    """
    start = time.perf_counter()
    if theta.ndim != 2 or x.shape[0] != theta.shape[0]:
        raise ValueError(f"theta must be [N, P] and x [N, ...] with the same N, got {tuple(theta.shape)} and "
                         f"{tuple(x.shape)}")
    names = _names(None, theta, parameter_names)
    valid = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    theta, x = theta[valid], x[valid]
    n = int(theta.shape[0])
    if n < 20:
        raise ValueError(f"{n} finite simulations; calibration needs at least 20")
    options = dict(num_posterior_samples=n_posterior_samples, show_progress_bar=progress,
                   use_batched_sampling=batched)
    with torch.random.fork_rng(), warnings.catch_warnings():
        # sample_batched caps its rejection batch for many x and says so; nothing to act on
        warnings.filterwarnings("ignore", message="Capping max_sampling_batch_size")
        torch.manual_seed(stream_seed(seed, "sbc"))
        ranks, dap = run_sbc(theta, x, posterior, **options)
        if c2st:
            sbc = {k: v.cpu().numpy().astype(np.float64)
                   for k, v in check_sbc(ranks, theta, dap, num_posterior_samples=n_posterior_samples).items()}
        else:
            skipped = np.full(theta.shape[1], np.nan)
            sbc = {"ks_pvals": check_uniformity_frequentist(ranks, n_posterior_samples).numpy().astype(np.float64),
                   "c2st_ranks": skipped, "c2st_dap": skipped}
        torch.manual_seed(stream_seed(seed, "tarp"))
        ecp, alpha = run_tarp(theta, x, posterior, **options)
        atc, ks = check_tarp(ecp.cpu(), alpha.cpu())
    return Calibration(
        ranks=ranks.cpu().numpy().astype(np.int64),
        parameter_names=names,
        n_posterior_samples=n_posterior_samples,
        sbc_ks_pvalues=sbc["ks_pvals"],
        sbc_c2st_ranks=sbc["c2st_ranks"],
        sbc_c2st_dap=sbc["c2st_dap"],
        tarp_ecp=ecp.cpu().numpy().astype(np.float64),
        tarp_alpha=alpha.cpu().numpy().astype(np.float64),
        tarp_atc=float(atc),
        tarp_ks_pvalue=float(ks),
        n_simulations=n,
        n_invalid=int((~valid).sum()),
        seed=seed,
        wall_s=time.perf_counter() - start,
    )


def _names(prior: Distribution | None, theta: torch.Tensor, names: Sequence[str] | None) -> tuple[str, ...]:
    """``names``, else the prior's ``names``, else ``theta_1 … theta_P``; checked against θ's width."""
    dimension = int(theta.shape[-1])
    if names is None:
        names = getattr(prior, "names", None) or [f"theta_{j + 1}" for j in range(dimension)]
    names = tuple(str(name) for name in names)
    if len(names) != dimension:
        raise ValueError(f"{len(names)} parameter names for {dimension} parameters")
    return names


PANELS_PER_ROW = 6
"""Panels side by side in :func:`plot_calibration`'s figure before it wraps to another row."""


def plot_calibration(calibration: Calibration, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Save the rank histogram of each parameter and the TARP coverage curve as one PNG.

    Histograms bin the ranks 0 … N into ``n // 20`` equal bins (at least 5; Talts et al. 2018) with the grey
    band holding 99 % of a bin's count under uniformity (binomial); a ∪ shape means too narrow, ∩ too wide,
    a slope bias. (sbi's ``sbc_rank_plot`` bins over the observed rank range instead of 0 … N and sets its
    band with p = 1 / (bins + 1), so it is not used.) The TARP panel draws ECP against α with the diagonal
    and the band ``α ± 2.58 · sqrt(α(1 - α) / n)`` where a calibrated ECP lies pointwise 99 % of the time.
    """
    names = calibration.parameter_names
    n, n_draws = calibration.n_simulations, calibration.n_posterior_samples
    panels = len(names) + 1
    columns = min(panels, PANELS_PER_ROW)
    rows = -(-panels // columns)
    figure, grid_axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), constrained_layout=True,
                                     squeeze=False)
    axes = grid_axes.ravel()[:panels]
    for unused in grid_axes.ravel()[panels:]:
        unused.set_visible(False)
    bins = max(5, n // 20)
    edges = np.linspace(0, n_draws + 1, bins + 1)
    low, high = binom(n, 1.0 / bins).ppf(0.005), binom(n, 1.0 / bins).ppf(0.995)
    for j, (axis, name) in enumerate(zip(axes[:-1], names)):
        counts, _, _ = axis.hist(calibration.ranks[:, j], bins=edges, color="firebrick", alpha=0.75)
        axis.set_ylim(0, 1.3 * max(high, float(counts.max())))  # room for the legend
        axis.axhspan(low, high, color="0.4", alpha=0.25, zorder=3, label="99 % under uniformity")
        axis.axhline(n / bins, color="0.3", linewidth=0.8, zorder=3)
        axis.set_xlim(0, n_draws + 1)
        axis.set_xlabel(f"rank of {name}")
        axis.set_title(f"SBC {name}: KS p = {calibration.sbc_ks_pvalues[j]:.2g}", fontsize=9)
        if j % columns == 0:
            axis.set_ylabel("count")
        if j == 0:
            axis.legend(loc="upper right", fontsize=7, framealpha=0.6)
    axis = axes[-1]
    grid = np.linspace(0, 1, 101)
    spread = 2.576 * np.sqrt(grid * (1 - grid) / n)
    axis.fill_between(grid, grid - spread, grid + spread, color="0.85", label="99 % pointwise")
    axis.plot(grid, grid, color="black", linestyle="--", linewidth=0.8, label="calibrated")
    axis.plot(calibration.tarp_alpha, calibration.tarp_ecp, color="tab:blue", label="TARP")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_aspect("equal")
    axis.set_xlabel("credibility level α")
    axis.set_ylabel("expected coverage")
    axis.set_title(f"TARP: ATC = {calibration.tarp_atc:+.3f}", fontsize=9)
    axis.legend(loc="upper left", fontsize=7, framealpha=0.6)
    verdict = "calibrated" if calibration.calibrated() else "not calibrated"
    figure.suptitle(f"{title + ': ' if title else ''}{verdict} at 1 % ({n} simulations, {n_draws} draws each)",
                    fontsize=10)
    return _save(figure, path)
