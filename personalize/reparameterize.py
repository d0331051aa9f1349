"""A prior and a likelihood seen in coordinates where some positive parameters are replaced by their logs.

Fisher–Kolmogorov growth at time T depends on (D_w, ρ, T) only through D_w·T and ρ·T (rescale time by T:
∂u/∂s = D_w T ∇·(d∇u) + ρ T u(1 − u) on s ∈ [0, 1]), so its likelihood is constant along the curves
D_w = μ₁²/T, ρ = μ₂²/T. In (log D_w, log ρ, log T) those curves are straight lines, which a random-walk
proposal with the population's covariance follows; in (D_w, ρ, T) they are hyperbolas it cannot. Sampling
in log coordinates keeps the target exact: the density of z = log θ is p(θ)·θ (the Jacobian of θ = eᶻ).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogCoordinates:
    """The map between physical parameters θ and coordinates z with ``z_i = log θ_i`` where ``logged[i]``.

    Attributes:
        logged: one flag per parameter column.
    """

    logged: tuple[bool, ...]

    @classmethod
    def of(cls, names: Sequence[str], logged_names: Sequence[str]) -> LogCoordinates:
        """The map that takes the logarithm of ``logged_names`` among ``names``."""
        unknown = sorted(set(logged_names) - set(names))
        if unknown:
            raise ValueError(f"cannot take the log of {', '.join(unknown)}: not among {', '.join(names)}")
        return cls(tuple(name in logged_names for name in names))

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        if like.shape[-1] != len(self.logged):
            raise ValueError(f"expected {len(self.logged)} parameter columns, got {like.shape[-1]}")
        return torch.tensor(self.logged, device=like.device)

    def to_physical(self, z: torch.Tensor) -> torch.Tensor:
        """θ from z (``exp`` on the logged columns)."""
        return torch.where(self._mask(z), torch.exp(z), z)

    def from_physical(self, theta: torch.Tensor) -> torch.Tensor:
        """z from θ (``log`` on the logged columns; θ must be positive there)."""
        mask = self._mask(theta)
        return torch.where(mask, torch.log(torch.where(mask, theta, torch.ones_like(theta))), theta)

    def log_abs_det_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """log |dθ/dz| = Σ of z over the logged columns, ``Tensor[N]``."""
        return (z * self._mask(z)).sum(dim=-1)


@dataclass(frozen=True)
class PriorInCoordinates:
    """A prior with ``sample_with`` and ``log_prob`` (see :class:`personalize.tmcmc.SamplingPrior`),
    expressed in the coordinates z of ``coordinates``: samples are z, and ``log_prob(z) = log p(θ(z)) +
    log |dθ/dz|``."""

    prior: object
    coordinates: LogCoordinates

    def sample_with(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.coordinates.from_physical(self.prior.sample_with(n, generator).double())  # type: ignore[attr-defined]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        theta = self.coordinates.to_physical(z.double())
        log_p = self.prior.log_prob(theta.to(self.prior.dtype)).double()  # type: ignore[attr-defined]
        return log_p + self.coordinates.log_abs_det_jacobian(z.double())


@dataclass(frozen=True)
class LikelihoodInCoordinates:
    """``log_likelihood(θ(z))``: a batched log-likelihood of physical parameters called with z.

    Picklable whenever ``log_likelihood`` is, so a process pool can evaluate it.
    """

    log_likelihood: Callable[[torch.Tensor], torch.Tensor]
    coordinates: LogCoordinates

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.log_likelihood(self.coordinates.to_physical(z))
