"""A virtual patient of the micro-environment model: its noisy tumour maps, their personalization, and the
response that the fitted model predicts for candidate schedules.

    true θ ──► simulate n on the observed days ──► + N(0, σ²), clipped to [0, 1]  (make_virtual_patient)
    observation ──► LogUniformPrior × clipped-Gaussian likelihood ──► TMCMC or sequential NPE
                ──► Posterior in physical units
    Posterior ──► personalize.predictive.schedules: tumour area and response class per candidate schedule

A virtual patient is :func:`simulators.microenvironment.initial_state` of a vessel seed (the Gaussian tumour and
the vessel islands of :class:`simulators.microenvironment.MicroenvironmentParameters`) grown from day 0 under a
:class:`simulators.treatment.Schedule`; the observation is its tumour-cell density n on a few days (on the
schedule's clock) with Gaussian noise N(0, σ²) clipped to [0, 1]. Inferred are the growth and drug-response
parameters, named as in the literature (Yonucu et al. 2017; Koyuncu et al. 2022), and the noise:

    r_n       tumour_growth          1/day
    D_n       tumour_diffusion       mm²/day
    d_r       drug_kill              1/day per unit drug d
    alpha_mn  vessel_driven_growth   1/day
    sigma     noise standard deviation of the maps (n units)

every other constant held at the given :class:`MicroenvironmentParameters`. None of the four changes the
initial state, so a fit computes it once.

Prior (:class:`LogUniformPrior`): independent log-uniform, a box-uniform distribution (sbi's ``BoxUniform``)
over z = log θ; the engines sample z and :func:`personalize.reparameterize.in_physical_units` reports θ. Default bounds
(:data:`DEFAULT_BOUNDS`) span a factor 2 around the defaults of r_n and D_n, 3 around α_mn and 10 around d_r's
default 0.5 (from 0.2 to 2). Measured on the default grid (41 × 41 at 0.25 mm, step 1/24 day, vessel seed 0)
under DENT's protocol from day 14 (anti-angiogenic dose 1 on days 14, 16, 18, 20, chemotherapy dose 1 on days
16, 18, 20), the tumour area (n > 0.5) on day 14 → day 21, mm²:

- defaults but d_r: 4.25 → 7.94 (d_r 0.2), 6.75 (0.5), 5.50 (1.0), 3.50 (1.4), 0 (2.0): growth through
  chemotherapy to a tumour that vanishes, the range the bounds of d_r are chosen for;
- corners (r_n, D_n, d_r, α_mn): (0.4, 0.02, 0.2, 0.3) 19.4 → 36.1, the fastest growth; (0.4, 0.005, 2, 0.3)
  9.1 → 9.9, a fast tumour held by the strongest kill; (0.1, 0.005, 2, 0.03) 1.3 → 0; (0.1, 0.02, ·, 0.03)
  no tumour above 0.5 by day 14 (slow growth spread thin: such draws are not evaluable for response).

The wider box first tried, r_n 0.05–0.5, D_n 0.003–0.03, d_r 0.5–20, α_mn 0.02–0.5, killed every tumour by
day 21 from d_r = 2 on (so 2–20 were one outcome) and held many corners without a tumour. σ: 0.01 to 0.3.

Likelihood (:class:`MapLogLikelihood`): each observed value is n + ε, ε ~ N(0, σ²), clipped to [0, 1], so a
value read 0 (or 1) is censored: it contributes P(n + ε ≤ 0) = Φ(−n/σ) (or P(n + ε ≥ 1) = Φ((n − 1)/σ))
instead of the Gaussian density (a Tobit model; :func:`likelihoods.pet.pet_log_likelihood` with scale 1 supplies the
Gaussian and the censoring at 0). About half of the tumour-free cells read 0: without the censoring their
clipped noise reads as a smaller σ and as tumour.

Simulation cost (one simulation, 2 shared CPU cores, single thread, days 0 → 21 with seven treated days),
which chose the default grid and step: 151 × 151 (the model's grid, 1/15 mm) 12 s (dent_dataset); 76 × 76
2.7 s; 51 × 51 2.0 s; 41 × 41 1.6 s at 1/48 day, 0.62 s at 1/24, 0.32 s at 1/12; 31 × 31 1.0 s at 1/48. The
treated days cost most (three quasi-steady solves per step): days 0 → 14 take 0.14 s of the 0.62 s. The
step changes the tumour's mass Σ n h² on day 21 by 0.7 % from 1/48 to 1/24 day and 2 % to 1/12; the grid by
13 % from 76 to 41 cells (the initial tumour, σ = 0.3 mm, spans 1.2 cells of 0.25 mm). A virtual patient is
simulated and fitted on one grid, so the fit is self-consistent; its numbers are those of the coarse model.

NPE sees the maps through :func:`map_features`: by default the image moments of each day's map
(:func:`personalize.embedding.moment_features` of the 2D map: mean, mean square, centroid, second moments; 7 per
day). Measured against 8 × 8 block averages (``"pooled"``, 64 per day) on the same 800 prior simulations (21 × 21
cells of 0.5 mm, step 1/12 day, days 7, 14, 21), one round of sbi's MDN each, on 100 held-out simulations: mean
log q(z_true | x) −0.59 with moments, −1.72 with blocks; error of the posterior mean over the prior's width
(log scale) r_n 0.20 / 0.20, D_n 0.28 / 0.27, d_r 0.20 / 0.25, α_mn 0.23 / 0.24, σ 0.06 / 0.09. Where the noise
hides the tumour (σ near 0.3) the MDN put almost no mass inside the prior's box (median share inside 0.84
over the held-out cases, 0 at worst), which slows sbi's rejection sampling in later rounds.

What the fitted model predicts under candidate schedules is :mod:`personalize.predictive.schedules`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sbi.utils import BoxUniform
from torch.nn import functional

from likelihoods.pet import pet_log_likelihood
from personalize.embedding import moment_features
from personalize.executors import evaluate, local_executor
from personalize.npe import NPESettings, sequential_npe
from personalize.posterior import Posterior
from personalize.reparameterize import FunctionInCoordinates, LogCoordinates, in_physical_units
from personalize.scan_simulator import row_seed
from personalize.tmcmc import tmcmc
from simulators.microenvironment import (
    MicroenvironmentParameters,
    MicroenvironmentState,
    grow,
    initial_state,
    time_step_days,
)
from simulators.surrogates.dent_dataset import Case, DatasetDesign
from simulators.treatment import Schedule

PARAMETER_FIELDS = {
    "r_n": "tumour_growth",
    "D_n": "tumour_diffusion",
    "d_r": "drug_kill",
    "alpha_mn": "vessel_driven_growth",
}
"""Inferable model parameters: literature name → field of :class:`MicroenvironmentParameters`."""
NOISE = "sigma"
"""The noise standard deviation of the observed maps, always inferred."""
NAMES = (*PARAMETER_FIELDS, NOISE)
UNITS = {"r_n": "1/day", "D_n": "mm^2/day", "d_r": "1/day per unit d", "alpha_mn": "1/day", "sigma": "1"}
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "r_n": (0.1, 0.4),
    "D_n": (0.005, 0.02),
    "d_r": (0.2, 2.0),
    "alpha_mn": (0.03, 0.3),
    "sigma": (0.01, 0.3),
}
"""Log-uniform bounds (module docstring: from a tumour that grows through chemotherapy to one that vanishes)."""
DEFAULT_TRUTH = {"r_n": 0.2, "D_n": 0.01, "d_r": 0.5, "alpha_mn": 0.1, "sigma": 0.05}
"""The model's defaults and a noise of 5 % of the tumour's density."""
DEFAULT_GRID = 41
DEFAULT_SPACING_MM = 0.25
"""41 cells of 0.25 mm cover the model's 1 cm domain (151 cells of 1/15 mm): with the step below, 0.62 s per
simulation of days 0 to 21 against 12 s on the model's grid (module docstring)."""
DEFAULT_TIME_STEP_DAYS = 1.0 / 24.0
DEFAULT_DAYS = (7.0, 14.0, 21.0)
"""Observed days: two before treatment (growth), one after its first week (drug response)."""
FEATURES = ("moments", "pooled")
POOLED_BLOCKS = 8
_MOMENT_COLUMNS = (0, 1, 2, 3, 5, 6, 8)
"""Of moment_features' 11 per channel: mean, mean square, centroid x, y, second moments xx, yy, xy (the rest
concern the singleton third axis of a 2D map and are 0)."""


