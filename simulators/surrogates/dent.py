"""DENT, the Diffuser–Elapser surrogate of the tumour micro-environment (Koyuncu et al., Sci Rep 12:2187, 2022,
doi:10.1038/s41598-022-05460-z).

DENT forecasts the five maps of :mod:`simulators.microenvironment` (channels n, m, P, A, d in
:data:`~simulators.microenvironment.FIELDS` order) day by day under a schedule of injections with seven CNNs:

- the Diffuser, two CNNs, predicts the anti-angiogenic map A and the drug map d one hour after an injection from
  the state before it and the two injected amounts, each tiled as a constant channel (7 input channels); the
  Diffuser leaves n, m and P as they are;
- the Elapser, five CNNs, one per channel, predicts that channel one day ahead from the whole 5-channel state.

Each CNN, as in the paper, stacks 5 × 5 convolutions with batch normalization and ReLU; the paper does not give
depth or width. Here: ``depth − 1`` blocks (5 × 5 convolution of ``width`` filters, batch norm, ReLU) and a
final 5 × 5 convolution to one channel, all padded by 2 cells replicating the edge (the grid keeps its size;
replication mimics the model's no-flux edges better than zeros). Defaults: ``width`` 32, ``depth`` 6, a receptive
field of 25 × 25 cells (1.6 mm on DENT's grid of 1/15 mm, about the diffusion length of the anti-angiogenic agent,
√(D_A/sinks) ≈ 1 mm). Ours, not the paper's: every CNN predicts the *change* of its channel, in scaled units (the
output is the input channel plus the CNN's output), since a day changes n and m little. On data like the tests'
(three patients on 24 × 24 cells, width 16, depth 4, 40 epochs, two seeds) this lowered the best validation error
of the Diffuser's A and of the Elapser's n, m and P by 1.3–2.5×, left both d networks about even, and doubled the
Elapser's A error (A falls by a factor e a day, a large change): a small experiment, not a tuned choice.

Inputs and targets are min–max scaled per channel by the training pairs' statistics, as in the paper: one
:class:`MinMaxScaling` of the five channels, fitted on the states of both pair sets (Diffuser outputs feed the
Elapser, so they share one scale), and one of the two doses, fitted on the Diffuser pairs. Training
(:func:`train_dent`) minimizes the mean squared error in scaled units with Adam (learning rate 1e-4, batch 10, as
in the paper) and keeps, per network, the weights of its best validation epoch.

Rollout order (:meth:`DentSurrogate.rollout`). DENT's protocol injects "at the end of day t0, t2, t4, t6" and
forecasts the seven days from t0; the toolkit writes that end of day t0 as ``Dose(day=t0)`` (see
``tutorials/schedules/dent_example.toml``) and the forecast starts at ``start_day = t0``. So the step from day t to
day t + 1 (t = start_day + k) is:

1. if doses fall in [t, t + 1), the Diffuser, applied to the state at t with the amounts of those doses summed per
   agent (an injection later in the day is moved to its start; doses a whole number of days from ``start_day``,
   the protocol's case, are applied when given);
2. the Elapser, one day ahead.

The state reported for day t + 1 is the Elapser's output: the state at t + 1 before any injection of that day, as
:mod:`simulators.surrogates.dent_dataset` pairs it (from the state at t, with A and d one hour after day t's
injection where there is one — exactly what the Diffuser hands on — to day t + 1 just before its injections; its
case trajectories report the same daily states). The
input at ``start_day`` must be the state before the injections of ``start_day`` (from an untreated run, say; not
the simulator's state at a dose's day, whose A and d already hold that dose: its plasma counts doses with day ≤ t).
Doses before ``start_day`` must already be in the input's A and d; doses on or after ``start_day + days`` lie
beyond the horizon. Each map is clipped to its physical range after each network: n to [0, 1], the others to ≥ 0.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from simulators.microenvironment import FIELDS, MicroenvironmentState, Trajectory
from simulators.surrogates.pairs import AGENTS, DIFFUSED, DentPairs
from simulators.treatment import Schedule

KERNEL = 5
"""Convolution kernel size (Koyuncu et al. 2022)."""
NETWORKS = tuple(f"diffuser {name}" for name in DIFFUSED) + tuple(f"elapser {name}" for name in FIELDS)
"""Names of the seven CNNs, the column order of :class:`TrainingHistory` and :meth:`DentSurrogate.losses`."""
_FORMAT = "dent-surrogate-1"
_UPPER = {"n": 1.0}
"""Physical upper bounds; every channel is non-negative."""


@dataclass(frozen=True)
class MinMaxScaling:
    """x ↦ (x − minimum) / (maximum − minimum) per channel (axis 1 of ``[N, C, ...]``), onto [0, 1] for the data it
    was fitted on, and back; DENT scales its inputs by training statistics (Koyuncu et al. 2022). A constant channel
    (maximum = minimum) maps to 0 and back to its value."""

    minimum: tuple[float, ...]
    maximum: tuple[float, ...]

    def __post_init__(self) -> None:
        low, high = tuple(map(float, self.minimum)), tuple(map(float, self.maximum))
        if not low or len(low) != len(high):
            raise ValueError(f"minimum and maximum must be non-empty and of one length, got {len(low)} and {len(high)}")
        if not all(math.isfinite(a) and math.isfinite(b) and a <= b for a, b in zip(low, high)):
            raise ValueError(f"each minimum must be finite and at most its maximum, got {low} and {high}")
        object.__setattr__(self, "minimum", low)
        object.__setattr__(self, "maximum", high)

    @classmethod
    def fit(cls, *arrays: np.ndarray) -> MinMaxScaling:
        """The minimum and maximum of each channel over all ``arrays`` (``[N, C, ...]``, one C)."""
        if not arrays or any(np.ndim(array) < 2 or len(array) == 0 for array in arrays) or \
                len({np.shape(array)[1] for array in arrays}) != 1:
            raise ValueError("fit needs non-empty arrays [N, C, ...] with one number of channels C")
        reduced = [tuple(axis for axis in range(np.ndim(array)) if axis != 1) for array in arrays]
        low = np.min([np.min(array, axis=axes) for array, axes in zip(arrays, reduced)], axis=0)
        high = np.max([np.max(array, axis=axes) for array, axes in zip(arrays, reduced)], axis=0)
        return cls(tuple(low.tolist()), tuple(high.tolist()))

    def transform(self, values: torch.Tensor) -> torch.Tensor:
        """Scaled ``values`` (channels on axis 1)."""
        low, span = self._broadcast(values)
        return (values - low) / span

    def inverse(self, scaled: torch.Tensor) -> torch.Tensor:
        """The values whose :meth:`transform` is ``scaled``."""
        low, span = self._broadcast(scaled)
        return scaled * span + low

    def _broadcast(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if like.ndim < 2 or like.shape[1] != len(self.minimum):
            raise ValueError(f"expected [N, {len(self.minimum)}, ...] values, got shape {tuple(like.shape)}")
        shape = (1, len(self.minimum)) + (1,) * (like.ndim - 2)
        span = [high - low if high > low else 1.0 for low, high in zip(self.minimum, self.maximum)]
        return (torch.tensor(self.minimum, dtype=like.dtype, device=like.device).reshape(shape),
                torch.tensor(span, dtype=like.dtype, device=like.device).reshape(shape))


@dataclass(frozen=True)
class DentArchitecture:
    """Size of each of the seven CNNs: ``depth`` 5 × 5 convolutions, all but the last with ``width`` filters,
    batch norm and ReLU (see the module's docstring)."""

    width: int = 32
    depth: int = 6

    def __post_init__(self) -> None:
        if not (self.width >= 1 and self.depth >= 2):
            raise ValueError(f"width must be at least 1 and depth at least 2, got {self.width} and {self.depth}")


def _cnn(in_channels: int, architecture: DentArchitecture) -> nn.Sequential:
    """(5 × 5 convolution, batch norm, ReLU) × (depth − 1), then a 5 × 5 convolution to one channel; edge-replicating
    padding keeps the grid's size."""
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(architecture.depth - 1):
        layers += [nn.Conv2d(channels, architecture.width, KERNEL, padding=KERNEL // 2, padding_mode="replicate",
                             bias=False),  # the batch norm's shift is the bias
                   nn.BatchNorm2d(architecture.width), nn.ReLU()]
        channels = architecture.width
    layers.append(nn.Conv2d(channels, 1, KERNEL, padding=KERNEL // 2, padding_mode="replicate"))
    return nn.Sequential(*layers)


def _networks(architecture: DentArchitecture, seed: int, device: torch.device | str) -> tuple[nn.ModuleDict,
                                                                                               nn.ModuleDict]:
    """The Diffuser's and the Elapser's CNNs, initialized from ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        diffuser = nn.ModuleDict({name: _cnn(len(FIELDS) + len(AGENTS), architecture) for name in DIFFUSED})
        elapser = nn.ModuleDict({name: _cnn(len(FIELDS), architecture) for name in FIELDS})
    return diffuser.to(device), elapser.to(device)


def _inputs(scaled_states: torch.Tensor, scaled_doses: torch.Tensor | None) -> torch.Tensor:
    """The Elapser's input (the scaled state), or the Diffuser's: the scaled state and each scaled dose tiled as a
    constant channel."""
    if scaled_doses is None:
        return scaled_states
    tiled = scaled_doses[:, :, None, None].expand(-1, -1, *scaled_states.shape[2:])
    return torch.cat([scaled_states, tiled], dim=1)


def _predict(networks: nn.ModuleDict, inputs: torch.Tensor, scaled_states: torch.Tensor) -> torch.Tensor:
    """The channels of ``networks`` (scaled): each the present value plus its CNN's output."""
    return torch.cat([scaled_states[:, [FIELDS.index(name)]] + network(inputs) for name, network in networks.items()],
                     dim=1)


def _clip(states: torch.Tensor) -> torch.Tensor:
    """States ``[B, 5, X, Y]`` clipped to their physical ranges: n in [0, 1], the others ≥ 0."""
    upper = torch.tensor([_UPPER.get(name, math.inf) for name in FIELDS], dtype=states.dtype, device=states.device)
    return torch.clamp(states, min=torch.zeros_like(upper)[:, None, None], max=upper[:, None, None])


def daily_doses(schedule: Schedule, start_day: float, days: int) -> np.ndarray:
    """Amounts ``[days, 2]`` (columns in :data:`~simulators.surrogates.pairs.AGENTS` order) a rollout injects on
    each day: row k sums the doses of each agent given in [start_day + k, start_day + k + 1) (days within 1e-9 of
    a day's start belong to that day). Doses outside [start_day, start_day + days) are left out."""
    amounts = np.zeros((days, len(AGENTS)))
    for dose in schedule.doses:
        day = math.floor(dose.day - start_day + 1e-9)
        if 0 <= day < days:
            amounts[day, AGENTS.index(dose.agent)] += dose.amount
    return amounts


@dataclass(frozen=True, eq=False)
class TrainingHistory:
    """Per-epoch mean squared error (scaled units) of each network of :data:`NETWORKS` (columns):

    ``train`` ``[E, 7]``, averaged over the epoch's batches in training mode (batch-norm batch statistics);
    ``validation`` ``[E, 7]`` on the validation pairs in evaluation mode, None without them; ``best_epoch`` ``[7]``,
    the epoch (0-based) whose weights each network kept: its lowest validation error, or the last epoch without
    validation. E is below the requested epochs where early stopping ended training (the summed validation error
    last improved at epoch E − 1 − patience).
    """

    networks: tuple[str, ...]
    train: np.ndarray
    validation: np.ndarray | None
    best_epoch: np.ndarray
    wall_s: float


@dataclass(eq=False)
class DentSurrogate:
    """The trained Diffuser and Elapser with their scalings (Koyuncu et al. 2022); see the module's docstring.

    Relation to :class:`simulators.protocol.Simulator`: this is not one, as the micro-environment model it learns is
    not. It forecasts the five micro-environment maps under a treatment schedule, not a tumour density on an anatomy
    from a batch of growth parameters, so it has no parameter names. It is the pluggable, learned replacement of
    :func:`simulators.microenvironment.simulate_microenvironment` at daily resolution and takes that function's
    inputs — an initial state and a schedule: :meth:`simulate` returns the same :class:`Trajectory`, with daily
    times, and :meth:`rollout` the bare ``[days + 1, 5, X, Y]`` array (batched over states and schedules).

    The networks live on one device (the one given to :func:`train_dent` or :meth:`load`) and are kept in
    evaluation mode (batch norm uses its running statistics). ``grid_shape`` is the training grid: the networks
    learned its spacing, so states of another shape are refused.
    """

    architecture: DentArchitecture
    state_scaling: MinMaxScaling
    dose_scaling: MinMaxScaling
    grid_shape: tuple[int, int]
    diffuser: nn.ModuleDict
    elapser: nn.ModuleDict

    def __post_init__(self) -> None:
        self.grid_shape = tuple(int(size) for size in self.grid_shape)
        if len(self.state_scaling.minimum) != len(FIELDS) or len(self.dose_scaling.minimum) != len(AGENTS):
            raise ValueError(f"the state scaling needs {len(FIELDS)} channels and the dose scaling {len(AGENTS)}")
        if tuple(self.diffuser) != DIFFUSED or tuple(self.elapser) != FIELDS:
            raise ValueError(f"the Diffuser's networks must be {DIFFUSED} and the Elapser's {FIELDS}")
        self.diffuser.eval()
        self.elapser.eval()

    @property
    def device(self) -> torch.device:
        return next(self.elapser.parameters()).device

    def inject(self, states: torch.Tensor, doses: torch.Tensor) -> torch.Tensor:
        """The Diffuser: ``states`` ``[B, 5, X, Y]`` one hour after injecting ``doses`` ``[B, 2]`` (physical units, on
        :attr:`device`). n, m and P are returned as given; A and d are predicted and clipped at 0."""
        with torch.inference_mode():
            scaled = self.state_scaling.transform(states)
            predicted = _predict(self.diffuser, _inputs(scaled, self.dose_scaling.transform(doses)), scaled)
            channels = [FIELDS.index(name) for name in DIFFUSED]
            injected = scaled.clone()
            injected[:, channels] = predicted
            result = states.clone()
            result[:, channels] = _clip(self.state_scaling.inverse(injected))[:, channels]
            return result

    def elapse(self, states: torch.Tensor) -> torch.Tensor:
        """The Elapser: ``states`` ``[B, 5, X, Y]`` (physical units, on :attr:`device`) one day later, clipped."""
        with torch.inference_mode():
            scaled = self.state_scaling.transform(states)
            return _clip(self.state_scaling.inverse(_predict(self.elapser, _inputs(scaled, None), scaled)))

    def rollout(self, state: MicroenvironmentState | np.ndarray, schedule: Schedule | Sequence[Schedule],
                start_day: float, days: int) -> np.ndarray:
        """Daily states from ``start_day`` to ``start_day + days`` under ``schedule``, float32.

        ``state`` is a :class:`MicroenvironmentState` or an array ``[5, X, Y]`` (returns ``[days + 1, 5, X, Y]``),
        or a batch ``[B, 5, X, Y]`` with one schedule for all or a sequence of B (returns ``[B, days + 1, 5, X, Y]``).
        Index 0 is the input as given (cast to float32); each later day follows the order of the module's docstring:
        the Diffuser for the doses of [t, t + 1), where there are any, then the Elapser.

        Raises:
            ValueError: a state not of 5 channels on :attr:`grid_shape`, a number of schedules other than B,
                negative ``days`` or ``start_day``.
        """
        if isinstance(state, MicroenvironmentState):
            state = np.stack([getattr(state, name) for name in FIELDS])
        states = np.asarray(state, dtype=np.float32)
        single = states.ndim == 3
        states = states[None] if single else states
        if states.ndim != 4 or states.shape[1:] != (len(FIELDS), *self.grid_shape):
            raise ValueError(f"state must be [{len(FIELDS)}, X, Y] or [B, {len(FIELDS)}, X, Y] on the training grid "
                             f"{self.grid_shape}, got shape {np.shape(state)}")
        schedules = [schedule] * len(states) if isinstance(schedule, Schedule) else list(schedule)
        if len(schedules) != len(states) or not all(isinstance(item, Schedule) for item in schedules):
            raise ValueError(f"give one Schedule or one per state ({len(states)}), got {len(schedules)}")
        if isinstance(days, bool) or not isinstance(days, (int, np.integer)) or days < 0 or not start_day >= 0:
            raise ValueError(f"days must be a non-negative integer and start_day non-negative, got {days}, {start_day}")
        doses = torch.as_tensor(np.stack([daily_doses(item, start_day, days) for item in schedules], axis=1),
                                dtype=torch.float32, device=self.device)  # [days, B, 2]
        with torch.inference_mode():
            current = torch.as_tensor(states, device=self.device)
            trajectory = [current]
            for today in doses:
                injected = torch.nonzero(today.sum(dim=1) > 0).flatten()
                if len(injected):
                    current = current.index_copy(0, injected, self.inject(current[injected], today[injected]))
                current = self.elapse(current)
                trajectory.append(current)
            result = torch.stack(trajectory, dim=1).cpu().numpy()
        return result[0] if single else result

    def simulate(self, initial: MicroenvironmentState, schedule: Schedule, days: int, *,
                 start_day: float = 0.0) -> Trajectory:
        """:func:`~simulators.microenvironment.simulate_microenvironment`'s daily output, forecast: the states at
        ``start_day``, ``start_day + 1``, …, ``start_day + days`` (float64 fields) under ``schedule``. Unlike the
        simulator, which recomputes A and d at ``start_day`` from the plasma, this takes ``initial`` as the state
        before the injections of ``start_day`` and reports each day's state before its injections (module
        docstring)."""
        states = self.rollout(initial, schedule, start_day, days).astype(np.float64)
        return Trajectory(times=start_day + np.arange(days + 1, dtype=np.float64), spacing_mm=initial.spacing_mm,
                          **{name: states[:, index] for index, name in enumerate(FIELDS)})

    def losses(self, diffuser_pairs: DentPairs, elapser_pairs: DentPairs, batch_size: int = 10) -> np.ndarray:
        """Mean squared error (scaled units) of each network of :data:`NETWORKS` on these pairs, in evaluation
        mode: the validation error of :func:`train_dent`."""
        _check_pairs(diffuser_pairs, elapser_pairs, self.grid_shape)
        return np.concatenate([
            _epoch(self.diffuser, diffuser_pairs, self.state_scaling, self.dose_scaling, batch_size, self.device),
            _epoch(self.elapser, elapser_pairs, self.state_scaling, None, batch_size, self.device)])

    def save(self, path: str | os.PathLike[str]) -> None:
        """One ``.pt`` file: both networks' state dicts, the scalings, the architecture and the grid shape."""
        torch.save({"format": _FORMAT, "architecture": asdict(self.architecture),
                    "state_scaling": asdict(self.state_scaling), "dose_scaling": asdict(self.dose_scaling),
                    "grid_shape": list(self.grid_shape), "diffuser": self.diffuser.state_dict(),
                    "elapser": self.elapser.state_dict()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str) -> DentSurrogate:
        """The surrogate :meth:`save` wrote to ``path``, on ``device`` (a local file only; tensors and plain values
        are read with ``weights_only``, so no code in the file runs)."""
        saved = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a DENT surrogate saved by DentSurrogate.save")
        architecture = DentArchitecture(**saved["architecture"])
        diffuser, elapser = _networks(architecture, 0, device)
        diffuser.load_state_dict(saved["diffuser"])
        elapser.load_state_dict(saved["elapser"])
        return cls(architecture, MinMaxScaling(**saved["state_scaling"]), MinMaxScaling(**saved["dose_scaling"]),
                   tuple(saved["grid_shape"]), diffuser, elapser)


def _check_pairs(diffuser_pairs: DentPairs, elapser_pairs: DentPairs,
                 grid_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The pairs' grid shape, after checking that the sets are of their kinds and on one grid (``grid_shape`` if
    given)."""
    for pairs, kind in ((diffuser_pairs, "Diffuser"), (elapser_pairs, "Elapser")):
        if not isinstance(pairs, DentPairs) or len(pairs) == 0:
            raise ValueError(f"the {kind} pairs must be a non-empty DentPairs")
    if np.any(elapser_pairs.doses != 0):
        raise ValueError("Elapser pairs span a day without injection (all doses 0), but "
                         f"{np.count_nonzero(np.any(elapser_pairs.doses != 0, axis=1))} of these have doses: "
                         "Diffuser pairs, or the two sets swapped?")
    if np.any(diffuser_pairs.doses < 0) or not np.all(np.any(diffuser_pairs.doses > 0, axis=1)):
        raise ValueError("Diffuser pairs span an injection (a positive dose of at least one agent, none negative), "
                         "but some of these have none: Elapser pairs, or the two sets swapped?")
    shapes = {diffuser_pairs.before.shape[2:], elapser_pairs.before.shape[2:]} | (
        set() if grid_shape is None else {tuple(grid_shape)})
    if len(shapes) != 1:
        raise ValueError(f"all pairs must be on one grid, got grids {sorted(shapes)}")
    return shapes.pop()


def _epoch(networks: nn.ModuleDict, pairs: DentPairs, state_scaling: MinMaxScaling,
           dose_scaling: MinMaxScaling | None, batch_size: int, device: torch.device | str,
           optimizer: torch.optim.Optimizer | None = None, order: np.ndarray | None = None) -> np.ndarray:
    """Mean squared error (scaled units) of each network over one pass through ``pairs`` in batches (rows in
    ``order``, else as stored). With an ``optimizer``, each batch takes an Adam step on the sum of the networks'
    errors (each network's gradient is its own error's) in training mode; without, evaluation mode, no gradients.
    ``dose_scaling`` is given for the Diffuser (its input includes the doses) and None for the Elapser."""
    training = optimizer is not None
    networks.train(training)
    order = np.arange(len(pairs)) if order is None else order
    channels = [FIELDS.index(name) for name in networks]
    total = torch.zeros(len(networks), dtype=torch.float64)
    with torch.set_grad_enabled(training):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            before = state_scaling.transform(torch.as_tensor(pairs.before[rows], dtype=torch.float32, device=device))
            after = state_scaling.transform(torch.as_tensor(pairs.after[rows], dtype=torch.float32, device=device))
            doses = None if dose_scaling is None else dose_scaling.transform(
                torch.as_tensor(pairs.doses[rows], dtype=torch.float32, device=device))
            predicted = _predict(networks, _inputs(before, doses), before)
            errors = ((predicted - after[:, channels]) ** 2).mean(dim=(0, 2, 3))
            if training:
                optimizer.zero_grad()
                errors.sum().backward()
                optimizer.step()
            total += errors.detach().cpu().double() * len(rows)
    networks.eval()
    return (total / len(order)).numpy()


def train_dent(diffuser_pairs: DentPairs, elapser_pairs: DentPairs, *, epochs: int, batch_size: int = 10,
               learning_rate: float = 1e-4, seed: int, device: torch.device | str, progress: bool = True,
               validation: tuple[DentPairs, DentPairs] | None = None,
               architecture: DentArchitecture = DentArchitecture(),
               patience: int | None = None) -> tuple[DentSurrogate, TrainingHistory]:
    """Train DENT's seven CNNs (Koyuncu et al. 2022: MSE loss, Adam, learning rate 1e-4, batch 10, up to 200 epochs).

    Scalings are fitted on these training pairs only. Each epoch passes once through the Diffuser pairs (training
    the Diffuser's two CNNs) and once through the Elapser pairs (the Elapser's five), in an order drawn from
    ``seed``, which also initializes the weights; the global RNG is left alone, so training on the CPU is
    reproducible. ``validation`` (Diffuser pairs, Elapser pairs) — held-out virtual patients — is scored after each
    epoch, each network keeps the weights of its best validation epoch, and with ``patience`` training stops once the
    validation error summed over the networks has not improved for that many epochs (early stopping; without
    validation every network keeps its last weights and ``patience`` is ignored). ``progress`` shows a bar over
    epochs.

    Raises:
        ValueError: pairs of the wrong kind (Elapser pairs with doses, Diffuser pairs without), on different grids,
            empty, or non-positive ``epochs``, ``batch_size``, ``learning_rate`` or ``patience``.
    """
    grid_shape = _check_pairs(diffuser_pairs, elapser_pairs)
    if validation is not None:
        _check_pairs(*validation, grid_shape)
    if epochs < 1 or batch_size < 1 or not learning_rate > 0 or (patience is not None and patience < 1):
        raise ValueError("epochs, batch_size, learning_rate and patience (if given) must be positive")
    started = time.perf_counter()
    state_scaling = MinMaxScaling.fit(diffuser_pairs.before, diffuser_pairs.after, elapser_pairs.before,
                                      elapser_pairs.after)
    dose_scaling = MinMaxScaling.fit(diffuser_pairs.doses)
    diffuser, elapser = _networks(architecture, seed, device)
    groups = ((diffuser, diffuser_pairs, dose_scaling), (elapser, elapser_pairs, None))
    optimizers = [torch.optim.Adam(networks.parameters(), lr=learning_rate) for networks, _, _ in groups]
    modules = [*diffuser.values(), *elapser.values()]
    generator = torch.Generator().manual_seed(seed)
    train_errors, validation_errors = [], []
    best_error = np.full(len(NETWORKS), np.inf)
    best_epoch = np.zeros(len(NETWORKS), dtype=int)
    best_total, best_total_epoch = np.inf, 0
    best_weights = [copy.deepcopy(module.state_dict()) for module in modules]
    with tqdm(range(epochs), disable=not progress, desc="DENT", unit="epoch") as bar:
        for epoch in bar:
            train_errors.append(np.concatenate([
                _epoch(networks, pairs, state_scaling, doses, batch_size, device, optimizer,
                       torch.randperm(len(pairs), generator=generator).numpy())
                for (networks, pairs, doses), optimizer in zip(groups, optimizers)]))
            postfix = {"train": f"{train_errors[-1].mean():.3g}"}
            if validation is None:
                best_epoch[:] = epoch
            else:
                errors = np.concatenate([_epoch(networks, held_out, state_scaling, doses, batch_size, device)
                                         for (networks, _, doses), held_out in zip(groups, validation)])
                validation_errors.append(errors)
                for index in np.flatnonzero(errors < best_error):
                    best_error[index], best_epoch[index] = errors[index], epoch
                    best_weights[index] = copy.deepcopy(modules[index].state_dict())
                if errors.sum() < best_total:
                    best_total, best_total_epoch = errors.sum(), epoch
                postfix["validation"] = f"{errors.mean():.3g}"
            bar.set_postfix(postfix)
            if validation is not None and patience is not None and epoch - best_total_epoch >= patience:
                break
    if validation is not None:
        for module, weights in zip(modules, best_weights):
            module.load_state_dict(weights)
    surrogate = DentSurrogate(architecture, state_scaling, dose_scaling, grid_shape, diffuser, elapser)
    history = TrainingHistory(networks=NETWORKS, train=np.array(train_errors),
                              validation=np.array(validation_errors) if validation is not None else None,
                              best_epoch=best_epoch, wall_s=time.perf_counter() - started)
    return surrogate, history
