"""2D tumour micro-environment under anti-angiogenic therapy and nanoparticle chemotherapy.

The model Koyuncu et al. (Sci Rep 12:2187, 2022, doi:10.1038/s41598-022-05460-z) simulate to train DENT,
whose equations come from Yonucu et al. (PLoS Comput Biol 13(9):e1005724, 2017). Fields on a 2D grid: tumour
cell density n, vessel density m, interstitial fluid pressure P (in units of the microvascular pressure P_v),
anti-angiogenic agent A and nanoparticle drug d (both in plasma concentration units). Lengths in mm, time in
days (the note this follows worked in cm: every value below is converted). As implemented:

    (1) ∂n/∂t = D_n ∇²n + r_n n(1 − n) + α_mn n m (1 − n) − d_r d n
    (2) ∂m/∂t = D_m ∇²m + m(α + βm + γm²) − χ ∇·(m ∇n) + α_nm n m − A_r A m,   α + β + γ = 0
    (3) 0 = ∇²P + ℓ(n) m (P_eff − P) − λ(n) P,   P = 0 on the domain's edge
    (4) 0 = D_A ∇²A + p_A m (A_p(t) − A) − (λ_A (1 − n) + k_A) A
    (5) 0 = D_d ∇²d − ∇·(d u) + (1 − σ) J_v d_p(t) + k_E m (d_p(t) − d) − (λ_d (1 − n) + k_d) d

with ℓ(n) = n ℓ_tumour + (1 − n) ℓ_normal (vessel leakage over the interstitial conductivity K), λ(n) =
λ_L (1 − n) (lymphatic drainage over K; tumours lack working lymphatics), Darcy velocity u = −κ ∇P and fluid
leakage J_v = κ ℓ(n) m (P_eff − P) (1/day), κ = K·P_v, so that ∇·u = J_v − κ λ(n) P: the drug's vessel
source follows the pressure equation's leakage (Starling–Kedem–Katchalsky with reflection coefficient σ,
plus diffusive exchange k_E). Lymphatics drain the drug at their own first-order rate λ_d (1 − n), far below the
fluid's κ λ(n) P: they take the fluid and retain the nanoparticles, so the drug concentrates wherever fluid
that left the vessels is drained — just outside the tumour, which is the periphery the papers describe, but
also in the avascular gaps between the vessel islands of normal tissue. A_p and d_p are the plasma
concentrations of :class:`simulators.treatment.Schedule`. n, m, A and d see no flux through the domain's edge;
fluid leaves there (P = 0) and the drug stays, so it also gathers in the outermost cells. Measured on the
default grid (seed 1, day 14, plasma drug 1): d = 0.16 in the core (n > 0.8), 0.53 at the periphery
(0.01 < n < 0.5), 2.0 on average in normal tissue with hot spots up to 21 in gaps, and 5.5 times higher along
the edge than 1 mm inside. Draining the drug with the fluid (κ λ(n) P d) and a no-flux edge for P remove the
hot spots and the edge, but also the periphery: d is then 0.13 in the core and at the periphery alike.

Where this closes gaps of the printed equations (see ``notes/microenvironment.md`` of the project's shared
folder): α + β + γ = 0 so that m = 0 and m = 1 are the stable states of the island term; chemotaxis
written −χ∇·(m∇n) with χ > 0 moves vessels towards the tumour; vessel-driven proliferation saturates,
α_mn n m (1 − n); the drug's source follows the leakage J_v; plasma decay uses an e-folding time; P = 0 at the
edge.

Numerics: cell-centred finite volumes of spacing h (the default 151 × 151 cells of 1/15 mm cover 1 cm, as in
DENT), five-point Laplacians, first-order upwind fluxes for chemotaxis and drug convection (cell Péclet
numbers near the tumour rim reach 20), so every steady operator is an M-matrix and P, A, d stay
non-negative. (1)–(2) advance by forward Euler with the linear kill and pruning terms implicit (unconditionally
stable, positivity-preserving) at a step of 1/48 day (30 minutes, DENT's output interval; far below the
diffusion limit h²/(4 D_n) ≈ 0.11 day on the default grid). (3)–(5) are quasi-steady: solved before every step
(A and d only while their plasma concentration is positive, P when d or an output needs it; P does not feed back
on n or m) by :meth:`SteadyBalance.solve`: conjugate gradients for P and A (symmetric positive definite), BiCGSTAB
for d (upwind convection makes it non-symmetric), both preconditioned by a modified incomplete LU factorisation
(ILU(0) with the fill it drops moved onto the diagonal, keeping column sums; Gustafsson 1978), started from
zero and stopped at a relative residual of 1e-12 (:data:`SOLVER_TOLERANCE`), in numba loops (compiled once,
about 6 s, then cached on disk); ``scipy.sparse.linalg.spsolve`` remains as reference and fallback. Measured on
2 shared cores (medians; single timings vary by ±30 %) on patient 0's default grid, 12.5 hours into a dose of
both agents at day 14:

- per solve, assembly included, P / A / d: 129 / 132 / 130 ms with spsolve, 8.7 / 11.9 / 17.3 ms now (31 / 50
  / 26 iterations); the solutions agree to 3e-14 / 3e-14 / 8e-14 of their maximum;
- one treated day (both agents from day 14, hourly outputs): 19.9 s with spsolve, 2.2 s now, of which the
  iterations take about 55 %. After it n, m, P, A, d agree with the spsolve run to 4e-15, 7e-15, 4e-14, 5e-14,
  3e-12 of their maximum (pointwise to 7e-11, in P's smallest values by the edge);
- one DENT case (:mod:`simulators.surrogates.dent_dataset`: 7 treated days from day 14, levels 1 and 1): 89 s
  with spsolve, 11.7 s now; its float32 maps are equal bit for bit but for 0.002 % of the values of P and d,
  one float32 rounding step apart.

Tried and not kept (per solve, P / A / d unless stated): SuperLU with other orderings (spsolve's COLAMD 137 /
134 / 137 ms; MMD_AT_PLUS_A 104 / 112 / 130; MMD_ATA 125 / 134 / 172; natural ≈ 1 s); scipy's ``cg`` with a
Jacobi preconditioner on P, 64 ms (213 iterations) with OpenBLAS on one thread but 1.9 s while another process
loads the cores (its threads spin in the vector operations), and ``spilu``, 40–75 ms to factor before any
iteration; ILU(0) instead of the modified factorisation, 75 / 179 / 51 iterations; a warm start from the previous
step's solution (scaled by the change of plasma concentration, or extrapolated from two steps), 10–25 % fewer
iterations, about 8 % of a day: not kept, so that a solve depends on its balance alone and not on the run's
history; a tolerance of 1e-10, a day 6 % faster for 100 times larger differences. Assembly is part of the gain:
the Laplacian is built once per grid and copied, and the upwind operator is written straight into CSR form (equal
to the former COO construction bit for bit): 5.9 → 0.6 ms for P's balance, 14 → 3 ms for d's.

Relation to :class:`simulators.protocol.Simulator`: this is not one. Its inputs are a virtual patient (the
seed of the vessel islands) and a treatment schedule, and it returns five 2D fields over time, not a density
on an anatomy from a batch of growth parameters; a protocol adapter belongs with the DENT surrogate, whose
dataset this model generates.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve
from tqdm.auto import tqdm

from simulators.five_point import five_bands, is_m_matrix, krylov_solve
from simulators.treatment import Schedule

DEFAULT_SHAPE = (151, 151)
DEFAULT_SPACING_MM = 10.0 / 150.0
"""DENT's grid is 151 × 151 (Koyuncu et al. 2022); its spacing, 1/150 cm (a 1 cm domain), is the note's."""
FIELDS = ("n", "m", "P", "A", "d")
DEFAULT_TIME_STEP_DAYS = 1.0 / 48.0
"""The model's own step (30 minutes); :func:`time_step_days` lowers it where the grid is fine enough to need it."""
SOLVER_TOLERANCE = 1e-12
"""Relative residual ‖source − system·u‖/‖source‖ at which :meth:`SteadyBalance.solve` stops iterating: the fields
then match a direct solve to about 1e-13 of their maximum (see the module docstring's Numerics)."""


