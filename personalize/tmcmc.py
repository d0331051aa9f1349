"""Transitional Markov chain Monte Carlo (TMCMC) of Ching & Chen (2007), as Pi4U and GliomaSolver run it.

J. Ching and Y.-C. Chen, "Transitional Markov chain Monte Carlo method for Bayesian model updating, model
class selection, and model averaging", J. Eng. Mech. 133(7), 816-832 (2007). The population moves from
the prior to the posterior through the tempered densities

    f_j(θ) ∝ p(θ) · L(θ)^{p_j},   0 = p_0 < p_1 < ... < p_m = 1,

each stage (i) choosing p_{j+1} so that the plausibility weights w_k = L(θ_k)^{p_{j+1} - p_j} have a
coefficient of variation ``target_cov``, (ii) adding log S_j = log mean_k w_k to the log-evidence
(log p(D) = Σ_j log S_j), (iii) resampling the population in proportion to w, and (iv) moving every
sample by Metropolis steps on f_{j+1} with the Gaussian proposal N(θ, β² Σ_j), Σ_j the w-weighted
sample covariance.

The textbook setting (β² = 0.04 fixed, one Metropolis step per chain) mixes badly beyond a few dimensions
(see ``/work/shared/notes/tmcmc.md``). The default here starts from the optimal random-walk scale
β² = 2.38²/P, adapts β between stages toward the acceptance rate 0.234, and spends ``chain_steps`` = 5
steps per chain; pass ``proposal_scale=0.04, adapt_scale=False, chain_steps=1`` for the textbook kernel.

Every likelihood evaluation goes through `personalize.executors.evaluate`, one batch per population
move; proposals outside the prior's support are rejected without evaluating the likelihood. After each
stage the state (population, log-likelihoods, exponent, evidence, proposal scale, counters and the
random generator's state) is written to ``checkpoint_dir/stage_XXX.pt``, so that ``resume=True``
continues a killed run to bit-for-bit the result of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from scipy.special import ndtri
from tqdm.auto import tqdm

from personalize.executors import evaluate
from personalize.posterior import Posterior

LogLikelihood = Callable[[torch.Tensor], torch.Tensor]
"""``log_likelihood(theta[N, P]) -> Tensor[N]``; picklable when a process pool evaluates it."""


class SamplingPrior(Protocol):
    """What TMCMC needs of a prior (`personalize.priors.Prior` has both): seeded sampling, and a log
    density that is −inf outside the support."""

    def sample_with(self, n: int, generator: torch.Generator) -> torch.Tensor: ...

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor: ...


class StageLimitReached(RuntimeError):
    """TMCMC stopped at its ``max_stages`` before the exponent reached 1; its last checkpoint resumes it."""


@dataclass(frozen=True)
class StageState:
    """The population after a stage: samples of f_j ∝ p(θ) L(θ)^{p_j}, equally weighted."""

    stage: int
    exponent: float
    theta: torch.Tensor
    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    lower: torch.Tensor
    """ℓ of the level below while bridging to this one (zeros otherwise)."""
    level: int
    bridge: float
    """0 while tempering; the exponent p_s at which the population is being bridged to ``level`` otherwise."""
    log_evidence: float
    scale: float
    acceptance: float
    n_simulations: int
    wall_s: float
    history: tuple[dict[str, float], ...] = ()
    """One :func:`stage_record` per stage so far, for the tempering diagnostics."""


def stage_record(state: StageState) -> dict[str, float]:
    """What the tempering diagnostics plot of one stage: exponent p_j, log-evidence so far, acceptance
    rate and proposal scale β² of its moves, cumulative likelihood evaluations and wall time, and the
    number of distinct samples left after resampling and moving."""
    return {
        "stage": float(state.stage),
        "level": float(state.level),
        "bridge": state.bridge,
        "exponent": state.exponent,
        "log_evidence": state.log_evidence,
        "acceptance": state.acceptance,
        "scale": state.scale,
        "n_simulations": float(state.n_simulations),
        "wall_s": state.wall_s,
        "unique": float(len(torch.unique(state.theta, dim=0))),
    }


PROGRESS_DECADES = 6.0
"""The progress bar spans the tempering exponent's last ``PROGRESS_DECADES`` decades, 10⁻⁶ to 1."""


