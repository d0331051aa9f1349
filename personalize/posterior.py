"""The one result every inference engine returns: weighted samples, evidence, cost, and their NetCDF form.

A `Posterior` holds ``N`` samples of ``P`` named parameters with (possibly uniform) log importance weights.
It converts to an arviz ``InferenceData`` (one chain, one variable per parameter; weights, log densities,
evidence and bookkeeping in ``sample_stats`` and ``attrs``) so that ``posterior.nc`` written with
``to_netcdf`` reads back with `Posterior.from_netcdf` unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import arviz as az
import numpy as np
from scipy.special import logsumexp


@dataclass(frozen=True)
class Posterior:
    """Weighted posterior samples and what producing them cost.

    ``log_weights`` are unnormalized log importance weights (all zeros when equally weighted);
    ``log_density`` is the unnormalized log posterior density of each sample where the engine knows it
    (it identifies the MAP sample); ``log_evidence`` is ``log p(data)`` where the method estimates it.
    """

    parameter_names: tuple[str, ...]
    samples: np.ndarray
    log_weights: np.ndarray
    log_evidence: float | None
    n_simulations: int
    wall_s: float
    method: str
    units: dict[str, str] = field(default_factory=dict)
    log_density: np.ndarray | None = None
    stages: tuple[dict[str, float], ...] = ()
    """Per-stage diagnostics of a staged engine (TMCMC: :func:`personalize.tmcmc.stage_record`)."""

    def __post_init__(self) -> None:
        n, p = self.samples.shape
        if p != len(self.parameter_names):
            raise ValueError(f"{p} sample columns for {len(self.parameter_names)} parameter names")
        if self.log_weights.shape != (n,):
            raise ValueError(f"log_weights has shape {self.log_weights.shape}, expected ({n},)")
        if self.log_density is not None and self.log_density.shape != (n,):
            raise ValueError(f"log_density has shape {self.log_density.shape}, expected ({n},)")

    @property
    def weights(self) -> np.ndarray:
        """Normalized importance weights, summing to one."""
        return np.exp(self.log_weights - logsumexp(self.log_weights))

    @property
    def is_weighted(self) -> bool:
        """Whether the weights differ between samples."""
        return bool(np.ptp(self.log_weights) > 0) if len(self.log_weights) else False

    @property
    def effective_sample_size(self) -> float:
        """Kish's effective sample size, 1 / Σ w_i² of the normalized weights."""
        return float(1.0 / np.sum(self.weights**2))

    def mean(self) -> np.ndarray:
        """Weighted mean of each parameter, shape [P]."""
        return self.weights @ self.samples

    def quantile(self, q: float | np.ndarray) -> np.ndarray:
        """Quantiles of each parameter, shape [P] (or [len(q), P]).

        Equally weighted samples use numpy's default (linear) interpolation; weighted ones the inverse of
        the weighted empirical CDF, so that integer weights equal repeating samples that many times.
        """
        if not self.is_weighted:
            return np.quantile(self.samples, q, axis=0)
        return np.quantile(self.samples, q, axis=0, weights=self.weights, method="inverted_cdf")

    def map_index(self) -> int:
        """Index of the sample with the highest posterior density (needs ``log_density``)."""
        if self.log_density is None:
            raise ValueError(f"the {self.method} posterior carries no log densities, so no MAP sample")
        return int(np.argmax(self.log_density))

    def summary(self) -> dict[str, dict[str, float | str | None]]:
        """For each parameter ``{"map", "mean", "q05", "q95", "unit"}`` (``map`` None without densities)."""
        mean, (q05, q95) = self.mean(), self.quantile(np.array([0.05, 0.95]))
        best = None if self.log_density is None else self.samples[self.map_index()]
        return {
            name: {
                "map": None if best is None else float(best[i]),
                "mean": float(mean[i]),
                "q05": float(q05[i]),
                "q95": float(q95[i]),
                "unit": self.units.get(name, ""),
            }
            for i, name in enumerate(self.parameter_names)
        }

    def resample(self, n: int, seed: int) -> Posterior:
        """``n`` equally weighted samples drawn with replacement in proportion to the weights."""
        index = np.random.default_rng(seed).choice(len(self.log_weights), size=n, p=self.weights)
        return replace(
            self,
            samples=self.samples[index],
            log_weights=np.zeros(n),
            log_density=None if self.log_density is None else self.log_density[index],
        )

    def to_inference_data(self) -> az.InferenceData:
        """arviz InferenceData: one chain; weights and log densities in ``sample_stats``; the rest in the
        ``posterior`` group's attrs (JSON for the names and units)."""
        sample_stats = {"log_weight": self.log_weights[None]}
        if self.log_density is not None:
            sample_stats["lp"] = self.log_density[None]
        attrs = {
            "parameter_names": json.dumps(list(self.parameter_names)),
            "units": json.dumps(self.units),
            "log_evidence": np.nan if self.log_evidence is None else float(self.log_evidence),
            "n_simulations": int(self.n_simulations),
            "wall_s": float(self.wall_s),
            "method": self.method,
            "stages": json.dumps(list(self.stages)),
        }
        data = az.from_dict(
            posterior={name: self.samples[None, :, i] for i, name in enumerate(self.parameter_names)},
            sample_stats=sample_stats,
        )
        data.posterior.attrs.update(attrs)  # group attributes survive to_netcdf; InferenceData.attrs don't
        return data

    @classmethod
    def from_inference_data(cls, data: az.InferenceData) -> Posterior:
        """The inverse of `to_inference_data`."""
        attrs = data.posterior.attrs
        names = tuple(json.loads(attrs["parameter_names"]))
        stats = data.sample_stats
        log_evidence = float(attrs["log_evidence"])
        return cls(
            parameter_names=names,
            samples=np.stack([data.posterior[name].values[0] for name in names], axis=1),
            log_weights=stats["log_weight"].values[0],
            log_evidence=None if np.isnan(log_evidence) else log_evidence,
            n_simulations=int(attrs["n_simulations"]),
            wall_s=float(attrs["wall_s"]),
            method=str(attrs["method"]),
            units=json.loads(attrs["units"]),
            log_density=stats["lp"].values[0] if "lp" in stats else None,
            stages=tuple(json.loads(attrs.get("stages", "[]"))),
        )

    @classmethod
    def from_netcdf(cls, path: str | Path) -> Posterior:
        """Read a ``posterior.nc`` written by ``to_inference_data().to_netcdf(path)``."""
        return cls.from_inference_data(az.from_netcdf(str(path)))