@dataclass(frozen=True)
class MicroenvironmentParameters:
    """Every constant of Eqs. (1)–(5) and of the initial state, in mm and days.

    Yonucu et al. (2017) name the terms but their parameter table could not be read from any stored copy,
    and Koyuncu et al. (2022) give none. Values marked [note] are the planning set of
    ``notes/microenvironment.md`` (a 151 × 151 run that reproduced the papers' qualitative claims; not a
    calibrated set), converted from its cm to mm (it gives rates without units: they are read as 1/day);
    [ours] marks choices made here.

    Tumour cells (1):
        tumour_diffusion: D_n, 0.01 mm²/day [note: 1e-4 cm²/day].
        tumour_growth: r_n, 0.2 /day [note].
        vessel_driven_growth: α_mn, 0.1 /day [note].
        drug_kill: d_r, 0.5 /day per unit d [note; about 5 makes tumours shrink].
    Vessels (2):
        vessel_diffusion: D_m, 0.002 mm²/day [note: 2e-5 cm²/day].
        vessel_alpha, vessel_beta, vessel_gamma: α, β, γ (/day) of the island term, −0.5, 1.5, −1 [note]:
            m = 0 and m = 1 stable, m = α/γ = 0.5 the threshold between them.
        chemotaxis: χ, 0.01 mm²/day [note: 1e-4 cm²/day].
        angiogenesis: α_nm, 1.0 /day [note].
        pruning: A_r, 2.0 /day per unit A [note].
    Pressure (3), P in units of P_v:
        leakage_tumour, leakage_normal: ℓ = L_p S/V / K in tumour and normal tissue, 4 and 0.25 /mm² [note:
            400 and 25 in units of 1/L² with L = 1 cm], blended by n.
        effective_pressure: P_eff, the pressure vessels leak against, 0.8 P_v [note].
        lymphatic_drainage: λ_L, 5 /mm², scaled by 1 − n [note: 500 /cm²].
        hydraulic_conductivity: κ = K·P_v, 52 mm²/day [note: "hydraulic term ≈ 0.52", read as K·P_v in
            cm²/day]; sets the Darcy velocity u = −κ∇P and the fluid leakage J_v.
    Anti-angiogenic agent (4):
        agent_diffusion: D_A, 1 mm²/day [note: 0.01, read as cm²/day like D_n].
        agent_permeability: p_A, 1.0 /day [note].
        agent_drainage: λ_A, 0.5 /day, scaled by 1 − n [note].
        agent_decay: k_A, 0.2 /day [note].
        agent_plasma_time_constant_days: plasma e-folding time (not a half-life), 1 day [note].
    Nanoparticle drug (5):
        drug_diffusion: D_d, 0.1 mm²/day [note: 1e-3, read as cm²/day like D_n].
        drug_permeability: k_E, diffusive exchange with plasma, 1.0 /day [note].
        drug_reflection: σ, the fraction of the drug the vessel wall holds back from the leaking fluid,
            0.9 [note].
        drug_drainage: λ_d, 0.5 /day, scaled by 1 − n [note].
        drug_decay: k_d, 0.1 /day [note].
        drug_plasma_time_constant_days: plasma e-folding time (not a half-life), 1 day [note].
    Initial state:
        tumour_amplitude: peak of the Gaussian tumour, 1.0 [ours].
        tumour_width_mm: its standard deviation, 0.3 mm [ours]: the tumour (n > 0.5) is then about 2 mm
            across at day 14, the earliest start of therapy in DENT's data.
        vessel_noise_width_mm: standard deviation of the Gaussian that smooths the vessel noise, 0.2 mm
            [note: "smoothed over 3 pixels", read as σ = 3 pixels of 1/15 mm].
    """

    tumour_diffusion: float = 0.01
    tumour_growth: float = 0.2
    vessel_driven_growth: float = 0.1
    drug_kill: float = 0.5
    vessel_diffusion: float = 0.002
    vessel_alpha: float = -0.5
    vessel_beta: float = 1.5
    vessel_gamma: float = -1.0
    chemotaxis: float = 0.01
    angiogenesis: float = 1.0
    pruning: float = 2.0
    leakage_tumour: float = 4.0
    leakage_normal: float = 0.25
    effective_pressure: float = 0.8
    lymphatic_drainage: float = 5.0
    hydraulic_conductivity: float = 52.0
    agent_diffusion: float = 1.0
    agent_permeability: float = 1.0
    agent_drainage: float = 0.5
    agent_decay: float = 0.2
    agent_plasma_time_constant_days: float = 1.0
    drug_diffusion: float = 0.1
    drug_permeability: float = 1.0
    drug_reflection: float = 0.9
    drug_drainage: float = 0.5
    drug_decay: float = 0.1
    drug_plasma_time_constant_days: float = 1.0
    tumour_amplitude: float = 1.0
    tumour_width_mm: float = 0.3
    vessel_noise_width_mm: float = 0.2

    def __post_init__(self) -> None:
        signed = {"vessel_alpha", "vessel_gamma"}
        for item in fields(self):
            value = getattr(self, item.name)
            if not math.isfinite(value):
                raise ValueError(f"{item.name} must be finite, got {value}")
            if item.name not in signed and value < 0:
                raise ValueError(f"{item.name} must be non-negative, got {value}")
        for name in ("agent_plasma_time_constant_days", "drug_plasma_time_constant_days", "tumour_width_mm",
                     "vessel_noise_width_mm", "tumour_amplitude"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        alpha, beta, gamma = self.vessel_alpha, self.vessel_beta, self.vessel_gamma
        if abs(alpha + beta + gamma) > 1e-9 * max(1.0, abs(alpha), abs(beta), abs(gamma)):
            raise ValueError(f"vessel_alpha + vessel_beta + vessel_gamma must be 0 (m = 1 a steady state), got "
                             f"{alpha} + {beta} + {gamma}")
        if not (alpha < 0 and gamma < 0 and 0 < alpha / gamma < 1):
            raise ValueError("the island term needs vessel_alpha < 0, vessel_gamma < 0 and a threshold "
                             f"vessel_alpha/vessel_gamma in (0, 1), got {alpha} and {gamma}")
        if self.drug_reflection > 1 or self.tumour_amplitude > 1:
            raise ValueError("drug_reflection and tumour_amplitude must not exceed 1")


@dataclass(frozen=True, eq=False)
class MicroenvironmentState:
    """The five fields at one time: float64 arrays of one 2D shape (read-only copies), and the grid spacing.

    P, A and d are quasi-steady: :func:`simulate_microenvironment` recomputes them from n, m and the plasma
    concentrations and does not read those of its initial state.
    """

    n: np.ndarray
    m: np.ndarray
    P: np.ndarray
    A: np.ndarray
    d: np.ndarray
    spacing_mm: float = DEFAULT_SPACING_MM

    def __post_init__(self) -> None:
        if not self.spacing_mm > 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        shapes = {np.shape(getattr(self, name)) for name in FIELDS}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or min(next(iter(shapes))) < 3:
            raise ValueError(f"n, m, P, A, d must be 2D arrays of one shape, at least 3 × 3, got {sorted(shapes)}")
        for name in FIELDS:
            array = np.array(getattr(self, name), dtype=np.float64)
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} holds NaN or infinite values")
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n.shape


