"""Specification of the tumour micro-environment model: the behaviour Yonucu et al. (2017) and Koyuncu et al.
(2022) report — a pressure plateau that drops at the rim, vessel pruning and lower pressure under an
anti-angiogenic agent, drug gathering at the periphery, tumour kill — and the solver's own guarantees."""

from __future__ import annotations

import numpy as np
import pytest

from scipy import sparse

from simulators.five_point import five_bands, krylov_solve
from simulators.microenvironment import (
    SOLVER_TOLERANCE,
    MicroenvironmentParameters,
    MicroenvironmentState,
    SteadyBalance,
    agent_balance,
    drug_balance,
    initial_state,
    laplacian,
    pressure_balance,
    simulate_microenvironment,
    upwind_transport,
)
from simulators.treatment import Dose, Schedule

SHAPE, SPACING_MM = (61, 61), 0.1  # a 6 mm square: small and coarse enough for tests, large enough for the rim
START = 10.0  # days of untreated growth before any dose: the tumour is then about 2 mm across


@pytest.fixture(scope="module")
def grown() -> MicroenvironmentState:
    """Virtual patient 1 after ten untreated days."""
    start = initial_state(SHAPE, seed=1, spacing_mm=SPACING_MM)
    return simulate_microenvironment(start, Schedule(), START, output_every_days=START).state(-1)


def treat(state: MicroenvironmentState, *doses: Dose, days: float = 2.0,
          parameters: MicroenvironmentParameters = MicroenvironmentParameters()) -> MicroenvironmentState:
    """The state ``days`` after ``state`` (at day START) under ``doses``."""
    return simulate_microenvironment(state, Schedule(doses), days, parameters, output_every_days=days,
                                     start_day=START).state(-1)


def test_pressure_plateaus_inside_the_tumour_and_drops_at_its_rim(grown, measured):
    P, n = grown.P, grown.n
    core, rim, outside = P[n > 0.8], P[(n > 0.3) & (n < 0.7)], P[n < 0.01]
    plateau = core.mean()
    measured("core pressure mean, relative spread (P_v)", f"{plateau:.3f}, {core.std() / plateau:.3f}")
    measured("pressure at the rim (0.3 < n < 0.7), outside (n < 0.01)", f"{rim.mean():.3f}, {outside.mean():.3f}")
    assert plateau > 0.4 and core.std() < 0.1 * plateau
    assert rim.mean() < 0.75 * plateau and outside.mean() < 0.1 * plateau


def test_an_antiangiogenic_dose_lowers_vessel_density_and_pressure_in_the_core(grown, measured):
    untreated = treat(grown)
    treated = treat(grown, Dose(START, "antiangiogenic", 2.0))
    core = untreated.n > 0.8
    m_before, m_after = untreated.m[core].mean(), treated.m[core].mean()
    p_before, p_after = untreated.P[core].mean(), treated.P[core].mean()
    measured("core vessel density untreated -> treated", f"{m_before:.3f} -> {m_after:.3f}")
    measured("core pressure untreated -> treated (P_v)", f"{p_before:.3f} -> {p_after:.3f}")
    assert m_after < 0.85 * m_before
    assert p_after < p_before - 0.02


def test_the_drug_gathers_at_the_tumour_periphery_not_in_its_core(grown, measured):
    one_day = treat(grown, Dose(START, "chemotherapy", 1.0), days=1.0)
    n, d = one_day.n, one_day.d
    core, periphery = d[n > 0.8].mean(), d[(n > 0.01) & (n < 0.5)].mean()
    measured("drug one day after a dose: core, periphery (0.01 < n < 0.5)", f"{core:.3f}, {periphery:.3f}")
    assert periphery > 2 * core


def test_enough_chemotherapy_shrinks_the_tumour_which_grows_without(grown, measured):
    potent = MicroenvironmentParameters(drug_kill=5.0)  # the note's level for shrinkage
    doses = [Dose(START + day, "chemotherapy", 1.0) for day in (0.0, 1.0)]
    burden = grown.n.sum()
    untreated, treated = treat(grown, days=3.0, parameters=potent), treat(grown, *doses, days=3.0, parameters=potent)
    measured("tumour burden after 3 days / before, untreated and treated",
             f"{untreated.n.sum() / burden:.3f}, {treated.n.sum() / burden:.3f}")
    assert untreated.n.sum() > 1.1 * burden
    assert treated.n.sum() < 0.8 * burden