def protocol_schedule(start_day: float = 14.0, antiangiogenic: float = 1.0, chemotherapy: float = 1.0) -> Schedule:
    """DENT's protocol from ``start_day``: the anti-angiogenic agent on days t0, t0 + 2, t0 + 4, t0 + 6 and the
    chemotherapy on t0 + 2, t0 + 4, t0 + 6 at the given amounts (:class:`DatasetDesign`'s schedule). Amounts of 0
    keep the dose days (and so the baseline of a response) without treatment."""
    case = Case(patient=0, start_day=float(start_day), antiangiogenic_level=float(antiangiogenic),
                chemotherapy_level=float(chemotherapy))
    return DatasetDesign().schedule(case)


@dataclass(frozen=True, eq=False)
class VirtualPatientObservation:
    """Noisy tumour-density maps of one virtual patient.

    Attributes:
        days: observed days, strictly increasing, on the schedule's clock (days from the patient's day 0).
        maps: ``[D, X, Y]`` observed n in [0, 1], one map per day (a read-only float64 copy).
        spacing_mm: the grid's cell size.
        seed: the vessel seed of :func:`simulators.microenvironment.initial_state`.
        schedule: the doses the patient received.
    """

    days: tuple[float, ...]
    maps: np.ndarray
    spacing_mm: float
    seed: int
    schedule: Schedule

    def __post_init__(self) -> None:
        days = tuple(float(day) for day in self.days)
        if not days or not all(math.isfinite(day) and day >= 0 for day in days) \
                or any(b <= a for a, b in zip(days, days[1:])):
            raise ValueError(f"days must be finite, non-negative and strictly increasing, got {list(self.days)}")
        maps = np.array(self.maps, dtype=np.float64)
        if maps.ndim != 3 or maps.shape[0] != len(days) or min(maps.shape[1:]) < 3:
            raise ValueError(f"maps must be [days, X, Y] with one map per day ({len(days)}) and X, Y >= 3, got "
                             f"shape {maps.shape}")
        if not (np.all(np.isfinite(maps)) and maps.min() >= 0 and maps.max() <= 1):
            raise ValueError("maps must hold finite densities in [0, 1]")
        if not (math.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule must be a Schedule, got {type(self.schedule).__name__}")
        maps.setflags(write=False)
        object.__setattr__(self, "days", days)
        object.__setattr__(self, "maps", maps)
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def shape(self) -> tuple[int, int]:
        return self.maps.shape[1], self.maps.shape[2]

    def initial_state(self, parameters: MicroenvironmentParameters = MicroenvironmentParameters()
                      ) -> MicroenvironmentState:
        """The patient on day 0: its Gaussian tumour and vessel islands on the observation's grid."""
        return initial_state(self.shape, seed=self.seed, parameters=parameters, spacing_mm=self.spacing_mm)


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, after checking each is known and appears once."""
    names = tuple(names)
    unknown = sorted(set(names) - set(NAMES))
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"parameter names must be distinct, among {', '.join(NAMES)}; got {list(names)}")
    return names


class LogUniformPrior(BoxUniform):
    """Independent log-uniform priors on named positive parameters: a box-uniform distribution over z = log θ.

    A ``torch.distributions.Distribution`` that sbi takes as is (a ``BoxUniform``), and a
    :class:`personalize.tmcmc.SamplingPrior` (``sample_with``, ``log_prob`` −inf outside the box). Samples and
    ``log_prob`` are in z; :attr:`coordinates` maps them to physical units.

    Args:
        bounds: ``{name: (low, high)}`` in physical units (:data:`UNITS`), 0 < low < high; ``sigma`` and at least
            one model parameter of :data:`PARAMETER_FIELDS`. Parameters are ordered as :data:`NAMES`.
    """

    def __init__(self, bounds: Mapping[str, tuple[float, float]] = DEFAULT_BOUNDS) -> None:
        check_names(list(bounds))
        if NOISE not in bounds or not set(bounds) & set(PARAMETER_FIELDS):
            raise ValueError(f"the prior needs bounds for {NOISE} and at least one of {', '.join(PARAMETER_FIELDS)}; "
                             f"got {', '.join(bounds)}")
        names = tuple(name for name in NAMES if name in bounds)
        checked = {}
        for name in names:
            low, high = (float(value) for value in bounds[name])
            if not (0 < low < high < math.inf):
                raise ValueError(f"bounds of {name} must satisfy 0 < low < high < inf, got ({low}, {high})")
            checked[name] = (low, high)
        self.names = names
        self.bounds = checked
        self.units = {name: UNITS[name] for name in names}
        self.coordinates = LogCoordinates.of(names, names)
        super().__init__(low=torch.tensor([math.log(checked[n][0]) for n in names]),
                         high=torch.tensor([math.log(checked[n][1]) for n in names]))

    def sample_with(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` draws of z (float64) from ``generator``."""
        low, high = self.low.double(), self.high.double()
        return low + (high - low) * torch.rand((n, len(self.names)), generator=generator, dtype=torch.float64)

    def to_physical(self, z: torch.Tensor) -> torch.Tensor:
        return self.coordinates.to_physical(z)

    def from_physical(self, theta: torch.Tensor) -> torch.Tensor:
        return self.coordinates.from_physical(theta)


def states_on_days(initial: MicroenvironmentState, schedule: Schedule, days: Sequence[float],
                   parameters: MicroenvironmentParameters, max_time_step_days: float) -> Iterator[MicroenvironmentState]:
    """The patient ``initial`` (day 0) on each of ``days`` (increasing) under ``schedule``, grown by
    :func:`simulators.microenvironment.grow` from one day to the next at the largest step up to
    ``max_time_step_days`` that the explicit diffusion limit allows."""
    step = time_step_days(initial.spacing_mm, parameters, max_time_step_days)
    state, day = initial, 0.0
    for target in days:
        state, day = grow(state, schedule, target, parameters, from_day=day, max_time_step_days=step), target
        yield state


@dataclass(frozen=True, eq=False)
class DensitySimulator:
    """θ ``[N, P]`` (physical units, columns named ``names``) → the tumour density n on ``days``
    ``[N, D, X, Y]`` (float64). Deterministic and picklable, so a process pool can simulate its rows.

    Each row grows ``initial`` from day 0 under ``schedule`` with the row's model parameters replacing those of
    ``parameters`` (``sigma`` is ignored), by :func:`simulators.microenvironment.grow` from one observed day to
    the next, at the largest step up to ``max_time_step_days`` that the explicit diffusion limit allows.
    """

    initial: MicroenvironmentState
    schedule: Schedule
    days: tuple[float, ...]
    names: tuple[str, ...]
    parameters: MicroenvironmentParameters = MicroenvironmentParameters()
    max_time_step_days: float = DEFAULT_TIME_STEP_DAYS

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", check_names(self.names))
        days = tuple(float(day) for day in self.days)
        if not days or days[0] < 0 or any(b <= a for a, b in zip(days, days[1:])):
            raise ValueError(f"days must be non-negative and strictly increasing, got {list(self.days)}")
        object.__setattr__(self, "days", days)

    def model_parameters(self, row: torch.Tensor) -> MicroenvironmentParameters:
        """The model's constants with the row's values of the inferred parameters."""
        return replace(self.parameters, **{PARAMETER_FIELDS[name]: float(value) for name, value in zip(self.names, row)
                                           if name in PARAMETER_FIELDS})

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        if theta.ndim != 2 or theta.shape[1] != len(self.names):
            raise ValueError(f"theta must be [N, {len(self.names)}] ({', '.join(self.names)}), "
                             f"got {tuple(theta.shape)}")
        out = np.empty((theta.shape[0], len(self.days), *self.initial.shape))
        for i, row in enumerate(theta.double().cpu()):
            states = states_on_days(self.initial, self.schedule, self.days, self.model_parameters(row),
                                    self.max_time_step_days)
            for k, state in enumerate(states):
                out[i, k] = state.n
        return torch.from_numpy(out)


def noisy(density: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``density`` + N(0, σ²) noise from ``generator``, clipped to [0, 1]."""
    noise = torch.randn(density.shape, generator=generator, dtype=density.dtype)
    return (density + sigma * noise).clamp(0.0, 1.0)


@dataclass(frozen=True, eq=False)
class NoisyMaps:
    """θ ``[N, P]`` → observed-like maps ``[N, D, X, Y]``: the simulator's n plus noise of the row's ``sigma``,
    clipped to [0, 1]; the noise of each row is seeded from ``seed`` and the row's values (picklable)."""

    simulator: DensitySimulator
    seed: int = 0

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        density = self.simulator(theta)
        sigma = theta[:, self.simulator.names.index(NOISE)].double()
        rows = [noisy(density[i], sigma[i], torch.Generator().manual_seed(row_seed(self.seed, theta[i])))
                for i in range(theta.shape[0])]
        return torch.stack(rows) if rows else density


def clipped_gaussian_log_likelihood(density: torch.Tensor, observed: torch.Tensor,
                                    sigma: torch.Tensor) -> torch.Tensor:
    """log p(observed | density) ``[N]`` for observed = clip(density + N(0, σ²), 0, 1) (module docstring).

    Args:
        density: ``[N, D, X, Y]`` simulated n.
        observed: ``[D, X, Y]`` observed maps in [0, 1].
        sigma: ``[N]`` noise standard deviations, > 0.
    """
    if tuple(observed.shape) != tuple(density.shape[1:]):
        raise ValueError(f"observed maps {tuple(observed.shape)} do not match simulated {tuple(density.shape[1:])}")
    observed = observed.to(density)
    top = observed >= 1.0
    below_top = pet_log_likelihood(density, observed, 1.0, sigma, valid=~top, convention="thesis")
    if not bool(top.any()):
        return below_top
    upper = torch.special.log_ndtr((density[:, top] - 1.0) / sigma.to(density)[:, None]).sum(dim=1)
    return below_top + upper


@dataclass(frozen=True, eq=False)
class MapLogLikelihood:
    """θ ``[N, P]`` → log p(observation's maps | θ) ``[N]`` (:func:`clipped_gaussian_log_likelihood`, σ the
    row's ``sigma``); picklable."""

    simulator: DensitySimulator
    observed: torch.Tensor

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        sigma = theta[:, self.simulator.names.index(NOISE)].double()
        return clipped_gaussian_log_likelihood(self.simulator(theta), self.observed, sigma)


def make_virtual_patient(
    truth: Mapping[str, float] = DEFAULT_TRUTH,
    *,
    days: Sequence[float] = DEFAULT_DAYS,
    schedule: Schedule | None = None,
    seed: int = 0,
    noise_seed: int = 0,
    grid: int = DEFAULT_GRID,
    spacing_mm: float = DEFAULT_SPACING_MM,
    parameters: MicroenvironmentParameters = MicroenvironmentParameters(),
    max_time_step_days: float = DEFAULT_TIME_STEP_DAYS,
) -> tuple[VirtualPatientObservation, dict[str, float]]:
    """A synthetic virtual patient: its noisy maps, and the truth that made them.

    Args:
        truth: ``sigma`` and any of :data:`PARAMETER_FIELDS` (the others are taken from ``parameters``).
        days: observed days on the schedule's clock.
        schedule: the doses (default :func:`protocol_schedule`: DENT's protocol from day 14, both agents at 1).
        seed: the vessel seed; noise_seed: seeds the noise (``torch.Generator``).
        grid, spacing_mm: the square grid; parameters: every constant not in ``truth``.
        max_time_step_days: the simulation's largest step.

    Returns:
        The observation and ``{name: value}`` for every name of :data:`NAMES`.
    """
    check_names(list(truth))
    if NOISE not in truth or not (math.isfinite(truth[NOISE]) and truth[NOISE] > 0):
        raise ValueError(f"truth needs a positive noise {NOISE}, got {truth.get(NOISE)}")
    full = {name: float(truth[name]) if name in truth else float(getattr(parameters, field))
            for name, field in PARAMETER_FIELDS.items()}
    full[NOISE] = float(truth[NOISE])
    schedule = protocol_schedule() if schedule is None else schedule
    initial = initial_state((grid, grid), seed=seed, parameters=parameters, spacing_mm=spacing_mm)
    simulator = DensitySimulator(initial, schedule, tuple(days), NAMES, parameters, max_time_step_days)
    density = simulator(torch.tensor([[full[name] for name in NAMES]], dtype=torch.float64))[0]
    maps = noisy(density, full[NOISE], torch.Generator().manual_seed(noise_seed))
    observation = VirtualPatientObservation(days=tuple(days), maps=maps.numpy(), spacing_mm=spacing_mm, seed=seed,
                                            schedule=schedule)
    return observation, full


def map_features(kind: str, maps: torch.Tensor) -> torch.Tensor:
    """What NPE is trained on: ``[N, D, X, Y]`` maps → ``[N, F]``. ``"moments"``: the 7 non-trivial image moments
    of each day's map (:func:`personalize.embedding.moment_features`); ``"pooled"``: each map's averages over
    ``8 × 8`` blocks."""
    if kind not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {kind!r}")
    if kind == "pooled":
        return functional.adaptive_avg_pool2d(maps, POOLED_BLOCKS).flatten(start_dim=1)
    moments = moment_features(maps[..., None]).view(maps.shape[0], maps.shape[1], -1)
    return moments[:, :, list(_MOMENT_COLUMNS)].flatten(start_dim=1)


@dataclass(frozen=True, eq=False)
class SimulatedFeatures:
    """z = log θ ``[N, P]`` → what NPE sees of simulated noisy maps, :func:`map_features` ``[N, F]`` (float32).

    Attributes:
        maps: the noisy-map simulator (θ in physical units).
        coordinates: z ↔ θ (:attr:`LogUniformPrior.coordinates`).
        features: :data:`FEATURES`' kind.
        executor: simulates the rows in chunks (None: in this process).
        chunk_size: rows per chunk.
        progress: a progress bar over the simulations.
    """

    maps: NoisyMaps
    coordinates: LogCoordinates
    features: str = "moments"
    executor: Executor | None = None
    chunk_size: int = 16
    progress: bool = False

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        x = evaluate(FunctionInCoordinates(self.maps, self.coordinates), z.double(), executor=self.executor,
                     chunk_size=self.chunk_size, progress="NPE simulations" if self.progress else None)
        return map_features(self.features, x).float()


@dataclass(frozen=True)
class VirtualPatientFitSettings:
    """How :func:`fit_virtual_patient` runs.

    Attributes:
        n_samples, chain_steps, target_cov, max_stages: TMCMC's population, Metropolis steps per stage,
            weight coefficient of variation, stage limit.
        npe: sequential NPE's estimator, rounds, simulations per round and draws (its ``seed`` is replaced by
            ``seed``).
        features: how NPE sees the maps (:func:`map_features`).
        seed: seeds every draw (the engines, NPE's simulated noise).
        workers: local processes simulating each batch (1: in this process).
        chunk_size: rows per simulation batch.
        max_time_step_days: the simulations' largest step.
    """

    n_samples: int = 256
    chain_steps: int = 2
    target_cov: float = 1.0
    max_stages: int = 100
    npe: NPESettings = NPESettings(rounds=2, simulations=500, n_posterior=2000)
    features: str = "moments"
    seed: int = 0
    workers: int = 1
    chunk_size: int = 16
    max_time_step_days: float = DEFAULT_TIME_STEP_DAYS

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        for name in ("n_samples", "chain_steps", "max_stages", "workers", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_samples < 2 or not self.target_cov > 0 or not self.max_time_step_days > 0:
            raise ValueError("n_samples must be >= 2, target_cov and max_time_step_days positive")


def fit_virtual_patient(
    observation: VirtualPatientObservation,
    method: str = "tmcmc",
    settings: VirtualPatientFitSettings = VirtualPatientFitSettings(),
    *,
    bounds: Mapping[str, tuple[float, float]] = DEFAULT_BOUNDS,
    parameters: MicroenvironmentParameters = MicroenvironmentParameters(),
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = False,
) -> Posterior:
    """The posterior of the growth and drug-response parameters (and σ) of ``observation``, in physical units.

    ``method`` ``"tmcmc"``: :func:`personalize.tmcmc.tmcmc` on the clipped-Gaussian likelihood; ``"npe"``:
    :func:`personalize.npe.sequential_npe` on simulated noisy maps seen through ``settings.features``. Both
    sample z = log θ under :class:`LogUniformPrior` ``(bounds)``; parameters without bounds stay at
    ``parameters``.

    Raises:
        ValueError: an unknown method, bad bounds or settings.
    """
    if method not in ("tmcmc", "npe"):
        raise ValueError(f"method must be 'tmcmc' or 'npe', got {method!r}")
    prior = LogUniformPrior(bounds)
    simulator = DensitySimulator(observation.initial_state(parameters), observation.schedule, observation.days,
                                 prior.names, parameters, settings.max_time_step_days)
    executor = local_executor(settings.workers)
    try:
        if method == "tmcmc":
            likelihood = MapLogLikelihood(simulator, torch.from_numpy(np.array(observation.maps)))
            sampled = tmcmc(FunctionInCoordinates(likelihood, prior.coordinates), prior, n_samples=settings.n_samples,
                            seed=settings.seed, parameter_names=prior.names, target_cov=settings.target_cov,
                            chain_steps=settings.chain_steps, executor=executor, chunk_size=settings.chunk_size,
                            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir), resume=resume,
                            progress=progress, max_stages=settings.max_stages, units=prior.units)
        else:
            sampled = _npe(observation, prior, NoisyMaps(simulator, settings.seed), settings, executor,
                           checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)
    finally:
        if executor is not None:
            executor.shutdown()
    return in_physical_units(sampled, prior.coordinates)


def _npe(observation: VirtualPatientObservation, prior: LogUniformPrior, maps: NoisyMaps,
         settings: VirtualPatientFitSettings, executor: Executor | None, *,
         checkpoint_dir: str | os.PathLike[str] | None,
         resume: bool, progress: bool) -> Posterior:
    """Sequential NPE in z; the samples and the estimate's log densities of z as a :class:`Posterior`."""
    features = SimulatedFeatures(maps, prior.coordinates, settings.features, executor, settings.chunk_size, progress)
    x_o = map_features(settings.features, torch.from_numpy(np.array(observation.maps))[None]).float()[0]
    result = sequential_npe(prior, features, x_o, replace(settings.npe, seed=settings.seed),
                            checkpoint_dir=checkpoint_dir,
                            resume=resume, progress=progress)
    return Posterior(parameter_names=prior.names, samples=result.samples.double().numpy(),
                     log_weights=np.zeros(len(result.samples)), log_evidence=None,
                     n_simulations=result.n_simulations, wall_s=result.wall_s, method=f"npe-{settings.npe.estimator}",
                     units=prior.units, log_density=result.log_prob.double().numpy(),
                     stages=tuple(asdict(record) for record in result.rounds))