@dataclass(frozen=True, eq=False)
class Trajectory:
    """States at ``times`` (days, ``[T]``): each field stacked as ``[T, X, Y]``."""

    times: np.ndarray
    n: np.ndarray
    m: np.ndarray
    P: np.ndarray
    A: np.ndarray
    d: np.ndarray
    spacing_mm: float

    def state(self, index: int) -> MicroenvironmentState:
        """The state at ``times[index]``."""
        return MicroenvironmentState(*(getattr(self, name)[index] for name in FIELDS), spacing_mm=self.spacing_mm)


@dataclass(frozen=True, eq=False)
class SteadyBalance:
    """A linear quasi-steady equation 0 = transport·u + source − sink_rate·u on the flattened grid.

    ``transport`` holds the fluxes (diffusion, convection). Where every boundary is no-flux its columns sum to
    zero, so Σ source = Σ sink_rate·u at the solution: what enters the grid leaves it through the sinks.
    """

    transport: sparse.csr_matrix
    source: np.ndarray
    sink_rate: np.ndarray

    def __post_init__(self) -> None:
        size = np.size(self.source)
        if (np.ndim(self.source) != 1 or self.transport.shape != (size, size)
                or np.shape(self.sink_rate) != (size,)):
            raise ValueError(f"source and sink_rate must be vectors of one length N and transport N × N, got "
                             f"{np.shape(self.source)}, {np.shape(self.sink_rate)} and {self.transport.shape}")

    def solve(self) -> np.ndarray:
        """u, flattened (C order), to a relative residual ‖source − system·u‖ ≤ :data:`SOLVER_TOLERANCE`·‖source‖,
        where system = diag(sink_rate) − transport.

        Where ``transport`` lies on five diagonals (offsets 0, ±1, ±w: every five-point operator) the solve is a
        Krylov iteration from u = 0 (conjugate gradients where the system is symmetric, BiCGSTAB otherwise)
        preconditioned by a modified incomplete LU factorisation, in compiled loops; elsewhere, or where the
        iteration fails, it is :meth:`solve_direct`. A pure function of the balance: no state is kept between
        solves. Where the system is a Z-matrix with non-negative column sums and ``source`` is non-negative (an
        M-matrix problem: the exact u is non-negative), negative values are set to 0. That moves no value further
        from the exact solution, and they are at the tolerance's level (measured down to −2.4e-13 of max u, on
        convection-dominated test systems; none on the model's).
        """
        bands = five_bands(self.transport)
        if bands is None:
            return self.solve_direct()
        system, width = bands
        system = -system
        system[2] += self.sink_rate
        source = np.asarray(self.source, dtype=np.float64)
        u = krylov_solve(system, width, source, SOLVER_TOLERANCE)
        if u is None:
            return self.solve_direct()
        if np.all(source >= 0) and is_m_matrix(system, width):
            np.maximum(u, 0.0, out=u)
        return u

    def solve_direct(self) -> np.ndarray:
        """u, flattened (C order), by ``scipy.sparse.linalg.spsolve`` (SuperLU, exact to rounding): the reference
        for :meth:`solve`, and its fallback."""
        return spsolve((sparse.diags(self.sink_rate) - self.transport).tocsc(), self.source)