def test_the_steady_drug_solve_balances_vessel_sources_against_sinks(grown, measured):
    """No flux leaves the grid: the transport terms sum to zero over it, so what the vessels release is what
    the sinks (reabsorption, lymphatics, decay) remove."""
    balance = drug_balance(grown.n, grown.m, grown.P, 0.7, SPACING_MM, MicroenvironmentParameters())
    d = balance.solve()
    source, sink = balance.source.sum(), (balance.sink_rate * d).sum()
    transport = balance.transport @ d
    measured("drug source, sink (sum over the grid)", f"{source:.6g}, {sink:.6g}")
    measured("relative imbalance", f"{abs(source - sink) / source:.2e}")
    assert d.min() >= 0
    assert abs(source - sink) < 1e-10 * source
    assert abs(transport.sum()) < 1e-10 * np.abs(transport).sum()


def test_the_iterative_steady_solves_match_the_direct_solve_on_a_treated_state(grown, measured):
    """The Krylov solves stop at a relative residual of 1e-12; P, A and d then match scipy's direct solve to
    1e-10 of their maximum (measured about 1e-13 on the default grid)."""
    state = treat(grown, Dose(START, "antiangiogenic", 1.0), Dose(START, "chemotherapy", 1.0), days=1.0)
    p = MicroenvironmentParameters()
    balances = {"P": pressure_balance(state.n, state.m, SPACING_MM, p),
                "A": agent_balance(state.n, state.m, 0.4, SPACING_MM, p),
                "d": drug_balance(state.n, state.m, state.P, 0.4, SPACING_MM, p)}
    for name, balance in balances.items():
        fast, direct = balance.solve(), balance.solve_direct()
        residual = np.linalg.norm(balance.source - (sparse.diags(balance.sink_rate) - balance.transport) @ fast)
        difference = np.abs(fast - direct).max() / np.abs(direct).max()
        measured(f"{name}: max |iterative - direct| / max, relative residual",
                 f"{difference:.1e}, {residual / np.linalg.norm(balance.source):.1e}")
        assert residual <= 1.01 * SOLVER_TOLERANCE * np.linalg.norm(balance.source)
        assert difference < 1e-10 and fast.min() >= 0


def test_iterative_negatives_are_at_the_tolerance_level_and_set_to_zero(measured):
    """Strong convection towards a point source leaves values of 1e-30 upstream, below the iteration's error: it
    returns some as tiny negatives, which solve() sets to 0 (the exact solution of this M-matrix problem is
    positive, so that brings them closer to it)."""
    shape, spacing = (31, 31), 0.1
    x, y = (np.arange(size) * spacing - 1.5 for size in shape)
    inflow = x[:, None] ** 2 + y[None, :] ** 2  # velocity −5∇(r²) points at the centre
    source = np.zeros(shape)
    source[15, 15] = 1.0
    balance = SteadyBalance(0.01 * laplacian(shape, spacing, "no-flux") + upwind_transport(inflow, 5.0, spacing),
                            source.ravel(), np.full(source.size, 0.1))
    bands, width = five_bands(balance.transport)
    bands = -bands
    bands[2] += balance.sink_rate
    raw, fast, direct = krylov_solve(bands, width, balance.source, SOLVER_TOLERANCE), balance.solve(), balance.solve_direct()
    scale = direct.max()
    measured("negative values before clamping, most negative / max", f"{(raw < 0).sum()}, {raw.min() / scale:.1e}")
    assert (raw < 0).any() and raw.min() > -SOLVER_TOLERANCE * scale
    assert fast.min() >= 0 and np.abs(fast - direct).max() <= np.abs(raw - direct).max() < 1e-10 * scale