def progress_fraction(exponent: float, bridge: float) -> float:
    """How far the run is, in [0, 1]: log10 of the exponent reached (p_j while tempering, p_s while
    bridging) over the last ``PROGRESS_DECADES`` decades. Tempering steps are roughly even in log p (each
    multiplies p by a similar factor), so the fraction grows about evenly per stage, unlike p itself,
    which stays near 0 for most of a run."""
    exponent = exponent if bridge == 0 else bridge
    if exponent <= 0:
        return 0.0
    return min(max(1.0 + math.log10(exponent) / PROGRESS_DECADES, 0.0), 1.0)


def coefficient_of_variation(log_weights: torch.Tensor) -> float:
    """std(w) / mean(w) of weights given by their logs, computed without overflow."""
    w = torch.exp(log_weights - log_weights.max())
    return float(w.std(unbiased=False) / w.mean())


def next_exponent(log_likelihood: torch.Tensor, exponent: float, target_cov: float) -> float:
    """p_{j+1} solving cov(L^{p_{j+1} - p_j}) = ``target_cov`` by bisection, or 1 if cov(L^{1 - p_j}) ≤ target.

    The coefficient of variation grows monotonically with the increment, so bisection on [0, 1 - p_j]
    finds the unique root (Pi4U solves the same equation with Nelder–Mead and a grid fallback).
    """
    if coefficient_of_variation((1.0 - exponent) * log_likelihood) <= target_cov:
        return 1.0
    low, high = 0.0, 1.0 - exponent
    for _ in range(100):
        middle = 0.5 * (low + high)
        if coefficient_of_variation(middle * log_likelihood) > target_cov:
            high = middle
        else:
            low = middle
        if high - low <= 1e-12 * high:
            break
    return exponent + 0.5 * (low + high)