def laplacian(shape: tuple[int, int], spacing_mm: float, edge: str) -> sparse.csr_matrix:
    """Five-point Laplacian (1/mm²) on cell-centred ``shape``: ``edge`` ``"no-flux"`` (zero normal gradient)
    or ``"zero"`` (the field vanishes on the edge faces: the ghost cell holds −u). A new matrix per call (built
    once per shape, spacing and edge, then copied)."""
    if edge not in ("no-flux", "zero"):
        raise ValueError(f"edge must be 'no-flux' or 'zero', got {edge!r}")
    return _laplacian(tuple(int(size) for size in shape), float(spacing_mm), edge).copy()


@functools.lru_cache(maxsize=16)
def _laplacian(shape: tuple[int, int], spacing_mm: float, edge: str) -> sparse.csr_matrix:
    end = -1.0 if edge == "no-flux" else -3.0

    def second_difference(size: int) -> sparse.csr_matrix:
        diagonal = np.full(size, -2.0)
        diagonal[[0, -1]] = end
        return sparse.diags([np.ones(size - 1), diagonal, np.ones(size - 1)], [-1, 0, 1]) / spacing_mm**2

    x, y = shape
    return (sparse.kron(second_difference(x), sparse.identity(y)) +
            sparse.kron(sparse.identity(x), second_difference(y))).tocsr()