def test_systems_off_five_diagonals_or_breaking_the_factorisation_take_the_direct_solver():
    rng = np.random.default_rng(0)
    shape, spacing = (9, 9), 0.5
    diffusion = laplacian(shape, spacing, "no-flux")
    sink, source = rng.uniform(0.5, 1.0, 81), rng.uniform(0.0, 1.0, 81)
    far = diffusion + sparse.csr_matrix(([0.1, 0.1], ([0, 2], [2, 0])), shape=diffusion.shape)  # offset ±2
    indefinite = SteadyBalance(diffusion, source, sink - 10.0)  # a non-positive pivot: no M-matrix
    for balance in (SteadyBalance(far, source, sink), indefinite):
        np.testing.assert_array_equal(balance.solve(), balance.solve_direct())
    assert five_bands(far) is None
    np.testing.assert_array_equal(SteadyBalance(diffusion, np.zeros(81), sink).solve(), np.zeros(81))
    with pytest.raises(ValueError, match="one length"):
        SteadyBalance(diffusion, source[:80], sink[:80])


def test_chemotaxis_moves_vessels_up_the_tumour_gradient(measured):
    """With uniform vessels m = 1 (a rest state of the island term), no vessel diffusion and no angiogenesis, only
    −χ∇·(m∇n) moves vessels: towards the tumour's peak, away from its flanks."""
    parameters = MicroenvironmentParameters(vessel_diffusion=0.0, angiogenesis=0.0)
    x = (np.arange(SHAPE[0]) - SHAPE[0] // 2) * SPACING_MM
    n = 0.9 * np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 0.5**2))
    zeros = np.zeros(SHAPE)
    start = MicroenvironmentState(n=n, m=np.ones(SHAPE), P=zeros, A=zeros, d=zeros, spacing_mm=SPACING_MM)
    m = simulate_microenvironment(start, Schedule(), 0.5, parameters, output_every_days=0.5).state(-1).m
    centre = m[SHAPE[0] // 2, SHAPE[1] // 2]
    measured("vessel density at the tumour's peak after half a day of chemotaxis", f"{centre:.4f}")
    assert centre > 1.0 + 1e-3 and m.min() < 1.0


def test_the_seed_is_the_virtual_patient():
    first, again, other = (initial_state(SHAPE, seed=seed, spacing_mm=SPACING_MM) for seed in (3, 3, 4))
    np.testing.assert_array_equal(first.m, again.m)
    assert np.corrcoef(first.m.ravel(), other.m.ravel())[0, 1] < 0.5
    np.testing.assert_array_equal(first.n, other.n)  # the tumour starts the same; its vessels differ
    schedule = Schedule((Dose(0.25, "chemotherapy", 1.0), Dose(0.25, "antiangiogenic", 1.0)))
    runs = [simulate_microenvironment(state, schedule, 0.5, output_every_days=0.25) for state in (first, again)]
    for name in ("n", "m", "P", "A", "d"):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name))
    np.testing.assert_allclose(runs[0].times, [0.0, 0.25, 0.5])
    assert runs[0].d[0].max() == 0 and runs[0].d[1].max() > 0


@pytest.mark.parametrize(
    "change, problem",
    [({"tumour_growth": -0.1}, "tumour_growth must be non-negative"),
     ({"drug_kill": float("nan")}, "drug_kill must be finite"),
     ({"vessel_beta": 1.4}, "must be 0"),
     ({"drug_reflection": 1.5}, "must not exceed 1"),
     ({"drug_plasma_time_constant_days": 0.0}, "must be positive")],
)
def test_impossible_parameters_are_refused(change, problem):
    with pytest.raises(ValueError, match=problem):
        MicroenvironmentParameters(**change)


@pytest.mark.parametrize(
    "days, every, step, problem",
    [(1.0, 0.3, 1 / 48, "whole number of output intervals"),
     (-1.0, 0.5, 1 / 48, "non-negative"),
     (1.0, 0.5, 0.5, "explicit diffusion limit")],
)
def test_impossible_runs_are_refused(days, every, step, problem):
    state = initial_state((5, 5), spacing_mm=0.01)
    with pytest.raises(ValueError, match=problem):
        simulate_microenvironment(state, Schedule(), days, output_every_days=every, max_time_step_days=step)


def test_a_state_refuses_fields_of_different_shapes():
    ones = np.ones((4, 4))
    with pytest.raises(ValueError, match="one shape"):
        MicroenvironmentState(ones, ones, ones, ones, np.ones((4, 5)))