def weighted_covariance_root(theta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A square root R (R Rᵀ = Σ) of the weighted sample covariance Σ = Σ_k w_k (θ_k − θ̄)(θ_k − θ̄)ᵀ.

    Eigenvalues are floored at 1e-12 of the largest, so that Σ is positive definite even when the
    population has collapsed along a direction.
    """
    centred = theta.double() - weights @ theta.double()
    covariance = (centred * weights[:, None]).T @ centred
    values, vectors = torch.linalg.eigh(0.5 * (covariance + covariance.T))
    values = values.clamp_min(1e-12 * values.max().clamp_min(1e-300))
    return vectors * values.sqrt()


def adapted_scale(scale: float, acceptance: float, target: float) -> float:
    """β² rescaled so a Gaussian random walk would accept at ``target``: β ∝ 1 / Φ⁻¹(acceptance / 2).

    For a random walk on a Gaussian target the acceptance is ≈ 2 Φ(−β √P / 2), so one update reaches the
    target acceptance up to the non-Gaussianity of f_j; the factor is clipped to [1/4, 4] per stage.
    """
    acceptance = min(max(acceptance, 1e-3), 0.999)
    factor = float(ndtri(target / 2) / ndtri(acceptance / 2))
    return scale * min(max(factor, 0.25), 4.0) ** 2


LevelLikelihood = Callable[[int, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor, int]]
"""``(level, theta, bridging) -> (ℓ_level, ℓ_{level−1} or zeros, simulations)`` at ``theta``."""


def target_parts(state: StageState, ll: torch.Tensor, lower: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(base, direction)`` with log f = log p(θ) + base + exponent·direction for the state's phase:
    tempering (0, ℓ); bridging at p_s (p_s·ℓ_lower, p_s·(ℓ − ℓ_lower)), the exponent then running 0 → 1."""
    if state.bridge == 0.0:
        return torch.zeros_like(ll), ll
    return state.bridge * lower, state.bridge * (ll - lower)


def metropolis_steps(
    state: StageState,
    level_likelihood: LevelLikelihood,
    prior: SamplingPrior,
    root: torch.Tensor,
    steps: int,
    generator: torch.Generator,
) -> tuple[StageState, float]:
    """``steps`` Metropolis moves of every sample on the state's target f (:func:`target_parts`), proposal
    θ + R z, z ~ N(0, I).

    Returns the moved state and the fraction of accepted proposals. Each move evaluates the likelihood
    of all in-support proposals as one batch; out-of-support ones are rejected.
    """
    theta, ll, lp, lower = state.theta, state.log_likelihood, state.log_prior, state.lower
    p, accepted, evaluated = state.exponent, 0, 0
    bridging = state.bridge > 0.0
    for _ in range(steps):
        z = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        proposal = (theta.double() + z @ root.T).to(theta.dtype)
        proposal_lp = prior.log_prob(proposal).double()
        inside = torch.isfinite(proposal_lp)
        proposal_ll = torch.full_like(ll, -math.inf)
        proposal_lower = torch.zeros_like(lower)
        proposal_ll[inside], proposal_lower[inside], count = level_likelihood(state.level, proposal[inside], bridging)
        base, direction = target_parts(state, ll, lower)
        proposal_base, proposal_direction = target_parts(state, proposal_ll, proposal_lower)
        log_ratio = (proposal_lp + proposal_base + p * proposal_direction) - (lp + base + p * direction)
        u = torch.rand(ll.shape, generator=generator, dtype=torch.float64)
        accept = inside & (torch.log(u) < log_ratio)
        theta = torch.where(accept[:, None], proposal, theta)
        ll, lp = torch.where(accept, proposal_ll, ll), torch.where(accept, proposal_lp, lp)
        lower = torch.where(accept, proposal_lower, lower)
        accepted += int(accept.sum())
        evaluated += count
    moved = replace(state, theta=theta, log_likelihood=ll, log_prior=lp, lower=lower,
                    n_simulations=state.n_simulations + evaluated)
    return moved, accepted / (steps * len(ll))


def start_bridge(state: StageState, level_likelihood: LevelLikelihood) -> StageState:
    """Level l tempered to p_s becomes the bridge to level l + 1 at q = 0: the same target
    p(θ) L_l(θ)^{p_s} written as p(θ) exp(p_s·(ℓ_l + q·(ℓ_{l+1} − ℓ_l))); no resampling, one evaluation of
    both levels per sample."""
    ll, lower, count = level_likelihood(state.level + 1, state.theta, True)
    return replace(state, level=state.level + 1, bridge=state.exponent, exponent=0.0, log_likelihood=ll,
                   lower=lower, n_simulations=state.n_simulations + count)


def end_bridge(state: StageState) -> StageState:
    """A finished bridge (q = 1) is level l + 1 tempered to p_s: continue tempering from there."""
    return replace(state, exponent=state.bridge, bridge=0.0, lower=torch.zeros_like(state.lower))


def advance(
    state: StageState,
    level_likelihood: LevelLikelihood,
    prior: SamplingPrior,
    *,
    target_cov: float,
    chain_steps: int,
    adapt_scale: bool,
    target_acceptance: float,
    generator: torch.Generator,
    stop_at: float = 1.0,
) -> StageState:
    """One TMCMC stage j → j+1: new exponent (at most ``stop_at``), evidence increment, resampling,
    Metropolis moves."""
    n = len(state.log_likelihood)
    _, direction = target_parts(state, state.log_likelihood, state.lower)
    exponent = min(next_exponent(direction, state.exponent, target_cov), stop_at)
    log_w = (exponent - state.exponent) * direction  # log plausibility weights
    log_s = float(torch.logsumexp(log_w, 0)) - math.log(n)  # log S_j = log mean_k w_k
    weights = torch.softmax(log_w, 0)
    root = math.sqrt(state.scale) * weighted_covariance_root(state.theta, weights)
    index = torch.multinomial(weights, n, replacement=True, generator=generator)
    resampled = replace(
        state,
        stage=state.stage + 1,
        exponent=exponent,
        theta=state.theta[index],
        log_likelihood=state.log_likelihood[index],
        log_prior=state.log_prior[index],
        lower=state.lower[index],
        log_evidence=state.log_evidence + log_s,
    )
    moved, acceptance = metropolis_steps(resampled, level_likelihood, prior, root, chain_steps, generator)
    scale = adapted_scale(state.scale, acceptance, target_acceptance) if adapt_scale else state.scale
    return replace(moved, scale=scale, acceptance=acceptance)  # history: the caller adds the stage's record


def save_checkpoint(directory: Path, state: StageState, generator: torch.Generator, config: dict) -> None:
    """Write ``stage_XXX.pt`` atomically (temporary file, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"stage_{state.stage:03d}.pt"
    temporary = path.with_suffix(".tmp")
    torch.save({"state": asdict(state), "generator": generator.get_state(), "config": config}, temporary)
    os.replace(temporary, path)


def load_latest_checkpoint(
    directory: Path, generator: torch.Generator, config: dict
) -> StageState | None:
    """The state of the latest ``stage_XXX.pt`` (restoring the generator), or None if there is none."""
    paths = sorted(directory.glob("stage_[0-9][0-9][0-9].pt"))
    if not paths:
        return None
    checkpoint = torch.load(paths[-1], weights_only=True)
    if checkpoint["config"] != config:
        raise ValueError(f"{paths[-1]} was written by another run: {checkpoint['config']} != {config}")
    generator.set_state(checkpoint["generator"])
    return StageState(**checkpoint["state"])


def tmcmc(
    log_likelihood: LogLikelihood,
    prior: SamplingPrior,
    *,
    n_samples: int,
    seed: int,
    parameter_names: Sequence[str],
    target_cov: float = 1.0,
    chain_steps: int = 5,
    proposal_scale: float | None = None,
    adapt_scale: bool = True,
    target_acceptance: float = 0.234,
    executor: Executor | None = None,
    chunk_size: int | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    max_stages: int = 100,
    units: dict[str, str] | None = None,
    coarse_log_likelihoods: Sequence[LogLikelihood] = (),
    switch_exponents: Sequence[float] | None = None,
) -> Posterior:
    """Posterior samples and log-evidence of ``prior`` × exp(``log_likelihood``) by TMCMC.

    Parameters
    ----------
    log_likelihood: batched ``theta[N, P] -> Tensor[N]``, evaluated through ``executor``.
    prior: ``sample_with(n, generator) -> Tensor[n, P]`` and ``log_prob(theta) -> Tensor[n]`` (−inf outside
        the support).
    n_samples: population size N; ``seed`` seeds the only random generator.
    target_cov: coefficient of variation of the plausibility weights that sets each tempering step.
    chain_steps: Metropolis steps per chain and stage.
    proposal_scale: β² of the first stage (default 2.38²/P); ``adapt_scale`` rescales it between stages
        toward ``target_acceptance``.
    executor, chunk_size: how each population batch is evaluated (see `personalize.executors.evaluate`).
    checkpoint_dir, resume: write a checkpoint per stage; continue from the latest one.
    max_stages: raise if the run has not finished after this many stages (the last checkpoint lets
        ``resume=True`` continue with a larger limit).
    coarse_log_likelihoods: cheaper approximations ℓ_0, …, ℓ_{L−1} of ``log_likelihood`` = ℓ_L (e.g. the
        same model on coarser grids), coarsest first. Multilevel sequential Monte Carlo (Latz, Papaioannou
        and Ullmann, "Multilevel Sequential² Monte Carlo for Bayesian inverse problems", J. Comput. Phys.
        368, 2018): level l is tempered up to the exponent p_s = ``switch_exponents[l]``, then the
        population is bridged to the next level through p(θ) exp(p_s·(ℓ_l + q·(ℓ_{l+1} − ℓ_l))), q from 0
        to 1 with the same adaptive steps, and tempering goes on from p_s on level l + 1. The result is the
        posterior of ``log_likelihood`` (and the evidence the product of every stage's mean weight), while
        the broad early stages, where most simulations are spent, run on the cheap levels. A small p_s
        bridges while the tempered targets still overlap (a few stages); bridging at p_s = 1 must cross
        from one sharp posterior to another. Bridging stages evaluate two levels per proposal.
    switch_exponents: one p_s in (0, 1] per coarse level, non-decreasing (default all 1).

    Returns equally weighted samples of the posterior (``log_weights`` zeros) with ``log_density`` =
    log prior + log-likelihood, the log-evidence Σ_j log S_j, the number of likelihood evaluations (all
    levels) and one :func:`stage_record` per stage in ``stages``.
    """
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    names = tuple(parameter_names)
    levels = (*coarse_log_likelihoods, log_likelihood)
    switches = tuple(float(p) for p in (switch_exponents or [1.0] * len(coarse_log_likelihoods)))
    if len(switches) != len(coarse_log_likelihoods) or any(not 0 < p <= 1 for p in switches) \
            or list(switches) != sorted(switches):
        raise ValueError(f"switch_exponents must hold one non-decreasing value in (0, 1] per coarse level, "
                         f"got {switches} for {len(coarse_log_likelihoods)} levels")
    switches += (1.0,)
    config = {"seed": seed, "n_samples": n_samples, "parameter_names": list(names), "switches": list(switches)}

    def level_likelihood(level: int, theta: torch.Tensor, bridging: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        zeros = theta.new_zeros(len(theta), dtype=torch.float64)
        if len(theta) == 0:
            return zeros, zeros, 0
        upper = evaluate(levels[level], theta, executor=executor, chunk_size=chunk_size).double()
        if not bridging:
            return upper, zeros, len(theta)
        lower = evaluate(levels[level - 1], theta, executor=executor, chunk_size=chunk_size).double()
        return upper, lower, 2 * len(theta)

    state = None
    if resume and checkpoint_dir is not None:
        state = load_latest_checkpoint(checkpoint_dir, generator, config)
    wall_before = 0.0 if state is None else state.wall_s  # time spent by the run this one resumes
    if state is None:
        theta = prior.sample_with(n_samples, generator)
        ll, lower, count = level_likelihood(0, theta, False)
        state = StageState(
            stage=0,
            exponent=0.0,
            theta=theta,
            log_likelihood=ll,
            log_prior=prior.log_prob(theta).double(),
            lower=lower,
            level=0,
            bridge=0.0,
            log_evidence=0.0,
            scale=2.38**2 / len(names) if proposal_scale is None else proposal_scale,
            acceptance=math.nan,
            n_simulations=count,
            wall_s=time.perf_counter() - started,
        )
        state = replace(state, history=(stage_record(state),))
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, state, generator, config)

    last = len(levels) - 1
    bar = tqdm(total=1.0, initial=progress_fraction(state.exponent, state.bridge), disable=not progress,
               desc="TMCMC", bar_format="{desc}: {percentage:3.0f}%|{bar}{postfix}")
    with bar:
        while state.level < last or state.bridge > 0 or state.exponent < 1.0:
            if state.stage >= max_stages:
                raise StageLimitReached(
                    f"TMCMC reached {max_stages} stages at level {state.level} of {last}, exponent "
                    f"{state.exponent:.3g}; resume with a larger max_stages or a larger target_cov"
                )
            previous = progress_fraction(state.exponent, state.bridge)
            if state.bridge > 0 and state.exponent >= 1.0:
                state = end_bridge(state)
            elif state.bridge == 0 and state.level < last and state.exponent >= switches[state.level]:
                state = start_bridge(state, level_likelihood)
            stop_at = 1.0 if state.bridge > 0 else switches[state.level]
            state = advance(
                state, level_likelihood, prior, target_cov=target_cov, chain_steps=chain_steps,
                adapt_scale=adapt_scale, target_acceptance=target_acceptance, generator=generator, stop_at=stop_at,
            )
            state = replace(state, wall_s=wall_before + time.perf_counter() - started)
            state = replace(state, history=(*state.history, stage_record(state)))
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir, state, generator, config)
            bar.update(progress_fraction(state.exponent, state.bridge) - previous)
            phase = f"bridge to {state.level}, q" if state.bridge > 0 else f"level {state.level}, p"
            bar.set_postfix_str(f"stage {state.stage}, {phase}={state.exponent:.3g}, acceptance {state.acceptance:.2f}")

    return Posterior(
        parameter_names=names,
        samples=state.theta.double().numpy(),
        log_weights=np.zeros(n_samples),
        log_evidence=state.log_evidence,
        n_simulations=state.n_simulations,
        wall_s=wall_before + time.perf_counter() - started,
        method="tmcmc",
        units=dict(units or {}),
        log_density=(state.log_prior + state.log_likelihood).numpy(),
        stages=state.history,
    )