def upwind_transport(potential: np.ndarray, coefficient: float, spacing_mm: float) -> sparse.csr_matrix:
    """The operator c ↦ −∇·(c v) with face velocity v = −coefficient·∇potential (mm/day), first-order
    upwind, no flux through the edge. Conservative (its columns sum to zero) with non-negative off-diagonal
    entries, so a positive sink rate minus it is an M-matrix."""
    bands = np.zeros((5, *potential.shape))  # row's entry at its neighbour −x, −y, itself, +y, +x
    for axis, (below, above) in ((0, (0, 4)), (1, (1, 3))):
        low = (slice(None),) * axis + (slice(None, -1),)
        high = (slice(None),) * axis + (slice(1, None),)
        velocity = -coefficient * np.diff(potential, axis=axis) / spacing_mm
        forward, backward = np.maximum(velocity, 0.0) / spacing_mm, np.minimum(velocity, 0.0) / spacing_mm
        # face flux = forward·c_low + backward·c_high leaves the low cell and enters the high cell
        bands[2][low] -= forward
        bands[above][low] = -backward
        bands[below][high] = forward
        bands[2][high] += backward
    return _five_point(bands)


def _five_point(bands: np.ndarray) -> sparse.csr_matrix:
    """The CSR matrix on grid ``bands.shape[1:]`` whose row (i, j) holds ``bands[:, i, j]`` at its neighbours
    (i − 1, j), (i, j − 1), (i, j), (i, j + 1), (i + 1, j); entries outside the grid are ignored."""
    shape = bands.shape[1:]
    indptr, indices, gather = _five_point_pattern(shape)
    size = shape[0] * shape[1]
    matrix = sparse.csr_matrix((bands.reshape(-1)[gather], indices.copy(), indptr.copy()), shape=(size, size))
    matrix.has_canonical_format = True
    return matrix


