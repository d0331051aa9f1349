"""Fisher–Kolmogorov reaction–diffusion of tumour cell density on brain tissue.

    ∂u/∂t = ∇·(D(x)∇u) + ρ·u(1 − u),   D = p_w·D_w + p_g·D_g,   D_g = gm_ratio·D_w,

with no flux across the tissue boundary (CSF and background carry no cells), as in Swanson et al.
(Cell Prolif. 2000) and Lipkova et al. (IEEE TMI 2019). Parameters per simulation, in this order:
``D_w`` (mm²/day), ``rho`` (1/day), ``T`` (days), ``x, y, z`` (seed position, mm in the anatomy's world
space). The initial condition is :class:`simulators.seed.Seed` centred at (x, y, z), zero outside tissue.

Numerics (chosen by measurement; see ``docs/solver.md``): cell-centred finite volumes with harmonic-mean
face diffusivities, Strang splitting with the exact logistic flow, forward-Euler diffusion at a fraction of
its stability limit, float32, one fused kernel per step (:mod:`simulators.stencil`), and a working box that
follows the tumour: the solve covers only the part of the grid the tumour has reached (to a density of
``box_tolerance``) and grows as the front advances. Batches share the box and run one kernel per step; each
sample keeps its own time step, and samples that have reached their T leave the active batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from simulators.anatomy import Anatomy
from simulators.seed import Seed
from simulators.stencil import (
    diffusion_reaction_step,
    face_coefficients,
    logistic,
    positive_statistics,
    tissue_lines,
)

PARAMETER_NAMES = ("D_w", "rho", "T", "x", "y", "z")
PARAMETER_UNITS = {"D_w": "mm^2/day", "rho": "1/day", "T": "day", "x": "mm", "y": "mm", "z": "mm"}


@dataclass(frozen=True)
class StepPlan:
    """Time steps chosen per sample: ``steps[b]`` steps of ``dt[b]`` days with ``integrator[b]`` cover
    ``T[b]`` exactly."""

    steps: np.ndarray
    dt: np.ndarray
    integrator: np.ndarray


@dataclass(frozen=True)
class FisherKolmogorov:
    """Batched Fisher–Kolmogorov simulator (see the module docstring for the model and numerics).

    Attributes:
        gm_ratio: D_g / D_w (0.1 in Swanson et al. and GliomaSolver).
        seed: shape and amplitude of the initial condition.
        stability: time step as a fraction of the forward-Euler limit dt·D_w·max Σk = 1 (≤ 1 keeps
            the maximum principle, so u stays in [0, 1]).
        max_growth_step: upper bound on ρ·dt, the reaction advanced per forward-Euler step.
        heun_growth_step: the same bound for Heun steps (second order: a larger step, equal accuracy).
        time_step_factor: multiplies every time step (below 1 for convergence studies).
        box_tolerance: density at the working box's walls above which the box grows.
        saturation: ε of the early exit: once every voxel the tumour has reached holds u > 1 − ε and it
            reaches no new voxel, the rest of the run is the logistic flow alone (error ≤ ε).
        integrator: ``"euler"``, ``"heun"`` (SSP-RK2 diffusion) or ``"auto"`` (cheaper of the two).
        backend: ``"auto"`` (numba kernel on CPU, torch elsewhere), ``"numba"`` or ``"torch"``.
    """

    gm_ratio: float = 0.1
    seed: Seed = field(default_factory=Seed)
    stability: float = 0.9
    max_growth_step: float = 0.1
    time_step_factor: float = 1.0
    heun_growth_step: float = 0.5
    box_tolerance: float = 1e-6
    saturation: float = 1e-4
    integrator: str = "auto"
    backend: str = "auto"

    parameter_names: ClassVar[tuple[str, ...]] = PARAMETER_NAMES
    _guard: ClassVar[int] = 4  # box walls are checked over _guard layers every _guard stencil passes
    _saturation_check_every: ClassVar[int] = 32

    def __post_init__(self) -> None:
        if not self.gm_ratio >= 0:
            raise ValueError(f"gm_ratio must be >= 0, got {self.gm_ratio}")
        if not 0 < self.stability <= 1:
            raise ValueError(f"stability must lie in (0, 1], got {self.stability}")
        if not self.max_growth_step > 0 or not self.time_step_factor > 0:
            raise ValueError("max_growth_step and time_step_factor must be positive")
        if self.integrator not in ("auto", "euler", "heun"):
            raise ValueError(f"integrator must be 'auto', 'euler' or 'heun', got {self.integrator!r}")
        if self.backend not in ("auto", "numba", "torch"):
            raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {self.backend!r}")

    # ------------------------------------------------------------------ planning
    def plan(self, params: torch.Tensor, anatomy: Anatomy) -> StepPlan:
        """Per-sample integrator, number of steps and step length for ``params[B, 6]`` on ``anatomy``.

        The step is the smaller of ``stability`` × the forward-Euler limit and the reaction bound
        ρ·dt ≤ ``max_growth_step`` (forward Euler) or ``heun_growth_step`` (Heun, second order). Under
        ``integrator="auto"`` each sample gets the integrator that needs fewer stencil passes (Heun costs
        two per step); the choice depends on the sample alone, never on the rest of the batch.
        """
        return self._choose_plan(_check_params(params), anatomy)

    def _choose_plan(self, values: np.ndarray, anatomy: Anatomy) -> StepPlan:
        """:meth:`plan` for parameters already checked."""
        euler, heun = self._plan(values, anatomy, "euler"), self._plan(values, anatomy, "heun")
        if self.integrator == "auto":
            use_heun = 2 * heun.steps < euler.steps
        else:
            use_heun = np.full(len(values), self.integrator == "heun")
        return StepPlan(
            steps=np.where(use_heun, heun.steps, euler.steps),
            dt=np.where(use_heun, heun.dt, euler.dt),
            integrator=np.where(use_heun, "heun", "euler"),
        )

    def _plan(self, values: np.ndarray, anatomy: Anatomy, integrator: str) -> StepPlan:
        d_w, rho, t_end = values[:, 0], values[:, 1], values[:, 2]
        # max over voxels of Σ_faces k ≤ 2·max(d)·Σ 1/h² over axes that have neighbours
        kappa = 2.0 * max(1.0, self.gm_ratio) * sum(
            1.0 / h**2 for h, n in zip(anatomy.spacing_mm, anatomy.shape) if n > 1
        )
        dt_diffusion = self.stability / (d_w * kappa)
        growth_step = self.heun_growth_step if integrator == "heun" else self.max_growth_step
        with np.errstate(divide="ignore"):
            dt_growth = np.where(rho > 0, growth_step / np.where(rho > 0, rho, 1.0), np.inf)
        dt_max = self.time_step_factor * np.minimum(dt_diffusion, dt_growth)
        steps = np.where(t_end > 0, np.ceil(t_end / dt_max - 1e-9), 0).astype(np.int64)
        dt = np.where(steps > 0, t_end / np.maximum(steps, 1), 0.0)
        return StepPlan(steps=steps, dt=dt, integrator=np.full(len(values), integrator))

    # ------------------------------------------------------------------ initial condition
    def initial_density(self, params: torch.Tensor, anatomy: Anatomy) -> torch.Tensor:
        """u(0) for each sample, ``[B, *anatomy.shape]`` on ``params.device``."""
        values = _check_params(params)
        box = _Box(np.zeros(3), np.asarray(anatomy.shape))
        u = self._seed_box(values, anatomy, box)
        return u[:, 1:-1, 1:-1, 1:-1].to(params.device)

    def _seed_extent(self, values: np.ndarray, anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
        """Voxel index ranges ``[lo, hi)`` (``[B, 3]`` each) covering each seed's support."""
        centres = anatomy.world_to_voxel(values[:, 3:6])
        inverse = np.linalg.inv(anatomy.affine)[:3, :3]
        half = self.seed.support_mm * np.linalg.norm(inverse, axis=1) + 1.0
        shape = np.asarray(anatomy.shape)
        lo = np.clip(np.floor(centres - half).astype(np.int64), 0, shape)
        hi = np.clip(np.ceil(centres + half).astype(np.int64) + 1, 0, shape)
        return lo, hi

    def _seed_box(self, values: np.ndarray, anatomy: Anatomy, box: _Box) -> torch.Tensor:
        """Padded initial state ``[B, X+2, Y+2, Z+2]`` (CPU float32) of ``box``."""
        u = torch.zeros((len(values), *(n + 2 for n in box.size)), dtype=torch.float32)
        lo, hi = self._seed_extent(values, anatomy)
        for b in range(len(values)):
            a = np.maximum(lo[b], box.lo)
            z = np.minimum(hi[b], box.hi)
            if np.any(z <= a):
                continue
            index = np.stack(np.meshgrid(*(np.arange(p, q) for p, q in zip(a, z)), indexing="ij"), axis=-1)
            r = np.linalg.norm(anatomy.voxel_to_world(index) - values[b, 3:6], axis=-1)
            region = tuple(slice(p, q) for p, q in zip(a, z))
            density = self.seed.profile(r) * ((anatomy.wm[region] + anatomy.gm[region]) > 0)
            local = tuple(slice(p - o + 1, q - o + 1) for p, q, o in zip(a, z, box.lo))
            u[(b, *local)] = torch.from_numpy(density.astype(np.float32))
        return u

    # ------------------------------------------------------------------ simulation
    def simulate(self, params: torch.Tensor, anatomy: Anatomy, *, progress: bool = False) -> torch.Tensor:
        """Tumour cell density at time T for each row of ``params[B, 6]``: ``[B, *anatomy.shape]``.

        Runs on ``params.device``. ``progress`` shows a progress bar over time steps.
        """
        values = _check_params(params)
        device = params.device
        backend = self.backend if self.backend != "auto" else ("numba" if device.type == "cpu" else "torch")
        if backend == "numba" and device.type != "cpu":
            raise ValueError("the numba backend runs on CPU tensors only")
        batch = len(values)
        density = torch.zeros((batch, *anatomy.shape), dtype=torch.float32, device=device)
        if batch == 0:
            return density

        plan = self._choose_plan(values, anatomy)
        with tqdm(total=int(sum(plan.steps[plan.integrator == name].max(initial=0) for name in ("euler", "heun"))),
                  disable=not progress, desc="simulate", unit="step", leave=False) as bar:
            for name in ("euler", "heun"):
                group = np.flatnonzero(plan.integrator == name)
                if len(group):
                    self._integrate(values[group], plan.steps[group], plan.dt[group], name, anatomy, density,
                                    group, backend, bar)
        return density

    def _integrate(
        self,
        values: np.ndarray,
        steps: np.ndarray,
        dt: np.ndarray,
        integrator: str,
        anatomy: Anatomy,
        density: torch.Tensor,
        rows: np.ndarray,
        backend: str,
        bar: tqdm,
    ) -> None:
        """Integrate one group of samples sharing an integrator; write them into ``density[rows]``.

        Positions ``[0, active)`` of the state hold the samples still running. A sample leaves when it has
        taken its steps, or earlier when it has saturated (:meth:`_saturated`): then the rest of its run is
        the exact logistic flow, because diffusion between densities in [1 − ε, 1] stays there.
        """
        device = density.device
        lo, hi = self._seed_extent(values, anatomy)
        box = _Box(lo.min(axis=0), hi.max(axis=0)).grown(np.full((2, 3), 2 * self._guard), anatomy.shape)
        if np.any(box.size <= 0):
            return  # every seed lies outside the grid: no tumour

        order = np.argsort(-steps, kind="stable")
        steps, values, dt, rows = steps[order].copy(), values[order], dt[order].copy(), rows[order].copy()
        rho = values[:, 1]
        per_sample = {
            "scale": torch.as_tensor(dt * values[:, 0], dtype=torch.float32, device=device),
            "growth": torch.as_tensor(np.exp(rho * dt), dtype=torch.float32, device=device),
            "half_growth": torch.as_tensor(np.exp(0.5 * rho * dt), dtype=torch.float32, device=device),
            "rho": torch.as_tensor(rho, dtype=torch.float32, device=device),
            "dt": torch.as_tensor(dt, dtype=torch.float32, device=device),
            "finishing": torch.as_tensor(steps - 1, device=device),
        }
        no_growth = torch.ones(len(values), dtype=torch.float32, device=device)
        u = logistic(self._seed_box(values, anatomy, box).to(device), per_sample["half_growth"])
        out = torch.zeros_like(u)
        stage = torch.zeros_like(u) if integrator == "heun" else None
        operator = self._operator(anatomy, box, device)
        reached = torch.full((len(values),), -1, dtype=torch.int64, device=device)
        active = len(values)

        def retire(position: int) -> None:
            """Swap the sample at ``position`` to the end of the running prefix and shrink it."""
            nonlocal active
            last = active - 1
            out[position] = u[position]  # both buffers hold its final state
            if position != last:
                swap = torch.tensor([position, last], device=device)
                back = torch.tensor([last, position], device=device)
                for buffer in (u, out, reached, *per_sample.values()):
                    buffer[swap] = buffer[back]
                for array in (steps, rows):
                    array[[position, last]] = array[[last, position]]
            active = last

        # a pass spreads density by one voxel: check the walls before it can cross the guard layers
        check_every = self._guard // (2 if integrator == "heun" else 1)
        for n in range(int(steps.max(initial=0))):
            for position in sorted(np.flatnonzero(steps[:active] <= n), reverse=True):
                retire(int(position))
            if active == 0:
                break
            run = slice(0, active)
            step_growth = torch.where(per_sample["finishing"][run] == n, per_sample["half_growth"][run],
                                      per_sample["growth"][run])
            if integrator == "heun":
                diffusion_reaction_step(u[run], stage[run], operator.coefficients, operator.lines,
                                        per_sample["scale"][run], no_growth[run], backend)
                diffusion_reaction_step(stage[run], out[run], operator.coefficients, operator.lines,
                                        per_sample["scale"][run], step_growth, backend, base=u[run], keep=0.5)
            else:
                diffusion_reaction_step(u[run], out[run], operator.coefficients, operator.lines,
                                        per_sample["scale"][run], step_growth, backend)
            u, out = out, u
            bar.update(1)
            if (n + 1) % check_every == 0:
                grown = self._grow(u[run], box, anatomy.shape)
                if grown is not None:
                    u, out = _rebox(u, box, grown), _rebox(out, box, grown)
                    stage = torch.zeros_like(u) if integrator == "heun" else None
                    box = grown
                    operator = self._operator(anatomy, box, device)
            if (n + 1) % self._saturation_check_every == 0 and operator.closed:
                count, saturated = self._saturated(u[run], reached[run], operator, backend)
                reached[run] = count
                for position in sorted(torch.nonzero(saturated).flatten().tolist(), reverse=True):
                    if steps[position] <= n + 1:
                        continue  # its last step is done: it leaves at the top of the next step
                    remaining = per_sample["dt"][position] * float(steps[position] - n - 1.5)
                    growth = torch.exp(per_sample["rho"][position] * remaining).reshape(1)
                    u[position] = logistic(u[position : position + 1], growth)[0]
                    retire(position)

        region = tuple(slice(int(a), int(b)) for a, b in zip(box.lo, box.hi))
        interior = u[:, 1:-1, 1:-1, 1:-1].clamp_(0.0, 1.0)
        for position, row in enumerate(rows.tolist()):
            density[(row, *region)] = interior[position]

    def _saturated(
        self, u: torch.Tensor, reached_before: torch.Tensor, operator: _Operator, backend: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which samples have saturated: every voxel reached holds u > 1 − ``saturation``, and no voxel
        was newly reached since the last check (a voxel next to a saturated one through an open face
        would have been reached within one step). Returns the reached counts and the verdicts."""
        count, lowest = positive_statistics(u, operator.lines, backend)
        count, lowest = count.to(u.device), lowest.to(u.device)
        return count, (count == reached_before) & (lowest > 1.0 - self.saturation)

    def _operator(self, anatomy: Anatomy, box: _Box, device: torch.device) -> _Operator:
        """Face coefficients and tissue lines of ``box``, and whether the box encloses its tissue."""
        d = np.zeros(tuple(int(n) + 2 for n in box.size), dtype=np.float32)
        tissue = np.zeros(d.shape, dtype=bool)
        lo = np.maximum(box.lo - 1, 0)
        hi = np.minimum(box.hi + 1, anatomy.shape)
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        local = tuple(slice(int(a - o + 1), int(b - o + 1)) for a, b, o in zip(lo, hi, box.lo))
        d[local] = anatomy.wm[region] + np.float32(self.gm_ratio) * anatomy.gm[region]
        tissue[local] = (anatomy.wm[region] + anatomy.gm[region]) > 0
        inner = tissue[1:-1, 1:-1, 1:-1]
        # tissue across a wall (in the one-voxel rim) next to tissue inside: the box is not closed
        crossings = (
            (tissue[0, 1:-1, 1:-1] & inner[0]).any() or (tissue[-1, 1:-1, 1:-1] & inner[-1]).any()
            or (tissue[1:-1, 0, 1:-1] & inner[:, 0]).any() or (tissue[1:-1, -1, 1:-1] & inner[:, -1]).any()
            or (tissue[1:-1, 1:-1, 0] & inner[:, :, 0]).any() or (tissue[1:-1, 1:-1, -1] & inner[:, :, -1]).any()
        )
        coefficients = tuple(torch.from_numpy(k).to(device) for k in face_coefficients(d, anatomy.spacing_mm))
        return _Operator(coefficients=coefficients, lines=tissue_lines(inner), closed=not crossings)

    def _grow(self, u: torch.Tensor, box: _Box, shape: tuple[int, int, int]) -> _Box | None:
        """A larger box when density above ``box_tolerance`` reaches the walls of ``box``; else None."""
        g = self._guard
        pad = np.zeros((2, 3), dtype=np.int64)
        step = np.maximum(8, box.size // 4)
        for axis in range(3):
            for side, layers in ((0, slice(1, 1 + g)), (1, slice(-1 - g, -1))):
                at_edge = box.lo[axis] == 0 if side == 0 else box.hi[axis] == shape[axis]
                if at_edge:
                    continue
                index = [slice(None)] * 4
                index[axis + 1] = layers
                if float(u[tuple(index)].max()) > self.box_tolerance:
                    pad[side, axis] = step[axis]
        return box.grown(pad, shape) if pad.any() else None


@dataclass(frozen=True)
class _Operator:
    """The discrete operator on one working box."""

    coefficients: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    lines: tuple[np.ndarray, np.ndarray]
    closed: bool


@dataclass(frozen=True)
class _Box:
    """Index range ``[lo, hi)`` of the working box in the anatomy's grid."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo", np.asarray(self.lo, dtype=np.int64))
        object.__setattr__(self, "hi", np.asarray(self.hi, dtype=np.int64))

    @property
    def size(self) -> np.ndarray:
        return self.hi - self.lo

    def grown(self, pad: np.ndarray, shape: tuple[int, int, int]) -> _Box:
        """This box extended by ``pad[0]`` below and ``pad[1]`` above, clipped to ``shape``."""
        return _Box(np.maximum(self.lo - pad[0], 0), np.minimum(self.hi + pad[1], shape))


def _rebox(u: torch.Tensor, old: _Box, new: _Box) -> torch.Tensor:
    """Padded state of ``old`` copied into a zero padded state of the enclosing box ``new``."""
    grown = torch.zeros((u.shape[0], *(int(n) + 2 for n in new.size)), dtype=u.dtype, device=u.device)
    offset = old.lo - new.lo
    inner = tuple(slice(int(o) + 1, int(o + n) + 1) for o, n in zip(offset, old.size))
    grown[(slice(None), *inner)] = u[:, 1:-1, 1:-1, 1:-1]
    return grown


def _check_params(params: torch.Tensor) -> np.ndarray:
    """Validate ``params[B, 6]`` and return it as float64 numpy."""
    if not isinstance(params, torch.Tensor) or params.dim() != 2 or params.shape[1] != len(PARAMETER_NAMES):
        shape = tuple(params.shape) if isinstance(params, torch.Tensor) else type(params).__name__
        raise ValueError(f"params must be a tensor [B, {len(PARAMETER_NAMES)}] of {PARAMETER_NAMES}, got {shape}")
    values = params.detach().to("cpu", torch.float64).numpy()
    if not np.all(np.isfinite(values)):
        raise ValueError("params hold NaN or infinite values")
    for column, name, low in ((0, "D_w", 0.0), (1, "rho", 0.0), (2, "T", 0.0)):
        bad = values[:, column] < low if name != "D_w" else values[:, column] <= low
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{name} must be {'positive' if name == 'D_w' else 'non-negative'}, row {row} has "
                             f"{values[row, column]}")
    return values


def front_speed(d_w: float, rho: float) -> float:
    """Asymptotic speed 2·√(Dρ) (mm/day) of a Fisher–KPP travelling front in homogeneous tissue."""
    return 2.0 * math.sqrt(d_w * rho)
