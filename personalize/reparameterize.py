"""A prior and a likelihood seen in coordinates where some positive parameters are replaced by their logs.

Fisher–Kolmogorov growth at time T depends on (D_w, ρ, T) only through D_w·T and ρ·T (rescale time by T:
∂u/∂s = D_w T ∇·(d∇u) + ρ T u(1 − u) on s ∈ [0, 1]), so its likelihood is constant along the curves
D_w = μ₁²/T, ρ = μ₂²/T. In (log D_w, log ρ, log T) those curves are straight lines, which a random-walk
proposal with the population's covariance follows; in (D_w, ρ, T) they are hyperbolas it cannot. Sampling
in log coordinates keeps the target exact: the density of z = log θ is p(θ)·θ (the Jacobian of θ = eᶻ).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import Distribution, biject_to, constraints
from torch.distributions.transforms import ComposeTransform, IndependentTransform, Transform

from personalize.posterior import Posterior


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


class PhysicalToCoordinates(Transform):
    """θ → z of ``coordinates`` as an elementwise torch ``Transform`` over the last axis (sbi wraps the prior's
    transform in an ``IndependentTransform`` and expects elementwise parts)."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True

    def __init__(self, coordinates: LogCoordinates, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.coordinates = coordinates

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhysicalToCoordinates) and other.coordinates == self.coordinates

    def _call(self, theta: torch.Tensor) -> torch.Tensor:
        return self.coordinates.from_physical(theta)

    def _inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.coordinates.to_physical(z)

    def log_abs_det_jacobian(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Elementwise log |dz/dθ|: −z on the logged columns (d log θ / dθ = 1/θ), 0 elsewhere."""
        return -z * self.coordinates._mask(z)


class InCoordinatesSupport(constraints.Constraint):
    """z lies in the support when θ(z) lies in the prior's support."""

    event_dim = 1

    def __init__(self, prior: Distribution, coordinates: LogCoordinates) -> None:
        self.prior, self.coordinates = prior, coordinates
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        theta = self.coordinates.to_physical(value.double()).to(value.dtype)
        return self.prior.support.check(theta)


@biject_to.register(InCoordinatesSupport)
def _biject_to_coordinates_support(constraint: InCoordinatesSupport) -> Transform:
    physical = biject_to(constraint.prior.support)
    if not isinstance(physical, IndependentTransform):
        raise TypeError("the prior's support must map to an unbounded space by an IndependentTransform")
    return IndependentTransform(ComposeTransform([physical.base_transform, PhysicalToCoordinates(constraint.coordinates)]),
                                physical.reinterpreted_batch_ndims)


class PriorInCoordinates(TorchDistribution):
    """A prior expressed in the coordinates z of ``coordinates``: samples are z, and ``log_prob(z) =
    log p(θ(z)) + log |dθ/dz|``. A ``torch.distributions.Distribution`` (sbi trains on it as is) with
    ``sample_with`` for explicit generators (:class:`personalize.tmcmc.SamplingPrior`).

    Args:
        prior: a distribution over physical parameters with ``sample_with`` (:class:`personalize.priors.Prior`).
        coordinates: the log map.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    has_rsample = False

    def __init__(self, prior: Distribution, coordinates: LogCoordinates) -> None:
        self.prior, self.coordinates = prior, coordinates
        super().__init__(batch_shape=torch.Size(), event_shape=prior.event_shape, validate_args=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.prior.dtype  # type: ignore[attr-defined,no-any-return]

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return InCoordinatesSupport(self.prior, self.coordinates)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        """z drawn with torch's global generator, in the prior's dtype."""
        theta = self.prior.sample(torch.Size(sample_shape))
        return self.coordinates.from_physical(theta.double()).to(theta.dtype)

    def sample_with(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` draws of z (float64) from ``generator``."""
        return self.coordinates.from_physical(self.prior.sample_with(n, generator).double())  # type: ignore[attr-defined]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(θ(z)) + log |dθ/dz| (float64 for float64 input, else the prior's dtype)."""
        theta = self.coordinates.to_physical(z.double())
        log_p = self.prior.log_prob(theta.to(self.dtype)).double() + self.coordinates.log_abs_det_jacobian(z.double())
        return log_p if z.dtype == torch.float64 else log_p.to(self.dtype)

    @property
    def mean(self) -> torch.Tensor:
        """The mean of z, estimated once from 4,096 fixed draws (sbi z-scores with it only as a fallback)."""
        return self._moments()[0]

    @property
    def stddev(self) -> torch.Tensor:
        return self._moments()[1]

    @property
    def variance(self) -> torch.Tensor:
        return self._moments()[1] ** 2

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.sample_with(4096, torch.Generator().manual_seed(0))
        return z.mean(dim=0).to(self.dtype), z.std(dim=0).to(self.dtype)


@dataclass(frozen=True)
class FunctionInCoordinates:
    """``function(θ(z))``: a batched function of physical parameters (a log-likelihood, a simulator of
    scans) called with z.

    Picklable whenever ``function`` is, so a process pool can evaluate it.
    """

    function: Callable[[torch.Tensor], torch.Tensor]
    coordinates: LogCoordinates

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.function(self.coordinates.to_physical(z))


def in_physical_units(sampled: Posterior, coordinates: LogCoordinates) -> Posterior:
    """A posterior sampled in log coordinates z, in physical units θ; the density of θ lacks z's Jacobian."""
    z = torch.from_numpy(sampled.samples)
    return replace(sampled, samples=coordinates.to_physical(z).numpy(),
                   log_density=sampled.log_density - coordinates.log_abs_det_jacobian(z).numpy())