@functools.lru_cache(maxsize=16)
def _five_point_pattern(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """indptr and indices of the five-point pattern on ``shape`` (C order), and for each entry its position
    in the flattened ``[5, X, Y]`` bands of :func:`_five_point`."""
    x, y = shape
    size = x * y
    inside = np.ones((5, x, y), dtype=bool)
    inside[0, 0, :] = inside[1, :, 0] = inside[3, :, -1] = inside[4, -1, :] = False
    inside = inside.reshape(5, size)
    columns = np.arange(size)[None, :] + np.array([-y, -1, 0, 1, y])[:, None]
    entries = np.flatnonzero(inside.T)  # row by row, columns ascending
    row, band = np.divmod(entries, 5)
    indptr = np.concatenate([[0], np.cumsum(inside.sum(axis=0))]).astype(np.int32)
    return indptr, columns[band, row].astype(np.int32), band * size + row


def pressure_balance(n: np.ndarray, m: np.ndarray, spacing_mm: float,
                     parameters: MicroenvironmentParameters) -> SteadyBalance:
    """Eq. (3): −∇²P + (ℓ(n) m + λ(n)) P = ℓ(n) m P_eff, P = 0 on the edge (everything in 1/mm²)."""
    p = parameters
    leakage = (_leakage(n, p) * m).ravel()
    return SteadyBalance(transport=laplacian(n.shape, spacing_mm, "zero"),
                         source=leakage * p.effective_pressure,
                         sink_rate=leakage + p.lymphatic_drainage * (1.0 - n).ravel())


def agent_balance(n: np.ndarray, m: np.ndarray, plasma: float, spacing_mm: float,
                  parameters: MicroenvironmentParameters) -> SteadyBalance:
    """Eq. (4) for the anti-angiogenic agent at plasma concentration ``plasma``."""
    p = parameters
    exchange = p.agent_permeability * m.ravel()
    return SteadyBalance(transport=p.agent_diffusion * laplacian(n.shape, spacing_mm, "no-flux"),
                         source=exchange * plasma,
                         sink_rate=exchange + p.agent_drainage * (1.0 - n).ravel() + p.agent_decay)


def drug_balance(n: np.ndarray, m: np.ndarray, P: np.ndarray, plasma: float, spacing_mm: float,
                 parameters: MicroenvironmentParameters) -> SteadyBalance:
    """Eq. (5) for the nanoparticle drug at plasma concentration ``plasma``, convected by u = −κ∇P."""
    p = parameters
    leak = p.hydraulic_conductivity * _leakage(n, p) * m * (p.effective_pressure - P)  # J_v (1/day)
    exchange = p.drug_permeability * m.ravel()
    transport = (p.drug_diffusion * laplacian(n.shape, spacing_mm, "no-flux")
                 + upwind_transport(P, p.hydraulic_conductivity, spacing_mm))
    return SteadyBalance(transport=transport,
                         source=((1.0 - p.drug_reflection) * leak.ravel() + exchange) * plasma,
                         sink_rate=exchange + p.drug_drainage * (1.0 - n).ravel() + p.drug_decay)


def _leakage(n: np.ndarray, p: MicroenvironmentParameters) -> np.ndarray:
    """ℓ(n) = n ℓ_tumour + (1 − n) ℓ_normal (1/mm²)."""
    return n * p.leakage_tumour + (1.0 - n) * p.leakage_normal


def initial_state(shape: tuple[int, int] = DEFAULT_SHAPE, seed: int = 0,
                  parameters: MicroenvironmentParameters = MicroenvironmentParameters(),
                  spacing_mm: float = DEFAULT_SPACING_MM) -> MicroenvironmentState:
    """A virtual patient: a Gaussian tumour at the centre of the grid and random vessel islands from ``seed``.

    The vessels are white noise (``np.random.default_rng(seed)``) smoothed by a Gaussian of
    ``vessel_noise_width_mm`` and rescaled to [0, 1]; the island term of Eq. (2) then sorts them into vessel
    islands (m → 1) and avascular gaps (m → 0). P solves Eq. (3); A = d = 0 (no treatment yet). The noise is
    drawn per cell, so a seed names a patient on one grid: another shape or spacing gives other vessels.
    """
    p = parameters
    noise = np.random.default_rng(seed).random(shape)
    noise = ndimage.gaussian_filter(noise, p.vessel_noise_width_mm / spacing_mm, mode="reflect")
    m = (noise - noise.min()) / (noise.max() - noise.min())
    x, y = ((np.arange(size) - (size - 1) / 2) * spacing_mm for size in shape)
    radius2 = x[:, None] ** 2 + y[None, :] ** 2
    n = p.tumour_amplitude * np.exp(-radius2 / (2 * p.tumour_width_mm**2))
    P = pressure_balance(n, m, spacing_mm, p).solve().reshape(shape)
    return MicroenvironmentState(n=n, m=m, P=P, A=np.zeros(shape), d=np.zeros(shape), spacing_mm=spacing_mm)


def simulate_microenvironment(
    initial: MicroenvironmentState,
    schedule: Schedule,
    days: float,
    parameters: MicroenvironmentParameters = MicroenvironmentParameters(),
    output_every_days: float = 1.0 / 48.0,
    *,
    start_day: float = 0.0,
    max_time_step_days: float = DEFAULT_TIME_STEP_DAYS,
    progress: bool = False,
) -> Trajectory:
    """Advance ``initial`` (at ``start_day``) by ``days`` under ``schedule`` (dose days on the same clock).

    Returns the states at ``start_day``, every ``output_every_days`` after it, and at ``start_day + days``
    (``days`` must be a whole number of output intervals). The time step is the largest that divides the
    output interval and does not exceed ``max_time_step_days``. ``progress`` shows a progress bar over steps.
    A trajectory holds 5 float64 fields per output: 0.9 MB per output on the default grid.
    """
    p = parameters
    if not (days >= 0 and output_every_days > 0 and max_time_step_days > 0 and start_day >= 0):
        raise ValueError("days and start_day must be non-negative, output_every_days and max_time_step_days "
                         "positive")
    outputs = round(days / output_every_days)
    if abs(outputs * output_every_days - days) > 1e-9 * max(1.0, days):
        raise ValueError(f"days ({days}) must be a whole number of output intervals ({output_every_days})")
    substeps = max(1, math.ceil(output_every_days / max_time_step_days - 1e-9))
    dt, h = output_every_days / substeps, initial.spacing_mm
    limit = h**2 / (4 * max(p.tumour_diffusion, p.vessel_diffusion, 1e-300))
    if dt > limit:
        raise ValueError(f"time step {dt:.4g} day exceeds the explicit diffusion limit {limit:.4g} day at "
                         f"spacing {h} mm: lower max_time_step_days")

    diffusion = laplacian(initial.shape, h, "no-flux")
    n, m = initial.n.copy(), initial.m.copy()
    records = {name: [] for name in FIELDS}
    times = start_day + output_every_days * np.arange(outputs + 1)
    with tqdm(total=outputs * substeps, disable=not progress, desc="microenvironment", unit="step",
              leave=False) as bar:
        for step in range(outputs * substeps + 1):
            t = start_day + step * dt
            recording = step % substeps == 0
            P, A, d = _quasi_steady(n, m, t, schedule, h, p, pressure_needed=recording)
            if recording:
                for name, field in zip(FIELDS, (n, m, P, A, d)):
                    records[name].append(field.copy())
            if step == outputs * substeps:
                break
            chemotaxis = upwind_transport(n, -p.chemotaxis, h) @ m.ravel()  # −χ∇·(m∇n): velocity χ∇n
            growth = (p.tumour_growth + p.vessel_driven_growth * m) * n * (1.0 - n)
            sprouting = m * (p.vessel_alpha + p.vessel_beta * m + p.vessel_gamma * m**2) + p.angiogenesis * n * m
            n_rate = p.tumour_diffusion * (diffusion @ n.ravel()).reshape(n.shape) + growth
            m_rate = (p.vessel_diffusion * (diffusion @ m.ravel()) + chemotaxis).reshape(m.shape) + sprouting
            n = (n + dt * n_rate) / (1.0 + dt * p.drug_kill * d)
            m = (m + dt * m_rate) / (1.0 + dt * p.pruning * A)
            bar.update()
    stacked = {name: np.stack(records[name]) for name in FIELDS}
    return Trajectory(times=times, spacing_mm=h, **stacked)


def time_step_days(spacing_mm: float, parameters: MicroenvironmentParameters,
                   preferred_days: float = DEFAULT_TIME_STEP_DAYS) -> float:
    """``preferred_days``, or 99 % of the explicit diffusion limit h²/(4 max(D_n, D_m)) where that is smaller."""
    fastest = max(parameters.tumour_diffusion, parameters.vessel_diffusion)
    if fastest <= 0:
        return preferred_days
    return min(preferred_days, 0.99 * spacing_mm**2 / (4.0 * fastest))


def grow(state: MicroenvironmentState, schedule: Schedule, until_day: float,
         parameters: MicroenvironmentParameters = MicroenvironmentParameters(), *, from_day: float = 0.0,
         max_time_step_days: float = DEFAULT_TIME_STEP_DAYS, progress: bool = False) -> MicroenvironmentState:
    """``state`` (at ``from_day``) advanced to ``until_day`` under ``schedule``, keeping only the last state."""
    span = until_day - from_day
    if span == 0:
        return state
    return simulate_microenvironment(state, schedule, span, parameters, output_every_days=span, start_day=from_day,
                                     max_time_step_days=max_time_step_days, progress=progress).state(-1)


def _quasi_steady(n: np.ndarray, m: np.ndarray, t: float, schedule: Schedule, spacing_mm: float,
                  p: MicroenvironmentParameters, pressure_needed: bool) -> tuple[np.ndarray | None, ...]:
    """P, A, d of Eqs. (3)–(5) at time t. A and d are zero while their plasma concentration is; P is None
    unless ``pressure_needed`` or the drug needs it."""
    agent = schedule.plasma_concentration("antiangiogenic", t, p.agent_plasma_time_constant_days)
    drug = schedule.plasma_concentration("chemotherapy", t, p.drug_plasma_time_constant_days)
    A = (agent_balance(n, m, agent, spacing_mm, p).solve().reshape(n.shape) if agent > 0 else np.zeros(n.shape))
    P = pressure_balance(n, m, spacing_mm, p).solve().reshape(n.shape) if pressure_needed or drug > 0 else None
    d = drug_balance(n, m, P, drug, spacing_mm, p).solve().reshape(n.shape) if drug > 0 else np.zeros(n.shape)
    return P, A, d
